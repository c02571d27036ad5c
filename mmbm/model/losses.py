"""The three training objectives in one place, plus the token accuracy metric.

- ``caption_loss``: next-token cross-entropy over caption ids (teacher forcing), pads
  ignored, optional label smoothing (arXiv:1512.00567 §7).
- ``contrastive_loss``: CLIP's symmetric InfoNCE over a batch of matched image/text
  embeddings (arXiv:2103.00020, arXiv:1807.03748).
- ``ctc_loss``: connectionist temporal classification over audio tokens (Graves et
  al., ICML 2006), via ``torch.nn.functional.ctc_loss``
  with ``zero_infinity`` so an impossible alignment (too few frames) gives 0, not inf.
Every loss is computed in float32 whatever autocast did upstream. Imports nothing
from the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def caption_loss(logits: Tensor, ids: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits (B, L, V) predicting ids[:, 1:] from ids[:, :-1]; 0-d tensor."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    predictions = logits[:, :-1].float()  # (B, L-1, V)
    targets = ids[:, 1:]  # (B, L-1)
    return F.cross_entropy(
        predictions.reshape(-1, predictions.shape[-1]),
        targets.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )


@torch.no_grad()
def token_accuracy(logits: Tensor, ids: Tensor, pad_id: int) -> float:
    """Fraction of non-pad next tokens whose argmax prediction is right (teacher forcing)."""
    predictions = logits[:, :-1].argmax(dim=-1)  # (B, L-1)
    targets = ids[:, 1:]
    real = targets != pad_id
    return float((predictions == targets)[real].float().mean())


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: row i of both (B, E) inputs is a matched pair; 0-d tensor."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"embeddings differ in shape: {tuple(image_embeds.shape)} vs {tuple(text_embeds.shape)}")
    logits = logit_scale.float() * image_embeds.float() @ text_embeds.float().T  # (B, B) image -> text
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def ctc_loss(
    log_probs: Tensor,
    lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    blank_id: int,
) -> Tensor:
    """CTC loss of log-probs (B, T', V) with (B,) lengths against padded targets (B, S).

    Averaged over the batch after dividing each clip's loss by its target length
    (PyTorch's "mean" reduction); 0-d tensor.
    """
    return F.ctc_loss(
        log_probs.float().transpose(0, 1),  # (T', B, V) as ctc_loss expects
        targets,
        lengths,
        target_lengths,
        blank=blank_id,
        reduction="mean",
        zero_infinity=True,
    )
