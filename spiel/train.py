"""One training loop for every method (App. B): epochs, 3 % warmup then linear decay, gradient
accumulation to the effective batch size, optional activation checkpointing, periodic checkpoints with
exact resume after a kill, tqdm progress and a metrics JSONL.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import data, finished
from .adapters import load_base
from .identity import base_identity, differences, run_fingerprint, save_base_identity
from .methods import Trainable, check_hyperparameters, method, trainable_parameters, wrap
from .provenance import atomic_open, code_digest, device, git_commit, package_versions, write_json_atomic
from .settings import TrainConfig
from .signals import Stopped, stop_on_signals


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def lr_scheduler(run: Run) -> torch.optim.lr_scheduler.LambdaLR:
    """3 % warmup then linear decay over the run's steps (App. B)."""
    warmup = math.ceil(run.config.warmup_ratio * run.total)
    return torch.optim.lr_scheduler.LambdaLR(run.trainable.optimizer, lambda s: lr_factor(s, run.total, warmup))


def rng_state() -> dict[str, Any]:
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _save_checkpoint(path: Path, run: Run, fingerprint: dict[str, Any], step: int, scheduler,
                     rng: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as stream:
        torch.save({"step": step, "fingerprint": fingerprint, "trainable": run.trainable.state_dict(),
                    "scheduler": scheduler.state_dict(), **rng}, stream)


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run (damaged, foreign, or another run's); the message says what to do."""


def _load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, read on the CPU and mapped, if it was written by the run of ``fingerprint``."""
    fresh = f"delete it (rm {path}) to start afresh"
    try:
        state = torch.load(path, weights_only=False, map_location="cpu", mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as error:  # truncated, not torch's
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error)[:120]}); "
                              f"{fresh}") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this pipeline's training, or one written before run "
                              f"fingerprints (no fingerprint); {fresh}")
    found = differences(state["fingerprint"], fingerprint)
    if found:
        raise CheckpointError(f"{path} was written by another run (differs in {'; '.join(found[:3])}); resuming "
                              f"would mix two runs: {fresh}, or rerun with the settings it was written with")
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint being resumed (they will be recomputed)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


@dataclass
class Run:
    """A wrapped model ready to train, its data and the step arithmetic (App. B)."""

    trainable: Trainable
    tokenizer: Any
    examples: list[dict[str, list[int]]]
    config: TrainConfig
    accumulation: int
    steps_per_epoch: int
    total: int
    base: dict[str, Any]
    """The base model's identity (``identity.base_identity``), recorded with adapters and in the fingerprint."""

    @property
    def device(self) -> torch.device:
        return next(self.trainable.model.parameters()).device

    def micro_batches(self, step: int, cache: dict[int, list]) -> tuple[int, list[dict[str, torch.Tensor]]]:
        """(epoch, micro-batches on the model's device) of optimizer step ``step``; ``cache`` keeps one epoch."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = data.batches(self.examples, self.config.micro_batch_size, self.config.seed, epoch,
                                        self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        micro = cache[epoch][index * self.accumulation:(index + 1) * self.accumulation]
        return epoch, [{k: v.to(self.device) for k, v in batch.items()} for batch in micro]


def prepare(model_dir: Path, method_name: str, train_file: Path, config: TrainConfig,
            total: int | None = None) -> Run:
    """Load the base (on ``config.device``), tokenize the data, wrap the model for the method.
    ``total`` overrides the number of optimizer steps the schedules plan for (memory probes)."""
    config = replace(config, hp=check_hyperparameters(method_name, config.hp))  # typed, as recorded
    torch.manual_seed(config.seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    spec = method(method_name)
    model, tokenizer = load_base(model_dir, dtype, load_in_4bit=spec.quantized, device=config.device)
    base = base_identity(model)
    examples = data.load(train_file, tokenizer, config.max_length)
    if not examples:
        raise data.TrainDataError(f"{train_file}: no example with an assistant token to learn from")
    accumulation = config.batch_size // config.micro_batch_size
    micro_per_epoch = math.ceil(len(examples) / config.micro_batch_size)
    steps_per_epoch = max(1, micro_per_epoch // accumulation)
    total = total or steps_per_epoch * config.epochs
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = wrap(method_name, model, config.hp, total, seed=config.seed)
    return Run(trainable, tokenizer, examples, config, accumulation, steps_per_epoch, total, base)


def target_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over the batch's target tokens (labels ≠ IGNORE, shifted by one).

    The output layer is applied to the target positions only: the loss and its gradient equal those of the full
    ``model(...).logits``, but no batch × length × vocabulary tensor is built (with a 49k vocabulary and ~10 %
    target tokens that tensor and its softmax were the largest transients of a step, and the output layer ~20 %
    of the forward FLOPs). Works for any causal LM with ``get_decoder``/``get_output_embeddings`` whose logits
    are the output layer of the decoder's last hidden state (LLaMA, Mistral, SmolLM2, …).
    """
    ids = batch["input_ids"] if inputs_embeds is None else None  # embeddings given: the benchmark's floor
    hidden = model.get_decoder()(input_ids=ids, inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"])
    labels = batch["labels"][:, 1:]
    keep = labels != data.IGNORE
    logits = model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum")


def optimizer_step(trainable: Trainable, micro: list[dict[str, torch.Tensor]],
                   stop: list[int] | None = None) -> tuple[float, int]:
    """One optimizer step over the micro-batches (loss summed per token of the whole step, then the SpIEL
    drop-and-grow driver); returns (loss, target tokens). When ``stop`` fills up between two micro-batches the step
    is abandoned (its gradients dropped, nothing updated) and :class:`Stopped` raised."""
    loss_sum = 0.0
    tokens = sum(int((b["labels"] != data.IGNORE).sum()) for b in micro)
    for batch in micro:
        if stop:
            trainable.abandon_step()
            raise Stopped(f"signal {stop[0]}")
        loss = target_loss(trainable.model, batch) / max(1, tokens)
        loss.backward()
        loss_sum += float(loss.detach())
    trainable.step()
    return loss_sum, tokens


def train(model_dir: Path, method_name: str, train_file: Path, out: Path, config: TrainConfig,
          stop_after: int | None = None, work: Path | None = None) -> dict[str, Any]:
    """Train one cell; writes ``out/`` (adapter or model, ``metrics.jsonl``, ``train_summary.json``).

    ``work`` (default ``out``) holds ``checkpoint.pt`` and the running metrics, and a run resumes from it; a
    workflow keeps it outside ``out`` so that clearing an unfinished output does not lose the checkpoint, and there a
    finished run leaves its output's record (``spiel.finished``), restored by a rerun of the same run.
    ``stop_after`` ends early after that many steps (tests of resume)."""
    work = work or out
    run = prepare(model_dir, method_name, train_file, config)
    trainable, total = run.trainable, run.total
    scheduler = lr_scheduler(run)
    # what this run computes (the data file hashed once per training, not per memory probe); a checkpoint resumes
    # only its own run, a kept finished output is restored only to its own run by the same code and packages
    fingerprint = run_fingerprint(method_name, asdict(run.config), train_file, run.base)
    separate = work.resolve() != out.resolve()
    key = {"fingerprint": fingerprint, "code": code_digest(), "versions": package_versions()}
    if separate and finished.restore(work, out, key):
        print(f"{method_name}: restored the finished run kept in {work / finished.FOLDER} (the same fingerprint, "
              f"code and packages), not trained again; delete that folder to train again", file=sys.stderr)
        return json.loads((out / "train_summary.json").read_text())
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "checkpoint.pt"
    for stale in work.glob(".checkpoint.pt.*.tmp"):  # a write cut short by SIGKILL
        stale.unlink()
    step = 0
    if checkpoint.exists():  # each load_state_dict copies onto the model's devices
        state = _load_checkpoint(checkpoint, fingerprint)
        trainable.load_state_dict(state["trainable"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step = state["step"]
    _truncate_metrics(work / "metrics.jsonl", step)
    trainable.model.train()
    epoch_batches: dict[int, list] = {}
    print(f"{method_name}: {trainable_parameters(trainable.model):,} trainable parameters", file=sys.stderr)
    progress = tqdm(total=total, initial=step, desc=f"train {method_name}", mininterval=5)
    with (work / "metrics.jsonl").open("a") as metrics, stop_on_signals() as stop:
        while step < total and (stop_after is None or step < stop_after):
            epoch, micro = run.micro_batches(step, epoch_batches)
            start, rng = time.perf_counter(), rng_state()
            try:
                loss_sum, tokens = optimizer_step(trainable, micro, stop)
            except Stopped as stopped:  # resume from the last completed step, with its random state
                _save_checkpoint(checkpoint, run, fingerprint, step, scheduler, rng)
                progress.close()
                raise Stopped(f"stopped by {stopped} after step {step} of {total}; checkpoint {checkpoint}") from None
            scheduler.step()
            step += 1
            metrics.write(json.dumps({"step": step, "epoch": epoch, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                                      "tokens": tokens, "seconds": time.perf_counter() - start}) + "\n")
            metrics.flush()
            progress.update()
            if step < total and (stop or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                _save_checkpoint(checkpoint, run, fingerprint, step, scheduler, rng_state())
            if stop and step < total:
                progress.close()
                raise Stopped(f"stopped by signal {stop[0]} after step {step} of {total}; checkpoint {checkpoint}")
    progress.close()
    if step < total:
        _save_checkpoint(checkpoint, run, fingerprint, step, scheduler, rng_state())
        return {"step": step, "total": total, "finished": False}
    with stop_on_signals():  # a stop now (SLURM's time limit) waits for the output and its record: the job succeeds
        return _finish(run, method_name, model_dir, train_file, out, work if separate else None, key)


def _finish(run: Run, method_name: str, model_dir: Path, train_file: Path, out: Path, work: Path | None,
            key: dict[str, Any]) -> dict[str, Any]:
    """Write a finished run's output to ``out``; with a separate ``work`` folder, its record (``spiel.finished``)
    replaces the checkpoint there, else the checkpoint in ``out`` is removed."""
    spec = method(method_name)
    out.mkdir(parents=True, exist_ok=True)
    run.trainable.model.save_pretrained(out)
    if spec.kind != "full":
        save_base_identity(run.base, out)
    if work is not None:
        shutil.copyfile(work / "metrics.jsonl", out / "metrics.jsonl")
    if spec.kind == "full":
        run.tokenizer.save_pretrained(out)
    summary = {"method": method_name, "steps": run.total, "examples": len(run.examples), "config": asdict(run.config),
               "trainable_parameters": trainable_parameters(run.trainable.model),
               "model": str(model_dir), "data": str(train_file), "finished": True, "device": device(),
               "versions": package_versions(), "git_commit": git_commit()}
    write_json_atomic(summary, out / "train_summary.json")
    if work is None:
        (out / "checkpoint.pt").unlink(missing_ok=True)
    elif not finished.keep(out, work, key):  # a retry of a job reported failed after this restores the output
        print(f"{method_name}: could not keep a record of the finished run in {work} (its checkpoint stays)",
              file=sys.stderr)
    return summary
