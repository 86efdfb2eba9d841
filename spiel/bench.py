"""Benchmark: step time and peak memory of full FT, LoRA, SpIEL-AG/MA, SHiRA, Super-Tuning and the floor; ∂L/∂φ.

``python -m spiel.bench`` trains a small random-initialised Llama with the code users train with
(``spiel.methods.wrap``, ``spiel.train.target_loss``), every method at the same LoRA-rank-equivalent budget
(peft's static sparse SHiRA and Super-Tuning too, beyond the paper) and each in its own process, then times the
two ways of computing ∂L/∂φ (Eq. 6 vs App. E). The ``floor`` row is the frozen model's forward and its backward
to the inputs with no parameter gradient: the least any fine-tuning method costs per step. It prints a table
and ends with ratio lines (to LoRA and to the floor) measured in this one run. Numbers are machine-dependent;
quote medians and ratios. ``python -m spiel.bench serve`` is the serving benchmark (``spiel.bench_serve``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from . import fresh
from .memory import peak_memory_mb, resident_peak_kb, synchronize

METHODS = ("floor", "full", "lora", "spiel-ag", "spiel-ma", "shira", "supertuning")
SPARSE = ("spiel-ag", "spiel-ma", "shira", "supertuning")
"""The sparse methods, each with ratio lines to LoRA and to the floor."""
LEARNING_RATES = {"full": 2e-5, "lora": 1e-4, "spiel-ag": 1e-4, "spiel-ma": 1e-3, "shira": 1e-4, "supertuning": 1e-4}


def build_model(args: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq_len)
    return LlamaForCausalLM(config).to(args.device, dtype=getattr(torch, args.dtype))


def hyperparameters(method: str, args: argparse.Namespace) -> dict:
    """What ``spiel.methods.wrap`` gets for ``method``: a learning rate, and the run's budget and ∂L/∂φ mode."""
    hp = {"lr": LEARNING_RATES[method]}
    if method != "full":
        hp["rank"] = args.rank
    if method.startswith("spiel"):
        hp["grad_mode"] = args.grad_mode
    return hp


def floor_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of the frozen model with the input embeddings as the only leaf that needs a gradient."""
    from .train import target_loss

    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    return target_loss(model, batch, embeddings)


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps; per-step wall time and the time spent in drop-and-grow."""
    from .methods import trainable_parameters, wrap
    from .train import target_loss

    torch.set_num_threads(args.threads)
    model = build_model(args)
    if method == "floor":
        model.requires_grad_(False)
        trainable, loss_of = None, floor_loss
    else:
        trainable = wrap(method, model, hyperparameters(method, args), total_steps=args.steps)
        model, loss_of = trainable.model, target_loss
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g).to(args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    selector = trainable.reselector if trainable is not None else None
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline_kb = resident_peak_kb()
    step_times, select_times = [], []
    phase_steps = set()
    for step in range(args.steps):
        start = time.perf_counter()
        loss = loss_of(model, batch) / ids.numel()
        loss.backward()
        if trainable is not None:
            trainable.update()
        in_phase = selector is not None and bool(selector.estimators)
        selected = time.perf_counter()
        if selector is not None:
            selector.step()
        synchronize(args.device)
        end = time.perf_counter()
        step_times.append(end - start)
        select_times.append(end - selected)
        if in_phase:
            phase_steps.add(step)
    plain = [t for i, t in enumerate(step_times) if i not in phase_steps and i >= args.warmup]
    median = statistics.median(plain or step_times[args.warmup:])
    phase_extra = sum(step_times[i] - median for i in phase_steps)
    return {
        "method": method,
        "median_step_s": median,
        "peak_mem_mb": peak_memory_mb(args.device, baseline_kb),
        "select_s": sum(select_times),
        "phase_extra_s": max(phase_extra, 0.0),
        "total_s": sum(step_times),
        "final_loss": loss.item(),
        "trainable": 0 if trainable is None else trainable_parameters(model),
    }


def time_grad_phi(args: argparse.Namespace) -> list[dict]:
    """Median time of ∂L/∂φ for one MLP-shaped layer: dense gather (Eq. 6) vs sampled (Eq. 16)."""
    from spiel.tuner.delta import WeightGrad, uniform_subset

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tokens = args.batch * args.seq_len
    shape = (args.intermediate, args.hidden)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, shape[1], generator=g).to(args.device, dtype)
    gy = torch.randn(tokens, shape[0], generator=g).to(args.device, dtype)
    rows = []
    for density in (0.003, 0.01, 0.023):
        count = int(density * shape[0] * shape[1])
        idx = uniform_subset(shape[0] * shape[1], count, g).to(args.device)
        timings = {}
        for mode in ("dense", "sampled"):
            samples = []
            for _ in range(args.reps):
                synchronize(args.device)
                start = time.perf_counter()
                WeightGrad(x, gy, shape).at(idx, sampled=mode == "sampled")
                synchronize(args.device)
                samples.append(time.perf_counter() - start)
            timings[mode] = statistics.median(samples[1:])
        rows.append({"density": density, "dense_ms": timings["dense"] * 1e3, "sampled_ms": timings["sampled"] * 1e3})
    return rows


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero (e.g. a peak-RSS growth below the page granularity)."""
    return a / b if b else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spiel.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rank", type=int, default=8,
                   help="LoRA rank; SpIEL gets the equivalent budget (8 ≈ 2.4 %% density here, like r = 64 on 7b)")
    p.add_argument("--steps", type=int, default=45, help="steps per method (S = 20, γ = 5: updates at 5, 25, 45)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=11, help="repetitions of each ∂L/∂φ timing")
    p.add_argument("--grad-mode", choices=("dense", "sampled"), default="dense", help="SpIEL's ∂L/∂φ in training")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # `python -m spiel.bench serve`: the serving benchmark (spiel.bench_serve)
        from .bench_serve import main as serve

        return serve(argv[1:])
    args = parse_args(argv)
    results = {}
    for method in METHODS:  # each in a fresh process (spiel.fresh): its peak memory is its own
        proc = fresh.run("bench-method", {**vars(args), "method": method}, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"benchmark of {method} failed:\n{proc.stderr[-2000:]}")
        results[method] = fresh.result(proc)
    mem_label = "peak GPU alloc MiB" if args.device.startswith("cuda") else "peak RSS growth MiB"
    print(f"device={args.device} dtype={args.dtype} model=llama(h={args.hidden}, ffn={args.intermediate}, "
          f"L={args.layers}, V={args.vocab}) batch={args.batch}x{args.seq_len} rank={args.rank} "
          f"grad_mode={args.grad_mode} steps={args.steps} threads={args.threads}")
    print(f"{'method':12s} {'median step s':>14s} {mem_label:>20s} {'drop/grow %':>12s} {'trainable':>12s}")
    for method, r in results.items():
        bookkeeping = 100 * (r["select_s"] + r["phase_extra_s"]) / r["total_s"]
        print(f"{method:12s} {r['median_step_s']:14.4f} {r['peak_mem_mb']:20.1f} {bookkeeping:12.2f} "
              f"{r['trainable']:12,d}")
    print(f"\n{'density':>8s} {'dense ms':>10s} {'sampled ms':>11s} {'sampled/dense':>14s}")
    grads = time_grad_phi(args)
    for row in grads:
        print(f"{row['density']:8.3%} {row['dense_ms']:10.3f} {row['sampled_ms']:11.3f} "
              f"{row['sampled_ms'] / row['dense_ms']:14.3f}")
    print()
    for method in SPARSE:
        for base in ("lora", "floor"):
            r, b = results[method], results[base]
            print(f"ratio {method}/{base} step_time={_ratio(r['median_step_s'], b['median_step_s']):.3f} "
                  f"peak_mem={_ratio(r['peak_mem_mb'], b['peak_mem_mb']):.3f}")
    for method in ("full", "lora"):
        r, b = results[method], results["floor"]
        print(f"ratio {method}/floor step_time={_ratio(r['median_step_s'], b['median_step_s']):.3f}")
    at_1 = next(row for row in grads if row["density"] == 0.01)
    print(f"ratio sampled/dense grad_phi@1%={at_1['sampled_ms'] / at_1['dense_ms']:.3f}")


if __name__ == "__main__":
    main()
