"""Modality stems: each turns one kind of input into D-wide tokens for the backbone.

- ``ImageStem``: pixels (B, 3, S, S) -> (B, N, D), N = (S / patch)², either by
  non-overlapping patches of one strided Conv2d ("patch", the ViT embedding,
  arXiv:2010.11929) or by log2(patch) stride-2 3x3 convolutions with GELU and a
  LayerNorm ("conv", the early-convolution stem of arXiv:2106.14881, which
  optimises faster and sees small shapes' outlines across patch borders).
- ``AudioStem``: log-mel (B, n_mels, T) -> stride-2 Conv1d + GELU, repeated until
  the frame rate is ``audio_subsampling`` times lower (8x by default: 12.5 tokens
  a second, arXiv:2005.08100 uses 4x for characters, word pieces are slower), then
  LayerNorm -> (B, T', D).
- ``TextStem``: token ids (B, L) -> token embedding (B, L, D); the caption output
  layer reuses this matrix (weight tying, arXiv:1608.05859).
Each adds a learned modality embedding and positions. Image and text positions are
learned absolute tables: their lengths are fixed and small (64 patches, 40 tokens)
and a learned image table can pick up the 2-D layout that a 1-D scheme would not
know about. Audio positions are the fixed sinusoidal table: clip lengths vary up
to ``max_audio_tokens`` (1600), a learned table that long would cost more
parameters than the audio stem itself and leave the rarely seen long positions
untrained. Stems validate the shapes they receive (shapes only: the values of
token ids are checked once where a text enters, ``MMBM.text_lengths``, not on
every decoding step, which would wait on the device). Imports ``config``, ``errors``,
``layers`` and ``backbone`` (for the padding helper) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbm.config import ModelConfig
from mmbm.errors import AudioError, ImageError, TextError
from mmbm.model.backbone import lengths_to_valid
from mmbm.model.layers import sinusoidal_positions

AUDIO_STRIDE = 2  # each audio convolution halves the frame rate


class ImageStem(nn.Module):
    """(B, 3, S, S) normalised pixels -> (B, N, D) patch tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.image_size = config.image.image_size
        D = config.d_model
        self.norm: nn.Module = nn.Identity()
        if config.image_stem == "patch":
            self.patch: nn.Module = nn.Conv2d(3, D, kernel_size=config.patch_size, stride=config.patch_size)
        else:  # "conv": stride-2 3x3 convolutions down to the same patch grid (arXiv:2106.14881)
            n = config.patch_size.bit_length() - 1
            widths = [3] + [D // 2 ** (n - 1 - k) for k in range(n)]  # e.g. 3 -> 48 -> 96 -> 192
            layers: list[nn.Module] = []
            for k, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
                layers.append(nn.Conv2d(w_in, w_out, kernel_size=3, stride=2, padding=1))
                if k < n - 1:
                    layers.append(nn.GELU())
            self.patch = nn.Sequential(*layers)
            self.norm = nn.LayerNorm(D)  # the stack's output scale depends on its depth; tokens start at RMS 1
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
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D), patches in raster order
        return x + self.position + self.modality  # (B, N, D)


class AudioStem(nn.Module):
    """(B, n_mels, T) log-mel -> (B, T', D) audio tokens with T' = ceil(T / audio_subsampling)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.d_model
        self.n_mels = config.audio.n_mels
        self.max_tokens = config.max_audio_tokens
        self.factor = config.audio_subsampling
        self.seconds_per_token = config.audio.hop_length * config.audio_subsampling / config.audio.sample_rate
        widths = [self.n_mels] + [D] * (self.factor.bit_length() - 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(w_in, w_out, kernel_size=3, stride=AUDIO_STRIDE, padding=1)
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        # The convolutions' output is ~0.07 RMS at init against 0.71 for the sinusoidal
        # positions; unnormalised, the positions drown the sound and CTC first learns
        # where words usually fall instead of what was said. LayerNorm puts both on one scale.
        self.norm = nn.LayerNorm(D)
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
        x, valid = features, lengths
        for conv in self.convs:
            x = F.gelu(conv(x * lengths_to_valid(valid, x.shape[2])[:, None, :]))  # (B, D, T / 2^k)
            valid = (valid + 1) // AUDIO_STRIDE
        if x.shape[2] > self.max_tokens:
            seconds = self.max_tokens * self.seconds_per_token
            raise AudioError(
                f"audio gives {x.shape[2]} tokens, more than max_audio_tokens={self.max_tokens} "
                f"(about {seconds:.0f} s); split it into shorter pieces"
            )
        x = self.norm(x.transpose(1, 2))  # (B, T', D)
        return x + self.position[: x.shape[1]] + self.modality, valid  # (B, T', D), (B,)


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
        x = self.token(ids)  # (B, L, D)
        return x + self.position[start : start + ids.shape[1]] + self.modality  # (B, L, D)
