"""MMBM training runs for the benchmark: the shared model, one model per task, and the fusion ablation.

Every run is ``python -m mmbm.training`` in a child process (so the report can quote
the exact command and the child's peak memory is its own), with the same seed,
batch sizes, schedule and number of optimizer steps; only the task weights, the
fusion and the early-stopping metric differ (``RUNS``). A zero task weight
removes that task from every micro-step (mmbm.training.mixing), so a
single-task run does that task's forward and backward only and sees exactly the
batches of that task that the shared run sees, step for step. The fusion
ablation trains captioning alone, so the comparison isolates how text meets the
image, and its "attention" run doubles as the caption-only model. A last run
repeats the shared model with captioning weighted 3x, to test why sharing costs
captioning (bench.task_gradients).

Runs are resumable: a finished run leaves ``bench_run.json`` and is skipped; an
interrupted one continues from its newest checkpoint (``--resume``). Each
finished model is then measured by ``mmbm.evaluate`` on the sections its tasks
need, and the metrics land in ``RUN/eval/metrics.json`` (also skipped when done
with the same settings).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.parameters import PART_TASKS, parameter_counts
from mmbm.errors import ConfigError, MMBMError
from mmbm.evaluate.evaluator import EvaluateConfig, run_evaluation, write_metrics
from mmbm.files import write_text_atomic
from mmbm.model.checkpoint import load_checkpoint
from mmbm.training import state as checkpoints

logger = logging.getLogger(__name__)

RUN_FILE = "bench_run.json"
EVAL_DIR = "eval"
TASKS = ("caption", "retrieval", "speech")
SECTIONS = {"caption": "captions", "retrieval": "retrieval", "speech": "speech"}  # mmbm.evaluate section names


@dataclass(frozen=True)
class TrainingRun:
    """One model of the benchmark: which tasks it trains, with which fusion, and how it picks its best step."""

    name: str
    weights: tuple[float, float, float]  # caption, contrastive (retrieval), CTC (speech)
    fusion: str
    stop_metric: str

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for task, weight in zip(TASKS, self.weights, strict=True) if weight > 0)


RUNS: tuple[TrainingRun, ...] = (
    TrainingRun("shared", (1.0, 1.0, 1.0), "attention", "combined"),
    TrainingRun("caption-attention", (1.0, 0.0, 0.0), "attention", "caption_accuracy"),
    TrainingRun("retrieval-only", (0.0, 1.0, 0.0), "attention", "retrieval_r1"),
    TrainingRun("speech-only", (0.0, 0.0, 1.0), "attention", "speech_cer"),
    TrainingRun("caption-concat", (1.0, 0.0, 0.0), "concat", "caption_accuracy"),
    TrainingRun("caption-multiply", (1.0, 0.0, 0.0), "multiply", "caption_accuracy"),
    # the shared model with the caption loss weighted 3x: bench.task_gradients finds captioning's gradient on the
    # shared weights about a quarter of retrieval's, so Adam moves them mostly for the other tasks
    TrainingRun("shared-caption-x3", (3.0, 1.0, 1.0), "attention", "combined"),
)
SINGLE_TASK_RUNS = {"caption": "caption-attention", "retrieval": "retrieval-only", "speech": "speech-only"}
FUSION_RUNS = {"attention": "caption-attention", "concat": "caption-concat", "multiply": "caption-multiply"}
REWEIGHTED_RUN = "shared-caption-x3"


@dataclass(frozen=True)
class Budget:
    """What every run shares."""

    images: Path
    speech: Path
    steps: int
    seed: int = 0
    threads: int = 1
    extra_flags: tuple[str, ...] = ()  # more `python -m mmbm.training` flags, the same for every run

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // 4)  # four validations pick the best step


def train_command(run: TrainingRun, out: Path, budget: Budget) -> list[str]:
    """The ``python -m mmbm.training`` command line of ``run`` (without the interpreter)."""
    caption, contrastive, ctc = run.weights
    return ["-m", "mmbm.training", "--images", str(budget.images), "--speech", str(budget.speech), "--out", str(out),
            "--seed", str(budget.seed), "--max-steps", str(budget.steps), "--fusion", run.fusion,
            "--caption-weight", f"{caption:g}", "--contrastive-weight", f"{contrastive:g}", "--ctc-weight", f"{ctc:g}",
            "--early-stop-metric", run.stop_metric, "--eval-every", str(budget.eval_every),
            "--checkpoint-every", str(budget.eval_every), "--patience", "1000", "--no-progress",
            *budget.extra_flags, "--resume"]


def _child(args: list[str], log_path: Path, threads: int) -> tuple[int, float]:
    """Run ``python args`` with output to ``log_path``; (exit code, peak RSS in MB of that child)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024  # Linux reports KiB


def finished_run(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_run(run: TrainingRun, root: Path, budget: Budget) -> dict[str, Any]:
    """Train ``run`` into ``root/run.name`` unless done; returns its record (command, time, memory, steps)."""
    out = root / run.name
    args = train_command(run, out, budget)
    command = "python " + " ".join(args)
    done = finished_run(out)
    if done is not None:
        if done["command"] != command:
            raise ConfigError(f"{out} holds a run made by another command ({done['command']!r}); "
                              f"use another --out or remove that folder")
        logger.info("%s: already trained, skipping", run.name)
        return done
    out.mkdir(parents=True, exist_ok=True)
    logger.info("training %s: %s", run.name, command)
    begin = time.perf_counter()
    code, peak_mb = _child(args, out / "train.out", budget.threads)
    wall = time.perf_counter() - begin
    if code != 0:
        tail = (out / "train.out").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise MMBMError(f"training {run.name} failed (exit {code}); the end of {out / 'train.out'}:\n{tail}")
    last = checkpoints.load_latest(out / "checkpoints")
    assert last is not None, "a finished run always leaves a checkpoint"
    record = {"name": run.name, "command": command, "tasks": list(run.tasks), "fusion": run.fusion,
              "weights": list(run.weights), "stop_metric": run.stop_metric, "steps": last.state.step,
              "best_step": last.state.best_step, "train_seconds": last.state.elapsed_seconds,
              "wall_seconds_last_session": wall, "peak_rss_mb": peak_mb, "threads": budget.threads,
              "seed": budget.seed, **model_size(out)}
    write_text_atomic(out / RUN_FILE, json.dumps(record, indent=1) + "\n")
    return record


def model_size(model_dir: Path) -> dict[str, Any]:
    """Parameters by part, by task (every part a task reads) and in all, with fp32 weight megabytes."""
    model = load_checkpoint(model_dir, device="cpu")
    parts = parameter_counts(model)
    by_task = {task: sum(n for part, n in parts.items() if task in PART_TASKS[part]) for task in TASKS}
    total = sum(parts.values())
    return {"parameters": {"parts": parts, "tasks": by_task, "total": total}, "weights_mb": total * 4 / 1e6}


def evaluate_run(run: TrainingRun, root: Path, budget: Budget, real_speech: Sequence[Path], limit: int | None,
                 gallery_size: int) -> dict[str, Any]:
    """mmbm.evaluate on the sections of ``run``'s tasks; reuses RUN/eval/metrics.json made with the same command."""
    model_dir, out = root / run.name, root / run.name / EVAL_DIR
    sections = tuple(SECTIONS[task] for task in run.tasks)
    args = [str(model_dir), "--images", str(budget.images), "--speech", str(budget.speech), "--out", str(out),
            "--sections", *sections, "--gallery-size", str(gallery_size), "--threads", str(budget.threads)]
    if real_speech and "speech" in sections:
        args += ["--real-speech", *map(str, real_speech)]
    if limit is not None:
        args += ["--limit", str(limit)]
    command = "python -m mmbm.evaluate " + " ".join(args)
    path = out / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text(encoding="utf-8"))
        if metrics["provenance"]["command"] == command:
            logger.info("%s: already evaluated, skipping", run.name)
            return metrics
    config = EvaluateConfig(model_dir=model_dir, images=budget.images, speech=budget.speech,
                            real_speech=tuple(real_speech) if "speech" in sections else (), out=out, limit=limit,
                            gallery_size=gallery_size, sections=sections, threads=budget.threads, progress=False)
    logger.info("evaluating %s: %s", run.name, command)
    metrics = run_evaluation(config, command)
    write_metrics(metrics, out)
    return metrics


def run_all_trainings(root: Path, budget: Budget, real_speech: Sequence[Path], limit: int | None,
                      gallery_size: int, runs: Sequence[TrainingRun] = RUNS) -> dict[str, Any]:
    """Train and evaluate every run (resumable); {name: {"run": record, "metrics": metrics.json dict}}."""
    results = {}
    for run in runs:
        record = train_run(run, root, budget)
        results[run.name] = {"run": record, "metrics": evaluate_run(run, root, budget, real_speech, limit,
                                                                    gallery_size)}
    return results
