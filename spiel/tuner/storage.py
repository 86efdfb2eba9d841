"""The adapter file's compact layout: η as LEB128-coded gaps, ages as bit-packed codes into their few steps.

η is sorted and unique (``SparseDelta``), so it is stored as the gaps between consecutive flat positions (the first
gap is the first position), each in LEB128: 7 bits per byte, the high bit set on every byte but a number's last.
At density d the mean gap is 1/d (≈ 42 at LLaMA-2 7b's r = 64 budget, 2.4 %), so most gaps take one byte and the
index costs ≈ 1.05 bytes per entry instead of int32's 4. Ages (``grown_at``, the step at which each entry was last
grown, Figure 2) take only the few values of the update steps: each is a code into a table of those steps, packed
in ⌈log₂ steps⌉ bits (3 bits for up to 8 distinct steps, 6 for the paper's ~40 at 7b), where there are at
most 256 (else int32 as before). Deployment may leave them out (``ages=False``): serving needs φ and η only.
Files of the first layout (int32/int64 ``indices``, int32 ``grown_at``) still load.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FORMAT = "2"
"""``spiel_format`` in the file's metadata; files without it are the first layout."""
_MAX_CODES = 256


def encode_indices(indices: Tensor) -> Tensor:
    """LEB128 bytes (uint8) of the gaps of sorted, unique flat positions."""
    positions = indices.detach().cpu().numpy().astype(np.int64)
    gaps = np.diff(positions, prepend=0)
    if gaps.size and (gaps[0] < 0 or (gaps[1:] <= 0).any()):
        raise ValueError("indices must be unique and sorted ascending to be stored as gaps")
    lengths = np.ones(gaps.size, dtype=np.int64)
    for shift in range(7, 63, 7):
        lengths += gaps >= (1 << shift)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for k in range(int(lengths.max(initial=1))):
        more = lengths > k
        byte = (gaps[more] >> (7 * k)) & 0x7F
        out[starts[more] + k] = byte | np.where(lengths[more] > k + 1, 0x80, 0)
    return torch.from_numpy(out)


def decode_indices(data: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """The flat positions of :func:`encode_indices`' bytes; a truncated or miscounted stream is an error."""
    raw = data.cpu().numpy().astype(np.int64)
    if raw.size == 0:
        if count:
            raise ValueError(f"index stream is empty but {count} entries are stored")
        return torch.zeros(0, dtype=dtype)
    ends = (raw & 0x80) == 0
    if not ends[-1]:
        raise ValueError("index stream is truncated (its last byte continues a number)")
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    if starts.size != count:
        raise ValueError(f"index stream holds {starts.size} entries, {count} values are stored")
    within = np.arange(raw.size) - np.repeat(starts, np.diff(np.append(starts, raw.size)))
    if within.max() >= 9:  # 9 × 7 bits hold every int64 position
        raise ValueError("index stream holds a number of more than 9 bytes")
    gaps = np.add.reduceat((raw & 0x7F) << (7 * within), starts)
    return torch.from_numpy(np.cumsum(gaps)).to(dtype)


def encode(prefix: str, indices: Tensor, values: Tensor, grown_at: Tensor | None) -> dict[str, Tensor]:
    """One delta's tensors in the compact layout (ages as codes into their steps, or omitted when None)."""
    tensors = {f"{prefix}.values": values.detach().contiguous().cpu(), f"{prefix}.index_gaps": encode_indices(indices)}
    if grown_at is None:
        return tensors
    steps, codes = torch.unique(grown_at.detach().cpu(), return_inverse=True)
    if steps.numel() <= _MAX_CODES:
        bits = max(1, (steps.numel() - 1).bit_length())
        matrix = np.unpackbits(codes.numpy().astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
        tensors[f"{prefix}.age_codes"] = torch.from_numpy(np.packbits(matrix.reshape(-1)))
        tensors[f"{prefix}.age_steps"] = steps.to(torch.int32)
    else:
        tensors[f"{prefix}.grown_at"] = grown_at.detach().contiguous().cpu().to(torch.int32)
    return tensors


def decode(prefix: str, tensors: dict[str, Tensor], index_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """(indices, values, grown_at or None) of one delta in either layout."""
    values = tensors[f"{prefix}.values"]
    if f"{prefix}.indices" in tensors:  # the first layout
        indices = tensors[f"{prefix}.indices"]
        if indices.numel() != values.numel():
            raise ValueError(f"{indices.numel()} indices for {values.numel()} values")
    else:
        indices = decode_indices(tensors[f"{prefix}.index_gaps"], values.numel(), index_dtype)
    return indices, values, decode_ages(prefix, tensors)


def decode_ages(prefix: str, tensors: dict[str, Tensor]) -> Tensor | None:
    """One delta's ages (``grown_at``) in either layout, None where the file has none; η is not decoded."""
    count = tensors[f"{prefix}.values"].numel()
    if f"{prefix}.age_codes" in tensors:
        steps = tensors[f"{prefix}.age_steps"]
        bits = max(1, (steps.numel() - 1).bit_length())
        packed = np.unpackbits(tensors[f"{prefix}.age_codes"].numpy())
        if packed.size < count * bits:
            raise ValueError(f"age codes hold {packed.size // bits} entries, {count} values are stored")
        matrix = np.zeros((count, 8), dtype=np.uint8)
        matrix[:, 8 - bits:] = packed[:count * bits].reshape(count, bits)
        codes = torch.from_numpy(np.packbits(matrix, axis=1)[:, 0].astype(np.int64))
        if count and int(codes.max()) >= steps.numel():
            raise ValueError("age codes point past their table of steps")
        grown_at = steps[codes]
    else:
        grown_at = tensors.get(f"{prefix}.grown_at")
        if grown_at is not None and grown_at.numel() != count:
            raise ValueError(f"{grown_at.numel()} ages for {count} values")
    return grown_at


def modules(tensors: dict[str, Tensor]) -> list[str]:
    """The module names of a saved adapter's tensors (every delta stores ``<module>.values``)."""
    return sorted(key[: -len(".values")] for key in tensors if key.endswith(".values"))
