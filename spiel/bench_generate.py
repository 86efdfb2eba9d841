"""Benchmark: generation speed with a SpIEL adapter applied, unmerged, to an NF4 base (qSpIEL evaluation, App. B).

``python -m spiel.bench_generate`` builds a random Llama (SmolLM2-135M's shape by default), quantizes it to NF4
through bitsandbytes, adds a SpIEL adapter at a LoRA-rank-equivalent budget with non-zero values, and times greedy
generation two ways in this one run: the training path, which dequantizes every weight and merges the delta into
it for every token (forced here by running with gradients enabled and the values frozen), and the inference path
(``torch.no_grad``), which dequantizes and merges each layer once and keeps that weight while the adapter is
unchanged. It prints tokens/s of each (median over repetitions), their ratio, the largest difference between the
two paths' logits, and the memory the cached weights take.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(args: argparse.Namespace, folder: Path):
    """(NF4 model with an active SpIEL adapter, input ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .adapters import load_base
    from .models import tiny_tokenizer
    from .tuner import SpielConfig, get_spiel_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer(["a b c"], vocab_size=300).save_pretrained(folder)  # load_base reads one; ids are random
    model, _ = load_base(folder, torch.float32, load_in_4bit=True, device=args.device)
    spiel = get_spiel_model(model, SpielConfig(lora_rank=args.rank))
    with torch.no_grad():
        for delta in spiel.deltas().values():
            delta.values.normal_(0, 0.01)
            delta.values.requires_grad_(False)
    spiel.eval()
    ids = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    return spiel, ids.to(args.device)


def generate_seconds(model, ids: torch.Tensor, tokens: int, grad: bool) -> float:
    """Wall time of a greedy decode of ``tokens`` tokens with the KV cache (``generate`` itself would switch
    gradients off, and so the path, for both)."""
    with torch.set_grad_enabled(grad):
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        for _ in range(tokens - 1):
            step = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m spiel.bench_generate", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--tokens", type=int, default=16, help="generated tokens per repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model, ids = build(args, Path(folder))
        with torch.no_grad():
            fast = model(input_ids=ids).logits
        slow = model(input_ids=ids).logits.detach()
        paths = {"merge-per-token": True, "cached-merge": False}
        runs = {name: [generate_seconds(model, ids, args.tokens, grad) for _ in range(args.reps)]
                for name, grad in paths.items()}
        seconds = {name: statistics.median(times) for name, times in runs.items()}
        cached_mb = sum(layer._inference[1].numel() * layer._inference[1].element_size()
                        for layer in model.spiel_layers().values()) / 2**20
    print(f"device={args.device} model=llama(h={args.hidden}, ffn={args.intermediate}, L={args.layers}) NF4 "
          f"rank={args.rank} prompt={args.prompt} tokens={args.tokens} reps={args.reps} threads={args.threads}")
    for name, value in seconds.items():
        rates = [args.tokens / t for t in runs[name]]
        print(f"{name:20s} {args.tokens / value:8.2f} tokens/s (median; range {min(rates):.2f}–{max(rates):.2f})")
    print(f"max |logit difference| = {float((fast - slow).abs().max()):.2e}")
    print(f"cached weights: {cached_mb:.0f} MiB")
    print(f"ratio cached-merge/merge-per-token tokens_per_s={seconds['merge-per-token'] / seconds['cached-merge']:.3f}")


if __name__ == "__main__":
    main()
