"""Training records: a JSONL log, TensorBoard event files and PNG plots of the curves.

Owns ``RunLog``. Every optimizer step appends a ``{"kind": "train", ...}`` row
and every validation a ``{"kind": "eval", ...}`` row to ``train_log.jsonl``
(the first row, ``"kind": "config"``, records the run's settings and task
weights; a ``"plan"`` row records a schedule length estimated from the clock); the same scalars go to TensorBoard under ``tensorboard/``; and
``training_curves.png`` (matplotlib, Agg backend) is redrawn at each
validation and at the end. On resume, rows after the checkpoint's step are
dropped and TensorBoard purges its later events, so the curves continue the
interrupted run without a fork. Only rank 0 makes a RunLog. tensorboard and
matplotlib are training-only dependencies, imported here and nowhere in the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "training_curves.png"
TENSORBOARD_DIR = "tensorboard"
TRAIN_CURVES = ("loss", "caption_loss", "contrastive_loss", "ctc_loss")
EVAL_CURVES = ("caption_accuracy", "retrieval_r1", "speech_cer", "score")


class RunLog:
    """The JSONL log, TensorBoard writer and plot of one run, in ``out``."""

    def __init__(self, out: str | os.PathLike[str], resume_step: int | None) -> None:
        self.out = Path(out)
        self.path = self.out / LOG_FILE
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self.rows = [r for r in _read_rows(self.path) if r.get("kind") == "config" or r["step"] <= resume_step]
        _write_rows(self.path, self.rows)  # a fresh run starts an empty log; a resumed one drops the fork
        events = self.out / TENSORBOARD_DIR
        if resume_step is None:
            shutil.rmtree(events, ignore_errors=True)  # the events of an earlier run in this folder
        purge = None if resume_step is None else resume_step + 1  # events at or after it are dropped
        self.writer = SummaryWriter(str(events), purge_step=purge)

    def log_config(self, config: dict[str, Any], weights: dict[str, float], extra: dict[str, Any]) -> None:
        self._append({"kind": "config", "config": config, "task_weights": weights, **extra})
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")
        self.writer.add_text("task_weights", json.dumps(weights))

    def log_train(self, step: int, values: dict[str, float]) -> None:
        self._append({"kind": "train", "step": step, **values})
        for name, value in values.items():
            if isinstance(value, float | int):
                self.writer.add_scalar(f"train/{name}", value, step)

    def log_plan(self, step: int, values: dict[str, float]) -> None:
        """A ``"plan"`` row: the schedule length fixed from the measured step time (--max-minutes only)."""
        self._append({"kind": "plan", "step": step, **values})

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        self._append({"kind": "eval", "step": step, **values})
        for name, value in values.items():
            self.writer.add_scalar(f"val/{name}", value, step)
        self.writer.flush()
        self.plot()

    def _append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self) -> Path:
        """Redraw ``training_curves.png``: training losses, learning rate, validation metrics."""
        return plot_curves(self.rows, self.out / PLOT_FILE)

    def close(self) -> None:
        self.plot()
        self.writer.close()


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _series(rows: list[dict[str, Any]], kind: str, name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in rows if r.get("kind") == kind and name in r]
    points = [(s, v) for s, v in points if isinstance(v, float | int) and math.isfinite(v)]
    return [s for s, _ in points], [float(v) for _, v in points]


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Three panels from JSONL rows; losses are a running mean over 1% of the steps. Written atomically."""
    figure, (losses, lr, metrics) = plt.subplots(1, 3, figsize=(15, 4))
    for name in TRAIN_CURVES:
        steps, values = _series(rows, "train", name)
        if steps:
            losses.plot(steps, _smooth(values, max(1, len(values) // 100)), label=name, linewidth=1)
    losses.set(title="training losses", xlabel="step", yscale="log")
    steps, values = _series(rows, "train", "lr")
    lr.plot(steps, values)
    lr.set(title="learning rate", xlabel="step")
    for name in EVAL_CURVES:
        steps, values = _series(rows, "eval", name)
        if steps:
            metrics.plot(steps, values, marker="o", label=name)
    metrics.set(title="validation", xlabel="step", ylim=(0, 1.05))
    for axis in (losses, metrics):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path
