"""The compact adapter layout (issue 22): gap-coded η and age codes round-trip bit for bit; old files still load."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file, save_file

from spiel.tuner import SpielConfig, SpielModel, get_spiel_model
from spiel.tuner.model import WEIGHTS_NAME
from spiel.tuner.storage import decode_indices, encode_indices


def test_gap_code_round_trips_positions_of_every_size():
    positions = torch.tensor([0, 1, 127, 128, 255, 16_384, 16_385, 2**21 + 7, 2**31 - 1, 2**40], dtype=torch.int64)
    data = encode_indices(positions)
    # gaps 0, 1, 126, 1, 127 take a byte each; 16,129 two (< 2^14), 1 one, 2,080,774 three (< 2^21),
    # 2,145,386,488 five (< 2^35), 2^40 - 2^31 + 1 six (< 2^42)
    assert data.dtype == torch.uint8 and data.numel() == 5 + 2 + 1 + 3 + 5 + 6
    assert torch.equal(decode_indices(data, positions.numel(), torch.int64), positions)
    assert decode_indices(encode_indices(torch.zeros(0, dtype=torch.int64)), 0, torch.int32).numel() == 0


def test_gap_code_takes_about_a_byte_per_entry_at_the_papers_density():
    generator = torch.Generator().manual_seed(0)
    numel = 4096 * 11008  # a LLaMA-2 7b MLP weight
    positions = torch.randperm(numel, generator=generator)[: int(0.024 * numel)].sort().values
    data = encode_indices(positions)
    assert data.numel() / positions.numel() < 1.1  # int32 indices: 4 bytes
    assert torch.equal(decode_indices(data, positions.numel(), torch.int32), positions.to(torch.int32))


def test_broken_index_streams_are_errors():
    data = encode_indices(torch.tensor([5, 300, 100_000]))
    with pytest.raises(ValueError, match="truncated"):
        decode_indices(data[:-1], 3, torch.int32)
    with pytest.raises(ValueError, match="holds 3 entries, 4 values"):
        decode_indices(data, 4, torch.int32)
    with pytest.raises(ValueError, match="sorted ascending"):
        encode_indices(torch.tensor([3, 2]))


def _trained_adapter(seed: int = 0) -> SpielModel:
    model = get_spiel_model(tiny_llama(), SpielConfig(density=0.1, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    for step, delta in enumerate(model.deltas().values()):
        delta.values.data = torch.randn(len(delta), generator=generator)
        delta.grown_at.copy_(torch.randint(0, 3, (len(delta),), generator=generator) * 20 + step % 2)  # 6 ages
    return model


def _deltas(model: SpielModel) -> dict[str, tuple[torch.Tensor, ...]]:
    return {n: (d.indices, d.values.detach(), d.grown_at) for n, d in model.deltas().items()}


def test_saved_adapter_loads_bit_for_bit_and_smaller_than_the_first_layout(tmp_path):
    model = _trained_adapter()
    model.save_pretrained(tmp_path / "compact")
    loaded = SpielModel.from_pretrained(tiny_llama(), tmp_path / "compact")
    for name, parts in _deltas(model).items():
        again = _deltas(loaded)[name]
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(parts, again, strict=True)), name
    # the first layout, written as the code before this change wrote it, still loads to the same deltas
    old = {f"{n}.{f}": t.contiguous() for n, parts in _deltas(model).items()
           for f, t in zip(("indices", "values", "grown_at"), parts, strict=True)}
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / WEIGHTS_NAME), metadata={"format": "pt"})
    (tmp_path / "old" / "adapter_config.json").write_text((tmp_path / "compact" / "adapter_config.json").read_text())
    from_old = SpielModel.from_pretrained(tiny_llama(), tmp_path / "old")
    assert all(torch.equal(a, b) for n, parts in _deltas(model).items()
               for a, b in zip(parts, _deltas(from_old)[n], strict=True))
    compact = sum(t.numel() * t.element_size() for t in load_file(str(tmp_path / "compact" / WEIGHTS_NAME)).values())
    first = sum(t.numel() * t.element_size() for t in old.values())
    assert compact < 0.5 * first  # 4 + ~1 (η) + 3 bits (6 ages) per entry instead of 4 + 4 + 4


def test_an_adapter_saved_without_ages_serves_the_same_delta(tmp_path):
    model = _trained_adapter(seed=1)
    model.save_pretrained(tmp_path / "serve", ages=False)
    keys = load_file(str(tmp_path / "serve" / WEIGHTS_NAME)).keys()
    assert not any("age" in k or "grown_at" in k for k in keys)
    loaded = SpielModel.from_pretrained(tiny_llama(), tmp_path / "serve")
    for name, delta in model.deltas().items():
        again = loaded.deltas()[name]
        assert torch.equal(again.to_dense(), delta.to_dense()) and not again.grown_at.any()
    loaded.save_pretrained(tmp_path / "again")  # ages were not loaded: none are invented on saving
    assert not any("age" in k for k in load_file(str(tmp_path / "again" / WEIGHTS_NAME)))


@pytest.mark.parametrize("distinct", [1, 2, 5, 40, 256, 300])
def test_ages_round_trip_for_any_number_of_update_steps(distinct):
    from spiel.tuner.storage import decode, encode

    generator = torch.Generator().manual_seed(distinct)
    grown_at = (torch.randint(0, distinct, (1001,), generator=generator) * 20).to(torch.int32)
    indices, values = torch.arange(1001) * 3, torch.randn(1001, generator=generator)
    tensors = encode("m", indices, values, grown_at)
    assert ("m.age_codes" in tensors) == (distinct <= 256)
    if distinct <= 256:  # ⌈log₂ distinct⌉ bits per entry (at least one)
        assert tensors["m.age_codes"].numel() == -(-1001 * max(1, (distinct - 1).bit_length()) // 8)
    again = decode("m", tensors, torch.int32)
    assert torch.equal(again[0], indices.to(torch.int32)) and torch.equal(again[1], values)
    assert torch.equal(again[2], grown_at)
