"""How many sparse entries each targeted tensor gets (§3.2 footnote 2, App. D)."""

from __future__ import annotations

from .config import SpielConfig


def lora_parameters(shapes: dict[str, tuple[int, int]], rank: int) -> int:
    """LoRA's trainable parameter count at ``rank`` over the same modules: Σ r·(in + out).

    LLaMA-2 7b, all seven projections: 2,498,560 per rank, i.e. 159.9M (≈2.3 % of 6.7B) at r = 64.
    """
    return rank * sum(out_f + in_f for out_f, in_f in shapes.values())


def density_of(config: SpielConfig, shapes: dict[str, tuple[int, int]]) -> float:
    """The common density of every targeted tensor implied by the config's budget."""
    total = sum(out_f * in_f for out_f, in_f in shapes.values())
    if config.density is not None:
        density = config.density
    elif config.num_deltas is not None:
        density = config.num_deltas / total
    else:
        density = lora_parameters(shapes, config.lora_rank) / total
    if not 0.0 < density <= 1.0:
        raise ValueError(f"the SpIEL budget is {density:.4g} of the {total:,} targeted weights; it must be in (0, 1]")
    return density


def entries_per_tensor(config: SpielConfig, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """d_φ(i) = round(density · d_θ(i)); raises if any tensor would get no entry."""
    density = density_of(config, shapes)
    counts = {name: round(density * out_f * in_f) for name, (out_f, in_f) in shapes.items()}
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise ValueError(f"the SpIEL budget (density {density:.3g}) leaves {len(empty)} tensor(s) with no entry, "
                         f"e.g. {empty[0]} of shape {shapes[empty[0]]}; raise the budget")
    return counts
