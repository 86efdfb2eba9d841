"""Figures of the paper from our results (PNG and PDF, plus the plotted data as CSV).

Figure 2 (§5.3): the proportion of the converged η's indices by age — the optimizer step at which each index
was last grown (0 = kept from the random initialisation) — for SpIEL-AG and SpIEL-MA at each size after Flan v2.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from safetensors import safe_open

from ..tuner.model import WEIGHTS_NAME


def index_ages(adapter: str | Path) -> pd.Series:
    """Proportion of a saved SpIEL adapter's indices per ``grown_at`` step, over all its tensors."""
    counts: dict[int, int] = {}
    with safe_open(str(Path(adapter) / WEIGHTS_NAME), framework="pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.endswith(".grown_at"):
                steps, n = tensors.get_tensor(key).unique(return_counts=True)
                for step, count in zip(steps.tolist(), n.tolist(), strict=True):
                    counts[step] = counts.get(step, 0) + count
    if not counts:
        raise ValueError(f"{adapter}: no SpIEL index ages (not a SpIEL adapter?)")
    series = pd.Series(counts).sort_index()
    return series / series.sum()


def figure2(adapters: dict[str, str | Path], out: str | Path) -> pd.DataFrame:
    """Plot each labelled adapter's age distribution; writes ``out`` (PNG), its PDF and CSV twins and returns
    the plotted data (rows: step; columns: label)."""
    data = pd.DataFrame({label: index_ages(path) for label, path in adapters.items()}).fillna(0.0).sort_index()
    data.index.name = "step"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label in data.columns:
        ax.plot(data.index, data[label], marker="o", markersize=3, label=label)
    ax.set_xlabel("step at which the index was last grown")
    ax.set_ylabel("proportion of indices")
    ax.set_title("Age of the converged indices after Flan v2 (Figure 2)")
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    data.to_csv(out.with_suffix(".csv"))
    return data
