"""The small task-specific parts on top of the shared backbone.

- ``RetrievalHead``: pooled image / text vectors -> Linear -> L2 norm, and the
  learnable temperature ``logit_scale`` of CLIP (arXiv:2103.00020), initialised to
  log(1 / 0.07) and clamped to 100 when used.
- ``CTCHead``: Linear(D, vocab) over audio tokens -> log-probabilities (float32).
- ``ConcatFusion`` / ``MultiplyFusion``: the two non-attention ways the seed names to
  combine a pooled image vector with each caption token embedding before the
  causal text pass. (The "attention" fusion needs no parameters: it is the
  prefix-LM mask in ``mmbm.model.backbone``.)
The caption output layer is not here: it is the text embedding matrix itself
(tied), applied in ``MMBM.caption_head``. Imports ``config`` only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbm.config import ModelConfig

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature of 0.07
LOGIT_SCALE_MAX = 100.0  # CLIP clamps exp(logit_scale) here to keep training stable


def mean_pool(hidden: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, T, D) -> (B, D), averaging over positions where ``valid`` (B, T) is True."""
    if valid is None:
        return hidden.mean(dim=1)
    weights = valid.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)


class RetrievalHead(nn.Module):
    """Project pooled image and text vectors into one d_embed space."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.image_projection = nn.Linear(config.d_model, config.d_embed, bias=False)
        self.text_projection = nn.Linear(config.d_model, config.d_embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def scale(self) -> Tensor:
        """exp(logit_scale) clamped to LOGIT_SCALE_MAX, a 0-d tensor."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def embed_image(self, pooled: Tensor, normalize: bool) -> Tensor:
        x = self.image_projection(pooled)  # (B, d_embed)
        return F.normalize(x, dim=-1) if normalize else x

    def embed_text(self, pooled: Tensor, normalize: bool) -> Tensor:
        x = self.text_projection(pooled)  # (B, d_embed)
        return F.normalize(x, dim=-1) if normalize else x


class CTCHead(nn.Module):
    """Audio tokens (B, T', D) -> CTC log-probabilities (B, T', V) in float32."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.output = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(hidden).float().log_softmax(dim=-1)  # (B, T', V)


class ConcatFusion(nn.Module):
    """[text token ; pooled image] -> Linear(2D -> D), applied to every text token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.combine = nn.Linear(2 * config.d_model, config.d_model)

    def forward(self, text: Tensor, image: Tensor) -> Tensor:
        """text (B, L, D), pooled image (B, D) -> (B, L, D)."""
        image = image[:, None, :].expand(-1, text.shape[1], -1)  # (B, L, D)
        return self.combine(torch.cat([text, image], dim=-1))  # (B, L, D)


class MultiplyFusion(nn.Module):
    """text token * Linear(pooled image), element-wise (a FiLM-like gate, arXiv:1709.07871)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_model)
        self.gate.is_fusion_gate = True  # bias starts at 1 so the gate starts near identity

    def forward(self, text: Tensor, image: Tensor) -> Tensor:
        """text (B, L, D), pooled image (B, D) -> (B, L, D)."""
        return text * self.gate(image)[:, None, :]  # (B, L, D)


def build_fusion(config: ModelConfig) -> nn.Module | None:
    """The fusion module ``config.fusion`` needs (None for "attention")."""
    if config.fusion == "concat":
        return ConcatFusion(config)
    if config.fusion == "multiply":
        return MultiplyFusion(config)
    return None
