"""Optional pretrained stems: a local ``transformers`` model in place of a native stem.

- ``PretrainedImageStem``: a vision encoder (ViT-like: ``AutoModel`` taking
  ``pixel_values`` and returning ``last_hidden_state``) runs on the pixels; its
  patch tokens (class/register tokens dropped) are projected to d_model and get the
  image modality embedding. The encoder's ``image_size`` must equal the model's,
  and the pixels are normalised with ``ImageConfig.mean/std`` — set those to the
  encoder's own values.
- ``PretrainedTextStem``: the input token embeddings of a text model (BERT-like),
  projected to d_model, plus learned positions and the text modality embedding.
  Only the embedding table is taken, not the contextual layers: the shared
  backbone is the contextual part, and a contextual text encoder in front of it
  would have to be causal and would break key/value-cached decoding. The encoder's
  vocabulary must be the tokenizer's (same ``vocab_size``; ids are fed unchanged).
Folders are read offline (``local_files_only``); a folder holding only
config.json builds the architecture with random weights, which is how a saved
MMBM checkpoint rebuilds the stem before its own weights are loaded. transformers
is imported inside functions so that importing mmbm.model.model stays fast. Imports
``config`` and ``errors`` from the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmbm.config import ModelConfig
from mmbm.errors import ConfigError, ImageError, TextError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def load_encoder(path: str | Path) -> Any:
    """``AutoModel`` from a local folder: pretrained weights if present, else from its config."""
    from transformers import AutoConfig, AutoModel

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"pretrained encoder: {folder / 'config.json'} not found (expected a local transformers folder)"
        )
    try:
        if any((folder / name).is_file() for name in WEIGHT_FILES):
            # use_safetensors: never unpickle a .bin from a folder we were pointed at
            return AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        return AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"pretrained encoder: cannot load {folder}: {e}") from e


class PretrainedImageStem(nn.Module):
    """(B, 3, S, S) pixels -> transformers vision encoder -> (B, N, D) patch tokens."""

    def __init__(self, path: str | Path, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = load_encoder(path)
        hf = self.encoder.config
        size, patch = getattr(hf, "image_size", None), getattr(hf, "patch_size", None)
        if size != config.image.image_size or not isinstance(patch, int):
            raise ConfigError(
                f"image_encoder: {path} has image_size={size}, patch_size={patch}; "
                f"the model needs image_size={config.image.image_size} and an integer patch_size"
            )
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused, and unused parameters upset DDP
        self.image_size = size
        self.n_patches = (size // patch) ** 2
        self.projection = nn.Linear(hf.hidden_size, config.d_model)
        self.modality = nn.Parameter(torch.zeros(config.d_model))

    @property
    def n_tokens(self) -> int:
        return self.n_patches

    def save_encoder_config(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(str(folder))

    def forward(self, pixels: Tensor) -> Tensor:
        S = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise ImageError(f"pixels must have shape (B, 3, {S}, {S}); got {tuple(pixels.shape)}")
        hidden = self.encoder(pixel_values=pixels).last_hidden_state  # (B, extra + N, H)
        patches = hidden[:, -self.n_patches :]  # (B, N, H), class/register tokens come first
        return self.projection(patches) + self.modality  # (B, N, D)


class PretrainedTextStem(nn.Module):
    """(B, L) ids -> pretrained token embeddings -> Linear -> (B, L, D) + positions + modality."""

    def __init__(self, path: str | Path, config: ModelConfig) -> None:
        super().__init__()
        encoder = load_encoder(path)
        self.encoder_config = encoder.config
        token = encoder.get_input_embeddings()
        if token.num_embeddings != config.vocab_size:
            raise ConfigError(
                f"text_encoder: {path} has a vocabulary of {token.num_embeddings} tokens but the model's "
                f"vocab_size is {config.vocab_size}; the tokenizer must be the encoder's"
            )
        self.token = token
        self.vocab_size = config.vocab_size
        self.projection = nn.Linear(token.embedding_dim, config.d_model)
        self.position = nn.Parameter(torch.randn(config.max_text_len, config.d_model) * 0.02)
        self.modality = nn.Parameter(torch.zeros(config.d_model))

    def save_encoder_config(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder_config.save_pretrained(str(folder))

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """Embed ``ids`` that sit at positions ``start .. start + L - 1``."""
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise TextError(f"token ids must have shape (B, L) with L >= 1; got {tuple(ids.shape)}")
        if start + ids.shape[1] > self.position.shape[0]:
            raise TextError(
                f"text of {start + ids.shape[1]} tokens is longer than max_text_len={self.position.shape[0]}"
            )
        x = self.projection(self.token(ids))  # (B, L, D)
        return x + self.position[start : start + ids.shape[1]] + self.modality  # (B, L, D)
