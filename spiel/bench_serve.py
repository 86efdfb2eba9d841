"""Benchmark: serving many adapters — SpIEL beside peft's LoRA on one base model, measured in one run.

``python -m spiel.bench serve`` builds a random-initialised Llama (default: SmolLM2-135M's shape) and adapters of
the same trainable count (LoRA at rank r, SpIEL and peft's SHiRA at its equivalent budget), then measures

- **file size** per trainable parameter of ``adapter_model.safetensors`` (SpIEL with and without its ages);
- **switch latency**: SpIEL's unmerge + merge of the next adapter in place (bit-exact unmerge: the base entries at
  η are kept) vs peft LoRA's unmerge + ``set_adapter`` + merge, and LoRA's unmerged ``set_adapter``; also on a
  LLaMA-2-7b-shaped stack of layers (4096 × 11008, random weights);
- **mixed-batch throughput**: one forward pass whose rows use 1, 4 or 16 different adapters, nothing merged
  (``SpielModel.adapter_per_row`` vs peft's ``adapter_names=``), tokens per second, beside the base model alone;
- **LoRA export** (``spiel.export``): ΔW's relative error and the logits' relative error on held-out inputs at
  several ranks.

Its last lines are ``ratio`` lines (SpIEL / LoRA). Numbers are machine-dependent; quote medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SMOLLM2 = {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3, "vocab": 49152}
LLAMA2_7B = {"hidden": 4096, "intermediate": 11008, "heads": 32, "kv_heads": 32, "vocab": 32000}


def build(shape: dict, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=layers,
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"])
    return LlamaForCausalLM(config).eval()


def spiel_adapters(model, rank: int, count: int):
    """``model`` with ``count`` SpIEL adapters (a0, a1, …) at LoRA rank ``rank``'s budget, random η, φ and ages."""
    from .tuner import SpielConfig, get_spiel_model

    wrapped = get_spiel_model(model, SpielConfig(lora_rank=rank, seed=0), "a0")
    for i in range(1, count):
        wrapped.add_adapter(f"a{i}", SpielConfig(lora_rank=rank, seed=i))
    generator = torch.Generator().manual_seed(0)
    for layer in wrapped.spiel_layers().values():
        for delta in layer.spiel_deltas.values():
            delta.values.data = 1e-3 * torch.randn(len(delta), generator=generator)
            delta.values.requires_grad_(False)
            # ages as after the paper's 7b Flan v2 run (782 steps, S = 20): 40 distinct steps, 6 bits each on file
            delta.grown_at.copy_(torch.randint(0, 40, (len(delta),), generator=generator) * 20)
    return wrapped.eval()


def lora_adapters(model, rank: int, count: int):
    """``model`` with ``count`` peft LoRA adapters (a0, a1, …) at ``rank``, B random (as after training)."""
    from peft import LoraConfig, get_peft_model

    from .tuner.config import LLAMA_TARGETS

    def config():
        return LoraConfig(r=rank, lora_alpha=16, target_modules=list(LLAMA_TARGETS), task_type="CAUSAL_LM")

    wrapped = get_peft_model(model, config(), adapter_name="a0")
    for i in range(1, count):
        wrapped.add_adapter(f"a{i}", config())
    generator = torch.Generator().manual_seed(0)
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:
            param.data = 1e-3 * torch.randn(param.shape, generator=generator)
    return wrapped.eval()


def median_time(work, reps: int) -> float:
    samples = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:])  # the first run warms caches


def _weights_bytes(folder: Path) -> int:
    """The size of the adapter's weights file (peft writes a named adapter into a subfolder)."""
    return next(folder.rglob("adapter_model.safetensors")).stat().st_size


def file_sizes(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Bytes of ``adapter_model.safetensors`` per trainable parameter."""
    from peft import ShiraConfig, get_peft_model

    from .methods import trainable_parameters
    from .tuner.config import LLAMA_TARGETS

    sizes = {}
    spiel = spiel_adapters(build(SMOLLM2, args.layers), args.rank, 1)
    count = spiel.num_entries("a0")
    for label, ages in (("spiel", True), ("spiel-serving", False)):
        spiel.save_pretrained(folder / label, "a0", ages=ages)
        sizes[label] = _weights_bytes(folder / label) / count
    lora = lora_adapters(build(SMOLLM2, args.layers), args.rank, 1)
    lora.save_pretrained(str(folder / "lora"))
    sizes["lora"] = _weights_bytes(folder / "lora") / trainable_parameters(lora)
    shira = get_peft_model(build(SMOLLM2, args.layers), ShiraConfig(r=args.rank, random_seed=0,
                                                                    target_modules=list(LLAMA_TARGETS)))
    shira.save_pretrained(str(folder / "shira"))
    sizes["shira"] = _weights_bytes(folder / "shira") / trainable_parameters(shira)
    return sizes


def switch_times(shape: dict, layers: int, rank: int, reps: int) -> dict[str, float]:
    """Median seconds to switch the active adapter a0 ↔ a1 (merged: unmerge then merge the other)."""
    spiel = spiel_adapters(build(shape, layers), rank, 2)
    state = {"next": "a1"}

    def spiel_swap():
        spiel.unmerge_adapter()
        spiel.merge_adapter([state["next"]])
        state["next"] = "a0" if state["next"] == "a1" else "a1"

    spiel.merge_adapter(["a0"])
    times = {"spiel": median_time(spiel_swap, reps)}
    lora = lora_adapters(build(shape, layers), rank, 2)
    lora.set_adapter("a0")
    lora.merge_adapter()

    def lora_swap():
        lora.unmerge_adapter()
        lora.set_adapter(state["next"])
        lora.merge_adapter()
        state["next"] = "a0" if state["next"] == "a1" else "a1"

    times["lora"] = median_time(lora_swap, reps)
    lora.unmerge_adapter()

    def lora_unmerged():
        lora.set_adapter(state["next"])
        state["next"] = "a0" if state["next"] == "a1" else "a1"

    times["lora-unmerged"] = median_time(lora_unmerged, reps)
    return times


def mixed_throughput(args: argparse.Namespace) -> dict[tuple[str, int], float]:
    """Tokens per second of one forward pass whose ``batch`` rows use n different adapters (row i: adapter i mod n)."""
    most = max(args.adapters)
    ids = torch.randint(0, SMOLLM2["vocab"], (args.batch, args.seq_len), generator=torch.Generator().manual_seed(1))
    tokens = ids.numel()
    out = {}
    spiel = spiel_adapters(build(SMOLLM2, args.layers), args.rank, most)
    with torch.no_grad(), spiel.disable_adapter():
        out["base", 0] = tokens / median_time(lambda: spiel(input_ids=ids), args.reps)
    for n in args.adapters:
        names = [f"a{i % n}" for i in range(args.batch)]
        with spiel.adapter_per_row(names):
            out["spiel", n] = tokens / median_time(lambda: spiel(input_ids=ids), args.reps)
    lora = lora_adapters(build(SMOLLM2, args.layers), args.rank, most)
    for n in args.adapters:
        names = [f"a{i % n}" for i in range(args.batch)]
        with torch.no_grad():
            out["lora", n] = tokens / median_time(lambda names=names: lora(input_ids=ids, adapter_names=names),
                                                  args.reps)
    return out


def export_errors(args: argparse.Namespace, folder: Path) -> list[tuple[int, float, float]]:
    """(rank, mean relative error of ΔW, relative error of the logits on held-out inputs) of the LoRA export."""
    from peft import PeftModel

    from .export import export_lora

    spiel = spiel_adapters(build(SMOLLM2, args.layers), args.rank, 1)
    spiel.save_pretrained(folder / "export-source", "a0")
    ids = torch.randint(0, SMOLLM2["vocab"], (2, args.seq_len), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = spiel.unload()(input_ids=ids).logits
    with torch.no_grad():
        exact = spiel_adapters(build(SMOLLM2, args.layers), args.rank, 1)(input_ids=ids).logits
    rows = []
    for rank in args.export_ranks:
        errors = export_lora(folder / "export-source", folder / f"export-{rank}", rank)
        lora = PeftModel.from_pretrained(build(SMOLLM2, args.layers), str(folder / f"export-{rank}")).eval()
        with torch.no_grad():
            logits = lora(input_ids=ids).logits
        # the error relative to what the adapter changes (exact − base), not to the logits themselves
        rows.append((rank, sum(errors.values()) / len(errors),
                     float((logits - exact).norm() / (exact - base).norm())))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spiel.bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=SMOLLM2["layers"], help="layers of the 135M-shaped model")
    p.add_argument("--big-layers", type=int, default=2, help="layers of the LLaMA-2-7b-shaped stack (0: skip it)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r; SpIEL and SHiRA at the same count")
    p.add_argument("--big-rank", type=int, default=64, help="r on the 7b-shaped stack (the paper's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16], help="adapters per mixed batch")
    p.add_argument("--export-ranks", type=int, nargs="+", default=[8, 64, 192])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"model=llama(h={SMOLLM2['hidden']}, ffn={SMOLLM2['intermediate']}, L={args.layers}) rank={args.rank} "
          f"batch={args.batch}x{args.seq_len} threads={args.threads} (random weights)")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = file_sizes(args, Path(tmp))
        print("\nfile bytes per trainable parameter: " + ", ".join(f"{k} {v:.3f}" for k, v in sizes.items()))
        switch = {"135m": switch_times(SMOLLM2, args.layers, args.rank, args.reps)}
        if args.big_layers:
            switch["7b-stack"] = switch_times(LLAMA2_7B, args.big_layers, args.big_rank, args.reps)
        for where, times in switch.items():
            print(f"switch s ({where}): " + ", ".join(f"{k} {v:.4f}" for k, v in times.items()))
        throughput = mixed_throughput(args)
        print("mixed batch tokens/s: " + ", ".join(f"{k}@{n} {v:.0f}" for (k, n), v in throughput.items()))
        exports = export_errors(args, Path(tmp))
        for rank, weight_error, logit_error in exports:
            print(f"LoRA export r={rank}: ΔW relative error {weight_error:.3f}, logit change relative error "
                  f"{logit_error:.3f}")
    print()
    for label in ("spiel", "spiel-serving", "shira"):
        print(f"ratio {label}/lora file_bytes_per_param={sizes[label] / sizes['lora']:.3f}")
    for where, times in switch.items():
        print(f"ratio spiel/lora switch_s@{where}={times['spiel'] / times['lora']:.3f}")
    for n in args.adapters:
        print(f"ratio spiel/lora mixed_tokens_per_s@{n}={throughput['spiel', n] / throughput['lora', n]:.3f}")
