"""Figures of the paper from our results (PNG and PDF, plus the plotted data as CSV).

Figure 2 (§5.3): the proportion of the converged η's indices by age — the optimizer step at which each index
was last grown (0 = kept from the random initialisation) — for SpIEL-AG and SpIEL-MA at each size after Flan v2.

Figure 4 (App. D): the hyperparameter search — MMLU dev score against learning rate, one line per rank, and
for SpIEL against λ (at the λ rank with the selected learning rate) — one panel per method and size.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator
from safetensors.torch import load_file

from ..adapters import adapter_type
from ..methods import method
from ..provenance import atomic_open
from ..tuner import storage
from ..tuner.model import WEIGHTS_NAME


def index_ages(adapter: str | Path) -> pd.Series:
    """Proportion of a saved SpIEL adapter's indices per ``grown_at`` step, over all its tensors."""
    adapter_type(adapter)  # whole files, or an error naming the file
    counts: dict[int, int] = {}
    tensors = load_file(str(Path(adapter) / WEIGHTS_NAME))
    for name in storage.modules(tensors):
        grown_at = storage.decode_ages(name, tensors)
        if grown_at is None:
            continue
        steps, n = grown_at.unique(return_counts=True)
        for step, count in zip(steps.tolist(), n.tolist(), strict=True):
            counts[step] = counts.get(step, 0) + count
    if not counts:
        raise ValueError(f"{adapter}: no SpIEL index ages (not a SpIEL adapter?)")
    series = pd.Series(counts).sort_index()
    return series / series.sum()


def figure2(adapters: dict[str, list[str | Path]], out: str | Path) -> pd.DataFrame:
    """Plot each label's age distribution as bars per step (the paper's Figure 2), a label's runs (seeds)
    averaged; writes ``out`` (PNG), its PDF and CSV twins and returns the data (rows: step; columns: label, and
    with several runs each run's own ``LABEL #i`` beside the mean)."""
    runs = {label: [index_ages(path) for path in paths] for label, paths in adapters.items()}
    columns = {}
    for label, series in runs.items():
        frame = pd.concat(series, axis=1).fillna(0.0)
        columns[label] = frame.mean(axis=1)
        if len(series) > 1:
            columns.update({f"{label} #{i + 1}": frame.iloc[:, i] for i in range(len(series))})
    data = pd.DataFrame(columns).fillna(0.0).sort_index()
    data.index = data.index.astype(int)
    data.index.name = "step"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = data.index.to_numpy()
    gap = float(min(b - a for a, b in itertools.pairwise(steps))) if len(steps) > 1 else 1.0
    width = 0.8 * gap / len(runs)
    for i, label in enumerate(runs):
        ax.bar(steps + (i - (len(runs) - 1) / 2) * width, data[label], width=width, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step at which the index was last grown (0: kept from initialisation)")
    ax.set_ylabel("proportion of indices")
    seeds = sorted({len(series) for series in runs.values()})
    ax.set_title("Age of the converged indices after Flan v2 (Figure 2)"
                 + ("" if seeds == [1] else f", mean of {'/'.join(map(str, seeds))} seeds"), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, data, Path(out), index=True)
    return data


def _save(fig: plt.Figure, data: pd.DataFrame, out: Path, index: bool) -> None:
    """``out`` (PNG, 150 dpi), its PDF and its CSV (the plotted data), each written atomically; closes ``fig``."""
    save_figure(fig, out)
    with atomic_open(out.with_suffix(".csv")) as stream:
        data.to_csv(stream, index=index)


def save_figure(fig: plt.Figure, out: Path) -> None:
    """``out`` (PNG, 150 dpi) and its PDF, each written atomically; closes ``fig``."""
    for path, kwargs in ((out, {"format": "png", "dpi": 150}), (out.with_suffix(".pdf"), {"format": "pdf"})):
        with atomic_open(path, "wb") as stream:
            fig.savefig(stream, **kwargs)
    plt.close(fig)


VERDICT_COLOURS = {"replicated": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:orange",
                   "not measured": "tab:gray"}


def plot_audit(claims: pd.DataFrame) -> plt.Figure:
    """The audit picture: one row per claim (its own unit), our effect with its 95 % interval coloured by verdict,
    the published effect as a black diamond, the claim's margin as a dotted line."""
    fig, axes = plt.subplots(len(claims), 1, figsize=(7.5, 0.62 * len(claims) + 0.8), squeeze=False)
    for ax, row in zip(axes[:, 0], claims.itertuples(index=False), strict=True):
        colour = VERDICT_COLOURS[row.verdict]
        if not pd.isna(row.effect):
            low = row.effect if pd.isna(row.ci_low) else row.ci_low
            high = row.effect if pd.isna(row.ci_high) else row.ci_high
            ax.errorbar([row.effect], [0], xerr=[[row.effect - low], [high - row.effect]], fmt="o", color=colour,
                        capsize=3, label="this run")
        if not pd.isna(row.published_effect):
            ax.plot([row.published_effect], [0], "D", color="black", markersize=4, label="paper")
        if pd.isna(row.effect) and pd.isna(row.published_effect):
            ax.text(0.5, 0.0, "no data on either side", transform=ax.get_yaxis_transform(), ha="center",
                    va="center", fontsize=7, color="gray")
            ax.set_xticks([])
        ax.axvline(row.margin, color="gray", linestyle=":", linewidth=1)
        ax.set_yticks([])
        ax.set_ylim(-1, 1)
        ax.tick_params(axis="x", labelsize=6, pad=1)
        ax.text(0.0, 1.02, f"{row.claim} ({row.unit}): {row.verdict}", transform=ax.transAxes, fontsize=7,
                color=colour, va="bottom")
    axes[0, 0].set_title("Claims: this run (95 % CI, colour = verdict) vs the paper (◆)", fontsize=9, pad=12)
    fig.tight_layout(h_pad=0.6)
    return fig


def search_points(selections: dict[tuple[str, str], str | Path]) -> pd.DataFrame:
    """Every scored grid point of the ``selected.json`` files (keyed by size and method) as one table."""
    import json

    rows = []
    for (size, name), path in selections.items():
        record = json.loads(Path(path).read_text())
        rows += [{"size": size, "method": name, **point} for point in record["points"]]
    columns = ["size", "method", "label", "stage", "lr", "rank", "weight_decay", "score", "stderr", "file"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _panels(data: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(size, method, x axis, points) per panel: a learning-rate panel per method, a λ panel per SpIEL method."""
    panels = []
    for size in dict.fromkeys(data["size"]):
        for name in dict.fromkeys(data["method"]):
            rows = data[(data["size"] == size) & (data["method"] == name)]
            if rows.empty:
                continue
            panels.append((size, name, "lr", rows[rows["stage"] == 1]))
            if rows["weight_decay"].notna().any() and (rows["stage"] == 2).any():
                stage2 = rows[rows["stage"] == 2]
                at = stage2.iloc[0]
                first = rows[(rows["stage"] == 1) & (rows["rank"] == at["rank"]) & (rows["lr"] == at["lr"])]
                panels.append((size, name, "weight_decay", pd.concat([first, stage2])))
    return panels


def _ticks(ax: plt.Axes, values: pd.Series) -> None:
    """Ticks at the grid's values only, written as the paper writes them (no crowded minor log labels)."""
    from matplotlib.ticker import NullFormatter, NullLocator

    from ..search import sci

    grid = sorted(set(values.astype(float)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(grid, [sci(v) for v in grid], fontsize=7)


def plot_search(data: pd.DataFrame) -> plt.Figure:
    """Figure 4's panels (rows: sizes) from ``search_points`` data."""
    panels = _panels(data)
    sizes = list(dict.fromkeys(data["size"]))
    columns = max(sum(1 for p in panels if p[0] == size) for size in sizes)
    fig, axes = plt.subplots(len(sizes), columns, figsize=(3.2 * columns, 2.8 * len(sizes)), squeeze=False)
    used = dict.fromkeys(sizes, 0)
    for size, name, axis, rows in panels:
        ax = axes[sizes.index(size)][used[size]]
        used[size] += 1
        ranked = rows["rank"].notna().any()
        if axis == "lr":
            for rank, group in rows.groupby("rank", sort=True) if ranked else [(None, rows)]:
                group = group.sort_values("lr")
                ax.errorbar(group["lr"], group["score"], yerr=group["stderr"].astype(float), marker="o",
                            label=None if rank is None else f"r = {int(rank)}")
            ax.set_xscale("log")
            _ticks(ax, rows["lr"])
            ax.set_xlabel("learning rate")
            if ranked:
                ax.legend(fontsize=7)
        else:
            rows = rows.sort_values("weight_decay")
            ax.errorbar(rows["weight_decay"], rows["score"], yerr=rows["stderr"].astype(float), marker="o")
            ax.set_xscale("symlog", linthresh=min(w for w in rows["weight_decay"] if w > 0))
            _ticks(ax, rows["weight_decay"])
            ax.set_xlabel(f"λ (r = {int(rows['rank'].iloc[0])}, lr = {rows['lr'].iloc[0]:g})")
        what = "λ" if axis != "lr" else ("lr × r" if ranked else "lr")
        ax.set_title(f"{method(name).label} {size}: {what}", fontsize=9)
        ax.set_ylabel("MMLU dev")
    for size in sizes:
        for extra in axes[sizes.index(size)][used[size]:]:
            extra.axis("off")
    fig.suptitle("Hyperparameter search on Flan v2 (Figure 4): MMLU dev ± standard error over items")
    fig.tight_layout()
    return fig


def figure4(selections: dict[tuple[str, str], str | Path], out: str | Path) -> pd.DataFrame:
    """Plot the search; writes ``out`` (PNG), its PDF and CSV (every point) twins and returns the points."""
    data = search_points(selections)
    _save(plot_search(data), data, Path(out), index=False)
    return data
