"""Modality stems: each turns one kind of input into D-wide tokens for the backbone.

- ``ImageStem``: pixels (B, 3, S, S) -> non-overlapping patches by a strided Conv2d
  (the ViT patch embedding, arXiv:2010.11929) -> (B, N, D), N = (S / patch)².
- ``AudioStem``: log-mel (B, n_mels, T) -> two stride-2 Conv1d + GELU (4x fewer
  frames, as in the Conformer/Whisper front ends) -> (B, ceil(T / 4), D).
- ``TextStem``: token ids (B, L) -> token embedding (B, L, D); the caption output
  layer reuses this matrix (weight tying, arXiv:1608.05859).
Each adds a learned modality embedding and positions. Image and text positions are
learned absolute tables: their lengths are fixed and small (64 patches, 40 tokens)
and a learned image table can pick up the 2-D layout that a 1-D scheme would not
know about. Audio positions are the fixed sinusoidal table: clip lengths vary up
to ``max_audio_tokens`` (1600), a learned table that long would cost more
parameters than the audio stem itself and leave the rarely seen long positions
untrained. Stems validate the shapes they receive. Imports ``config``, ``errors``,
``layers`` and ``backbone`` (for the padding helper) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbm.backbone import lengths_to_valid
from mmbm.config import ModelConfig
from mmbm.errors import AudioError, ImageError, TextError
from mmbm.layers import sinusoidal_positions

AUDIO_SUBSAMPLING = 4  # two stride-2 convolutions
AUDIO_STRIDE = 2


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Frame counts after the audio stem: ceil(T / 2) twice, i.e. ceil(T / 4)."""
    for _ in range(AUDIO_SUBSAMPLING // AUDIO_STRIDE):
        lengths = (lengths + 1) // AUDIO_STRIDE
    return lengths


class ImageStem(nn.Module):
    """(B, 3, S, S) normalised pixels -> (B, N, D) patch tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.image_size = config.image.image_size
        self.patch = nn.Conv2d(3, config.d_model, kernel_size=config.patch_size, stride=config.patch_size)
        self.position = nn.Parameter(torch.zeros(config.n_image_tokens, config.d_model))
        self.modality = nn.Parameter(torch.zeros(config.d_model))

    @property
    def n_tokens(self) -> int:
        return self.position.shape[0]

    def forward(self, pixels: Tensor) -> Tensor:
        S = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise ImageError(f"pixels must have shape (B, 3, {S}, {S}); got {tuple(pixels.shape)}")
        x = self.patch(pixels)  # (B, D, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in raster order
        return x + self.position + self.modality  # (B, N, D)


class AudioStem(nn.Module):
    """(B, n_mels, T) log-mel -> (B, T', D) audio tokens with T' = ceil(T / 4)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.d_model
        self.n_mels = config.audio.n_mels
        self.max_tokens = config.max_audio_tokens
        self.conv1 = nn.Conv1d(self.n_mels, D, kernel_size=3, stride=AUDIO_STRIDE, padding=1)
        self.conv2 = nn.Conv1d(D, D, kernel_size=3, stride=AUDIO_STRIDE, padding=1)
        self.modality = nn.Parameter(torch.zeros(D))
        self.register_buffer("position", sinusoidal_positions(config.max_audio_tokens, D), persistent=False)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Return tokens (B, T', D) and their lengths (B,)."""
        if features.ndim != 3 or features.shape[1] != self.n_mels:
            raise AudioError(f"features must have shape (B, {self.n_mels}, T); got {tuple(features.shape)}")
        if lengths.shape != (features.shape[0],):
            raise AudioError(f"feature_lengths must have shape ({features.shape[0]},); got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > features.shape[2]:
            raise AudioError(f"feature_lengths must be in [1, {features.shape[2]}]; got {lengths.tolist()}")
        # Zero the padding before each convolution so a clip's tokens do not depend on
        # how much padding its batch has (batched output == one-by-one output).
        x = features * lengths_to_valid(lengths, features.shape[2])[:, None, :]  # (B, M, T)
        half = (lengths + 1) // AUDIO_STRIDE
        x = F.gelu(self.conv1(x))  # (B, D, T/2)
        x = x * lengths_to_valid(half, x.shape[2])[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', D)
        new_lengths = subsampled_lengths(lengths)
        if x.shape[1] > self.max_tokens:
            seconds = self.max_tokens * AUDIO_SUBSAMPLING / 100
            raise AudioError(
                f"audio gives {x.shape[1]} tokens, more than max_audio_tokens={self.max_tokens} "
                f"(about {seconds:.0f} s at a 10 ms hop); split it into shorter pieces"
            )
        return x + self.position[: x.shape[1]] + self.modality, new_lengths  # (B, T', D), (B,)


class TextStem(nn.Module):
    """(B, L) token ids -> (B, L, D) token embeddings + positions + modality."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.vocab_size = config.vocab_size
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Parameter(torch.zeros(config.max_text_len, config.d_model))
        self.modality = nn.Parameter(torch.zeros(config.d_model))

    @property
    def max_length(self) -> int:
        return self.position.shape[0]

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """Embed ``ids`` that sit at positions ``start .. start + L - 1``."""
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise TextError(f"token ids must have shape (B, L) with L >= 1; got {tuple(ids.shape)}")
        if start + ids.shape[1] > self.max_length:
            raise TextError(f"text of {start + ids.shape[1]} tokens is longer than max_text_len={self.max_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise TextError(
                f"token ids must be in [0, {self.vocab_size}); got range [{int(ids.min())}, {int(ids.max())}]"
            )
        x = self.token(ids)  # (B, L, D)
        return x + self.position[start : start + ids.shape[1]] + self.modality  # (B, L, D)
