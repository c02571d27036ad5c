"""The training loop: setup (corpora, tokenizer, model, optimizer, resume) and the steps.

Owns ``train(config) -> TrainResult``. Everything that can be refused is
checked before any work: the output folder must be writable, both corpora must
be complete, a resumed run must match its checkpoint's settings. Each optimizer
step runs the micro-steps of mmbm.training.mixing (all three tasks), clips the
gradient norm, sets the LR from the warmup+cosine schedule and steps AdamW;
then rank 0 logs, validates every ``eval_every`` steps (and at the end), keeps
the best model in ``out`` (config.json, model.safetensors, tokenizer.json) and
writes a resume checkpoint every ``checkpoint_every`` steps. The run stops at
``max_steps``, at the ``max_minutes`` budget, or when the early-stopping metric
has not improved for ``patience`` validations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mmbm.device import autocast
from mmbm.errors import CheckpointError, ConfigError
from mmbm.model.checkpoint import save_checkpoint
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.tokenizer import Tokenizer
from mmbm.training import state as checkpoints
from mmbm.training.data import (
    BatchStream,
    Corpora,
    Datasets,
    EpochBatchSampler,
    build_datasets,
    build_tokenizer,
    check_sources,
    load_corpora,
)
from mmbm.training.distributed import Distributed, setup_distributed, teardown
from mmbm.training.logs import RunLog
from mmbm.training.mixing import MicroStep, plan_micro_steps
from mmbm.training.objective import MultiTaskModule, parameter_groups
from mmbm.training.schedule import Schedule
from mmbm.training.state import TrainingState
from mmbm.training.train_config import TrainConfig
from mmbm.training.validation import ValidationResult, validate

logger = logging.getLogger(__name__)

CALIBRATION_STEPS = 10  # with only --max-minutes, steps timed before the schedule's length is fixed
BUDGET_SAFETY = 0.9  # share of the remaining minutes planned for steps (validation and saving need the rest)
UNPLANNED_STEPS = 10**9  # schedule length before calibration: the LR is then warmup or ~peak
StopReason = Literal["max_steps", "time_budget", "early_stopping"]


@dataclass(frozen=True)
class TrainResult:
    """What a finished run did."""

    steps: int
    planned_steps: int | None  # the schedule's length (given, or estimated from --max-minutes)
    stop_reason: StopReason
    best_step: int | None
    best_metric: float | None
    last_losses: dict[str, float]
    seconds: float
    out: Path


@dataclass
class Run:
    """Everything the loop needs, built once by ``_setup``."""

    config: TrainConfig
    dist: Distributed
    model: MMBM
    module: torch.nn.Module  # MultiTaskModule, maybe DDP-wrapped and compiled
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    datasets: Datasets
    streams: dict[str, BatchStream[Any]]
    plan: tuple[MicroStep, ...]
    state: TrainingState
    log: RunLog | None
    autocast: Callable[[], AbstractContextManager[object]]
    checkpoint_dir: Path


def build_model(config: TrainConfig, tokenizer: Tokenizer) -> MMBM:
    """The preset's model sized to the tokenizer, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return MMBM(config_for_tokenizer(config.model, tokenizer))


def check_output(config: TrainConfig) -> Path:
    """Create ``out`` and the checkpoint folder, or raise CheckpointError before any work."""
    out = Path(config.out)
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else out / "checkpoints"
    for folder in (out, checkpoint_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{id(config)}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"cannot write to output folder {str(folder)!r}: {e.strerror or e}") from e
    if not config.resume and checkpoints.list_checkpoints(checkpoint_dir):
        raise CheckpointError(f"{str(checkpoint_dir)!r} holds checkpoints of an earlier run; pass --resume to "
                              "continue it, or choose another --out/--checkpoint-dir")
    return checkpoint_dir


def _make_autocast(config: TrainConfig, device: torch.device) -> Callable[[], AbstractContextManager[object]]:
    if config.precision == "fp32":
        return nullcontext
    return lambda: autocast(device, cpu_bf16=config.precision == "bf16")  # "auto": bf16 on CUDA only


def _streams(config: TrainConfig, datasets: Datasets, state: TrainingState, dist: Distributed) -> dict[str, Any]:
    sizes = {"image_text": config.batch_size, "speech": config.speech_batch_size}
    sets = {"image_text": datasets.train_image_text, "speech": datasets.train_speech}
    streams = {}
    for name, dataset in sets.items():
        sampler = EpochBatchSampler(len(dataset), sizes[name], seed=config.seed, stream=name,
                                    start=state.positions[name], rank=dist.rank, world_size=dist.world_size)
        streams[name] = BatchStream(dataset, sampler, config.num_workers, config.seed)
    return streams


def _wrap(model: MMBM, config: TrainConfig, dist: Distributed) -> tuple[torch.nn.Module, Any]:
    module: torch.nn.Module = MultiTaskModule(model, config.label_smoothing, dist)
    ddp = None
    if dist.enabled:
        # round_robin, or a task with weight 0, leaves parts of the model out of a micro-step
        # (speech does not touch the image stem)
        partial = config.mixing == "round_robin" or min(config.task_weights.values()) == 0
        ddp = DistributedDataParallel(module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                                      find_unused_parameters=partial)
        module = ddp
    if config.compile:
        module = torch.compile(module, dynamic=True)
    return module, ddp


def _restore_rng(config: TrainConfig, dist: Distributed, resumed: checkpoints.Checkpoint | None) -> None:
    if resumed is not None and len(resumed.rng_states) == dist.world_size:
        checkpoints.set_rng_state(resumed.rng_states[dist.rank])
        return
    if resumed is not None:
        logger.warning("checkpoint holds RNG states of %d processes, this run has %d: reseeding",
                       len(resumed.rng_states), dist.world_size)
    torch.manual_seed(config.seed + 1 + dist.rank)  # dropout masks differ per process


def _load_resume(config: TrainConfig, checkpoint_dir: Path, device: torch.device) -> checkpoints.Checkpoint | None:
    if not config.resume:
        return None
    resumed = checkpoints.load_latest(checkpoint_dir, device)
    if resumed is None:
        logger.info("--resume: no checkpoint in %s, starting a fresh run", checkpoint_dir)
        return None
    mismatches = config.resume_mismatches(resumed.config)
    if mismatches:
        raise ConfigError(f"--resume: these settings differ from the checkpoint in {str(resumed.path)!r}: "
                          f"{', '.join(mismatches)}; use the same settings or start a new --out")
    logger.info("resuming from %s (step %d)", resumed.path, resumed.state.step)
    return resumed


def _setup(config: TrainConfig, dist: Distributed) -> Run:
    check_sources(config.images, config.speech, config.images_val, config.speech_val)  # cheap refusals first
    checkpoint_dir = check_output(config)
    corpora: Corpora = load_corpora(config.images, config.speech, config.images_val, config.speech_val)
    resumed = _load_resume(config, checkpoint_dir, dist.device)
    tokenizer = resumed.tokenizer if resumed else build_tokenizer(corpora, config.model.vocab_size)
    model = build_model(config, tokenizer)
    if resumed:
        model.load_state_dict(resumed.model.state_dict())
    model.to(dist.device).train()
    state = resumed.state if resumed else TrainingState(planned_steps=config.max_steps)
    datasets = build_datasets(corpora, tokenizer, model.config, seed=config.seed, augment=config.augment,
                              cache=config.cache, n_val_images=config.n_val_images, n_val_clips=config.n_val_clips,
                              caption_targets=config.caption_target == "canonical")
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=dist.device.type == "cuda" or None)
    if resumed:
        optimizer.load_state_dict(resumed.optimizer)
    module, ddp = _wrap(model, config, dist)
    _restore_rng(config, dist, resumed)
    log = RunLog(config.out, state.step if resumed else None) if dist.is_main else None
    if log is not None and not resumed:
        n_parameters = sum(p.numel() for p in model.parameters())
        log.log_config(config.to_dict(), config.task_weights, {
            "model": model.config.to_dict(), "n_parameters": n_parameters, "world_size": dist.world_size,
            "n_train_images": len(corpora.train_images), "n_train_clips": len(corpora.train_speech)})
    return Run(config, dist, model, module, ddp, optimizer, tokenizer, datasets,
               _streams(config, datasets, state, dist), plan_micro_steps(config.mixing, config.grad_accum,
                                                                         config.task_weights),
               state, log, _make_autocast(config, dist.device), checkpoint_dir)


def _micro_step(run: Run, micro: MicroStep, sync: bool) -> dict[str, float]:
    image_text = run.streams["image_text"].next().to(run.dist.device) if micro.needs_image_text else None
    speech = run.streams["speech"].next().to(run.dist.device) if micro.needs_speech else None
    no_sync = run.ddp.no_sync() if run.ddp is not None and not sync else nullcontext()
    with no_sync:
        with run.autocast():
            losses = run.module(micro.tasks, image_text, speech)
        total = sum(micro.scales[task] * loss for task, loss in losses.items())
        total.backward()
    return {task: float(loss.detach()) for task, loss in losses.items()}


def _optimizer_step(run: Run, schedule: Schedule) -> dict[str, float]:
    """One optimizer step over the plan's micro-steps; returns the step's losses averaged over processes."""
    run.optimizer.zero_grad(set_to_none=True)
    sums = dict.fromkeys(("caption", "retrieval", "speech"), 0.0)
    counts = dict.fromkeys(sums, 0)
    for i, micro in enumerate(run.plan):
        for task, value in _micro_step(run, micro, sync=i == len(run.plan) - 1).items():
            sums[task] += value
            counts[task] += 1
    max_norm = run.config.grad_clip if run.config.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    lr = schedule.lr_at(run.state.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    # a task with weight 0 is not trained (mixing leaves it out): its loss is logged as NaN
    means = run.dist.mean(torch.tensor([sums[t] / counts[t] if counts[t] else math.nan for t in sums],
                                       dtype=torch.float64)).tolist()
    caption, retrieval, speech = means
    weights = run.config.task_weights
    loss = sum(weights[t] * value for t, value in zip(sums, means, strict=True) if counts[t])
    return {"loss": loss, "caption_loss": caption, "contrastive_loss": retrieval, "ctc_loss": speech,
            "lr": lr, "grad_norm": grad_norm, "logit_scale": float(run.model.retrieval.scale().detach())}


def _evaluate(run: Run) -> bool:
    """Validate on rank 0, keep the best model in ``out``; True (on every rank) when early stopping says stop."""
    state, stop = run.state, 0.0
    if run.dist.is_main:
        result: ValidationResult = validate(run.model, run.datasets.val_image_text, run.datasets.val_speech,
                                            run.tokenizer, batch_size=run.config.batch_size, device=run.dist.device,
                                            autocast=run.autocast)
        score = result.score(run.config.early_stop_metric)
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_step, state.bad_evals = score, state.step, 0
            save_checkpoint(run.model, run.config.out, run.tokenizer)
        else:
            state.bad_evals += 1
        assert run.log is not None
        run.log.log_eval(state.step, {**result.to_dict(), "score": score, "best_score": state.best_metric})
        logger.info("step %d validation: %s", state.step, {k: round(v, 4) for k, v in result.to_dict().items()})
        stop = float(state.bad_evals >= run.config.patience)
    return bool(run.dist.broadcast(torch.tensor([stop]))[0])  # only rank 0's record goes into checkpoints


def _save(run: Run) -> None:
    run.state.positions = {name: stream.position for name, stream in run.streams.items()}
    rng = run.dist.gather_objects(checkpoints.rng_state())  # every rank takes part
    if run.dist.is_main:
        checkpoints.save_checkpoint(run.checkpoint_dir, run.model, run.tokenizer, run.optimizer, run.state, rng,
                                    run.config.to_dict(), run.config.keep_checkpoints)


def _plan_from_budget(run: Run, session_steps: int, session_seconds: float) -> None:
    """With only --max-minutes: fix the schedule's length from the measured seconds per step."""
    state, budget = run.state, run.config.max_minutes
    if state.planned_steps is not None or budget is None or state.step < max(CALIBRATION_STEPS,
                                                                             run.config.warmup_steps):
        return
    seconds_per_step = session_seconds / max(1, session_steps)
    remaining = budget * 60 - state.elapsed_seconds
    planned = state.step + max(1, int(BUDGET_SAFETY * remaining / seconds_per_step))
    # every rank must plan the same length: take rank 0's estimate
    state.planned_steps = int(run.dist.broadcast(torch.tensor([planned], dtype=torch.float64))[0])
    logger.info("%.2f s per step: planning %d steps for the %.1f-minute budget", seconds_per_step,
                state.planned_steps, budget)
    if run.log is not None:
        run.log.log_plan(state.step, {"planned_steps": state.planned_steps, "seconds_per_step": seconds_per_step})


def _loop(run: Run, session_start: float) -> TrainResult:
    """Steps until max_steps, the time budget or early stopping; ``session_start`` is when train() began."""
    config, state = run.config, run.state
    session_steps, start_elapsed, loop_start = 0, state.elapsed_seconds, time.perf_counter()
    bar = tqdm(total=state.planned_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=not (config.progress and run.dist.is_main))
    values: dict[str, float] = {}
    stop_reason: StopReason = "max_steps"
    try:
        while state.planned_steps is None or state.step < state.planned_steps:
            schedule = Schedule(config.lr, config.warmup_steps, state.planned_steps or UNPLANNED_STEPS,
                                config.min_lr_ratio)
            step_start = time.perf_counter()
            values = _optimizer_step(run, schedule)
            state.step += 1
            session_steps += 1
            state.elapsed_seconds = start_elapsed + time.perf_counter() - session_start
            values["step_seconds"] = time.perf_counter() - step_start
            if run.log is not None:
                run.log.log_train(state.step, values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", cap=f"{values['caption_loss']:.2f}",
                            con=f"{values['contrastive_loss']:.2f}", ctc=f"{values['ctc_loss']:.2f}")
            _plan_from_budget(run, session_steps, time.perf_counter() - loop_start)
            bar.total = state.planned_steps
            out_of_time = config.max_minutes is not None and state.elapsed_seconds >= config.max_minutes * 60
            out_of_time = bool(run.dist.broadcast(torch.tensor([float(out_of_time)]))[0])
            last = out_of_time or state.step == state.planned_steps
            if (state.step % config.eval_every == 0 or last) and _evaluate(run):
                stop_reason, last = "early_stopping", True
            if out_of_time and stop_reason == "max_steps":
                stop_reason = "time_budget"
            if state.step % config.checkpoint_every == 0 or last:
                _save(run)
            if last:
                break
    finally:
        bar.close()
        if run.log is not None:
            run.log.close()
    return TrainResult(state.step, state.planned_steps, stop_reason, state.best_step, state.best_metric, values,
                       time.perf_counter() - session_start, Path(config.out))


def train(config: TrainConfig) -> TrainResult:
    """Run (or with ``config.resume``, continue) training; see the module docstring."""
    start = time.perf_counter()  # the budget counts setup (reading corpora, training the tokenizer) too
    dist = setup_distributed(config.device)
    try:
        return _loop(_setup(config, dist), start)
    finally:
        teardown(dist)
