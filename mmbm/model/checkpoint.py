"""Checkpoints in the Hugging Face layout: config.json, model.safetensors, tokenizer.json.

Owns saving and loading an ``MMBM``. Weights are safetensors only — nothing is
ever unpickled — and are the uncompiled, unwrapped module's (``torch.compile``'s
``_orig_mod.`` and DDP's ``module.`` prefixes never reach the file). Every file is
written to a temporary name in the target folder and moved into place with
``os.replace``, weights first and config.json last, so a reader never sees a half
written file and other files in the folder (model card, metrics) are kept. A
missing folder or file, malformed JSON, a truncated weights file or weights that
do not fit the config raise ``CheckpointError`` naming the file. When a
pretrained stem is used, its transformers config is saved in a subfolder
(``image_encoder/``, ``text_encoder/``) so the checkpoint rebuilds offline on its
own. Imports the model, config, errors and tokenizer; never training code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmbm.config import ModelConfig
from mmbm.errors import CheckpointError, MMBMError
from mmbm.model.model import MMBM
from mmbm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
MODEL_TYPE = "mmbm"
FORMAT_VERSION = 1
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel
ENCODER_FIELDS = ("image_encoder", "text_encoder")


def unwrap_model(model: nn.Module) -> MMBM:
    """The plain MMBM inside a torch.compile / DDP wrapper."""
    while not isinstance(model, MMBM):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise CheckpointError(f"expected an MMBM (possibly compiled or DDP-wrapped), got {type(model).__name__}")
        model = inner
    return model


def _strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _unique_tensors(model: MMBM) -> dict[str, torch.Tensor]:
    """state_dict with each shared storage kept once (safetensors refuses aliases)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        tensors[_strip_prefixes(name)] = tensor.detach().to("cpu").contiguous()
    return tensors


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(model: nn.Module, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` (unwrapped) and optionally ``tokenizer`` into ``directory``; returns it."""
    plain = unwrap_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = plain.config
    for field in ENCODER_FIELDS:
        if getattr(config, field) is not None:
            getattr(plain, field.replace("encoder", "stem")).save_encoder_config(directory / field)
            config = dataclasses.replace(config, **{field: field})  # relative to the checkpoint folder
    tensors = _unique_tensors(plain)
    _write_atomic(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    if tokenizer is not None:
        _write_atomic(directory / TOKENIZER_NAME, lambda p: tokenizer.save(p))
    payload = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **config.to_dict()}
    _write_atomic(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))
    logger.info("saved checkpoint to %s (%d tensors)", directory, len(tensors))
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    """Read and validate ``directory/config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint is missing {CONFIG_NAME}: {path}")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(values, dict) or values.pop("model_type", None) != MODEL_TYPE:
        raise CheckpointError(f"{path} is not an MMBM config (model_type must be {MODEL_TYPE!r})")
    values.pop("format_version", None)
    for field in ENCODER_FIELDS:  # stored relative to the checkpoint folder
        if values.get(field) is not None:
            values[field] = str(Path(directory) / values[field])
    try:
        return ModelConfig.from_dict(values)
    except (MMBMError, TypeError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from e


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint is missing {WEIGHTS_NAME}: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or not a safetensors file: {e}") from e
    return {_strip_prefixes(name): tensor for name, tensor in tensors.items()}


def _check_weights(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{name} {tuple(found[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(found))
        if found[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (file != config), e.g. {wrong[:3]}")
    if problems:
        raise CheckpointError(f"{path} does not match {CONFIG_NAME}: " + "; ".join(problems))


def load_checkpoint(directory: str | Path, device: str | torch.device | None = None) -> MMBM:
    """Build the model from ``directory/config.json`` and fill it from model.safetensors (eval mode)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    config = load_config(directory)
    weights = _read_weights(directory / WEIGHTS_NAME)
    model = MMBM(config)
    _check_weights(_unique_tensors(model), weights, directory / WEIGHTS_NAME)
    # Aliased names (none today) are filled through the one stored tensor.
    model.load_state_dict(weights, strict=False)
    return model.to(device if device is not None else "cpu").eval()


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """``Tokenizer.load(directory / "tokenizer.json")`` with a CheckpointError naming a missing file."""
    path = Path(directory) / TOKENIZER_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint is missing {TOKENIZER_NAME}: {path}")
    return Tokenizer.load(path)
