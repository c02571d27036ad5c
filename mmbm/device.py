"""Device selection, mixed precision and optional compilation.

Owns three small decisions so the trainer, pipeline and benchmarks make them the
same way:
- ``select_device``: "auto" picks CUDA, then Apple MPS, then the CPU; an explicit
  choice that is not available raises ConfigError.
- ``autocast``: bfloat16 autocast on CUDA (no loss scaling needed, unlike float16);
  on the CPU only when asked (``cpu_bf16=True``): this CPU has AMX bf16 tiles that
  make matmuls ~5x faster (../shared/STACK.md), but accuracy must be measured per
  use; off on MPS.
- ``maybe_compile``: ``torch.compile`` when asked; checkpoints always save the
  uncompiled module (mmbm.model.checkpoint unwraps ``_orig_mod``).
Imports ``errors`` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmbm.errors import ConfigError

logger = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: DeviceName | str = "auto") -> torch.device:
    """A torch.device for ``name``: "auto" prefers CUDA, then MPS, then the CPU ("cuda:1" is accepted)."""
    kind = name.split(":")[0]
    if kind not in DEVICE_NAMES:
        raise ConfigError(f"device: must be one of {DEVICE_NAMES} (optionally 'cuda:N'), got {name!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here")
    if kind == "mps" and not mps_available():
        raise ConfigError(f"device: {name!r} requested but MPS is not available here")
    return torch.device(name)


def autocast_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype used on ``device``, or None for full float32."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    return None


def autocast(device: torch.device, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """Context manager for mixed precision on ``device`` (a no-op where none is used)."""
    dtype = autocast_dtype(device, cpu_bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when ``enabled``; the original module is at ``._orig_mod``."""
    if not enabled:
        return model
    logger.info("compiling the model with torch.compile (first steps will be slow)")
    return torch.compile(model)


def hardware_description(device: torch.device) -> str:
    """CPU model, core count and torch threads (plus the GPU when one is used), e.g. for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, device {device}"
