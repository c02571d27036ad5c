"""The multi-task objective, the optimizer's parameter groups and the precision context.

Owns ``MultiTaskModule``: the one ``forward`` that DDP wraps, which runs the
tasks of a micro-step on the model and returns each task's loss: caption
cross-entropy with label smoothing, symmetric InfoNCE over the *global* batch
(embeddings gathered from every process with gradients, arXiv:2103.00020) and
CTC. Losses are scaled so that DDP's gradient averaging over processes gives
exactly the gradient of one process holding the whole global batch (see
``_caption``). Also ``parameter_groups`` (no weight decay on norms, biases,
embeddings and other vectors; arXiv:1711.05101).
Imports the model and losses and this package's ``distributed``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmbm.data.datasets import ImageTextBatch, SpeechBatch
from mmbm.model.losses import caption_loss, contrastive_loss, ctc_loss
from mmbm.model.model import MMBM
from mmbm.training.distributed import Distributed, gather_with_grad

NO_DECAY_NAMES = ("position", "modality", "logit_scale")  # learned vectors and tables that are not weights


class MultiTaskModule(nn.Module):
    """Wraps MMBM so that one forward call runs the tasks of one micro-step and returns their losses."""

    def __init__(self, model: MMBM, label_smoothing: float, dist_state: Distributed) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.dist_state = dist_state

    def forward(self, tasks: tuple[str, ...], image_text: ImageTextBatch | None,
                speech: SpeechBatch | None) -> dict[str, Tensor]:
        """Losses (0-d float32) of ``tasks``, keyed "caption", "retrieval", "speech"."""
        losses: dict[str, Tensor] = {}
        if "caption" in tasks and "retrieval" in tasks:
            assert image_text is not None
            # one pass: caption logits and both embeddings
            out = self.model(image_text.pixels, image_text.ids, image_text.caption_ids)
            losses["caption"] = self._caption(out.caption_logits, image_text.caption_ids)
            losses["retrieval"] = self._contrastive(out.image_embeds, out.text_embeds, out.logit_scale)
        elif "caption" in tasks:
            assert image_text is not None
            losses["caption"] = self._caption(self.model.caption_logits(image_text.pixels, image_text.caption_ids),
                                              image_text.caption_ids)
        elif "retrieval" in tasks:
            assert image_text is not None
            losses["retrieval"] = self._contrastive(self.model.encode_image(image_text.pixels),
                                                    self.model.encode_text(image_text.ids),
                                                    self.model.retrieval.scale())
        if "speech" in tasks:
            assert speech is not None
            out = self.model.ctc_logits(speech.features, speech.feature_lengths)
            # Each process holds B / world clips, so the mean of its per-clip losses, averaged by DDP, is the
            # global mean.
            losses["speech"] = ctc_loss(out.log_probs, out.lengths, speech.targets, speech.target_lengths,
                                        self.model.config.blank_id)
        return losses

    def _caption(self, logits: Tensor, ids: Tensor) -> Tensor:
        """Token-mean cross-entropy over the global batch.

        Each process averages over its own tokens; since processes hold different
        token counts, its loss is reweighted by ``local / global * world`` so that
        DDP's mean over processes is the mean over every token of the global batch.
        """
        loss = caption_loss(logits, ids, self.model.config.pad_id, self.label_smoothing)
        if not self.dist_state.enabled:
            return loss
        n_local = (ids[:, 1:] != self.model.config.pad_id).sum().float()
        n_global = self.dist_state.total(n_local)
        return loss * (n_local * self.dist_state.world_size / n_global)

    def _contrastive(self, image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
        """InfoNCE over the global batch; every process computes the same value.

        The gather's backward sums each process's gradient into every piece, and
        DDP then divides by the world size: the result is the one-process gradient.
        """
        image_all = gather_with_grad(image_embeds, self.dist_state)  # (B_global, E)
        text_all = gather_with_grad(text_embeds, self.dist_state)  # (B_global, E)
        return contrastive_loss(image_all, text_all, logit_scale)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices and convolution kernels only.

    Left undecayed: biases and LayerNorm gains (1-d), token embeddings (tied to
    the caption output), position tables, modality vectors and the logit scale.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        leaf = name.rsplit(".", 1)[-1]
        if parameter.ndim < 2 or id(parameter) in embeddings or leaf in NO_DECAY_NAMES:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
