"""Resume checkpoints: written atomically, the newest K kept, loaded without unpickling code.

Owns ``TrainingState`` (step, data positions, schedule, early-stopping record,
elapsed time), ``save_checkpoint`` and ``load_latest``. A checkpoint is a folder
``step-0000123/`` holding the model as ``mmbm.model.checkpoint`` writes it
(config.json, model.safetensors, tokenizer.json) and
``training_state.pt``: optimizer state, RNG states of every process, the
TrainingState and the run's config, saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which accepts tensors and plain containers
only. The folder is written under a temporary name and renamed when complete,
so a crash mid-save leaves the previous checkpoint as the newest loadable one.
Imports ``mmbm.model`` and ``mmbm.errors``; never the trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbm.errors import CheckpointError
from mmbm.model.checkpoint import load_checkpoint as load_model
from mmbm.model.checkpoint import save_checkpoint as save_model
from mmbm.model.model import MMBM
from mmbm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
STATE_FORMAT = "mmbm-training-state/1"
_STEP_DIR = re.compile(r"^step-(\d{7})$")


@dataclass
class TrainingState:
    """Where a run is; everything here goes into every checkpoint."""

    step: int = 0  # optimizer steps taken
    positions: dict[str, int] = field(default_factory=lambda: {"image_text": 0, "speech": 0})  # batches drawn
    planned_steps: int | None = None  # the cosine schedule's length (None until estimated from --max-minutes)
    best_metric: float | None = None  # best validation score so far (higher is better)
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one
    elapsed_seconds: float = 0.0  # training wall time over every session of the run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingState:
        return cls(**values)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (torch, CUDA, numpy, random)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(root: str | os.PathLike[str], model: MMBM, tokenizer: Tokenizer,
                    optimizer: torch.optim.Optimizer, state: TrainingState, rng_states: list[dict[str, Any]],
                    config: dict[str, Any], keep: int) -> Path:
    """Write ``root/step-NNNNNNN`` atomically, then delete all but the newest ``keep`` checkpoints."""
    root = Path(root)
    final = step_dir(root, state.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_model(model, tmp, tokenizer)
        payload = {"format": STATE_FORMAT, "state": state.to_dict(), "optimizer": optimizer.state_dict(),
                   "rng": rng_states, "config": config}
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. the last step after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint saved: %s", final)
    return final


@dataclass(frozen=True)
class Checkpoint:
    """A loaded resume checkpoint."""

    path: Path
    model: MMBM
    tokenizer: Tokenizer
    optimizer: dict[str, Any]
    state: TrainingState
    rng_states: list[dict[str, Any]]
    config: dict[str, Any]


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Checkpoint:
    """Read one checkpoint folder; CheckpointError when a file is missing or not a training state."""
    path = Path(path)
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint: {STATE_FILE} is missing")
    try:
        payload = torch.load(state_path, map_location=device, weights_only=True)
    except Exception as e:  # unpickling errors come in several types
        raise CheckpointError(f"cannot read {str(state_path)!r}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{str(state_path)!r} is not a {STATE_FORMAT} file")
    return Checkpoint(
        path=path,
        model=load_model(path, device),
        tokenizer=Tokenizer.load(path / "tokenizer.json"),
        optimizer=payload["optimizer"],
        state=TrainingState.from_dict(payload["state"]),
        rng_states=payload["rng"],
        config=payload["config"],
    )


def load_latest(root: str | os.PathLike[str], device: torch.device | str = "cpu") -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None when there is none."""
    found = list_checkpoints(root)
    return load_checkpoint(found[-1], device) if found else None
