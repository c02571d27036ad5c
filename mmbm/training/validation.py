"""Per-task validation during training: caption loss and token accuracy, retrieval R@1, CTC greedy CER.

Owns ``validate`` and ``ValidationResult``. Every metric is computed on the
fixed validation sets (no augmentation, captions drawn once from the seed):
captions by teacher forcing (cross-entropy without label smoothing, and the
share of next tokens predicted right), retrieval as Recall@1 in both directions
over the validation images and one caption each (mmbm.evaluate.metrics.recall_at_k), and
speech as the character and word error rates of greedy CTC decoding
(mmbm.decode.ctc.ctc_greedy; rates from mmbm.evaluate.metrics).
``score`` turns the early-stopping metric into "higher is better". The full
evaluation of a finished model is mmbm.evaluate's job. Imports the model,
losses, metrics and this package's data helpers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mmbm.data.datasets import CaptionDataset, SpeechDataset
from mmbm.decode.ctc import ctc_greedy
from mmbm.evaluate.metrics import error_rates, recall_at_k
from mmbm.model.model import MMBM
from mmbm.tokenizer import Tokenizer
from mmbm.training.data import batched
from mmbm.training.train_config import StopMetric


@dataclass(frozen=True)
class ValidationResult:
    caption_loss: float  # mean next-token cross-entropy (nats), no label smoothing
    caption_accuracy: float  # share of next tokens whose argmax is right
    retrieval_r1: float  # mean of text->image and image->text Recall@1
    retrieval_r1_text_to_image: float
    retrieval_r1_image_to_text: float
    speech_cer: float
    speech_wer: float
    n_images: int
    n_clips: int
    seconds: float

    def score(self, metric: StopMetric) -> float:
        """The early-stopping metric, oriented so that higher is better."""
        if metric == "caption_loss":
            return -self.caption_loss
        if metric == "caption_accuracy":
            return self.caption_accuracy
        if metric == "retrieval_r1":
            return self.retrieval_r1
        if metric == "speech_cer":
            return -self.speech_cer
        return (self.caption_accuracy + self.retrieval_r1 + max(0.0, 1.0 - self.speech_cer)) / 3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def _image_text_metrics(model: MMBM, dataset: CaptionDataset, batch_size: int, device: torch.device,
                        autocast: Callable[[], AbstractContextManager[object]]) -> dict[str, float]:
    pad_id = model.config.pad_id
    loss_sum, n_tokens, n_right = 0.0, 0, 0
    image_embeds, text_embeds = [], []
    for indices in batched(range(len(dataset)), batch_size):
        batch = dataset.collate([dataset[i] for i in indices]).to(device)
        with autocast():
            out = model(batch.pixels, batch.ids, batch.caption_ids)
        logits, targets = out.caption_logits[:, :-1].float(), batch.caption_ids[:, 1:]  # (B, L-1, V), (B, L-1)
        real = targets != pad_id
        loss_sum += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id, reduction="sum"))
        n_right += int(((logits.argmax(dim=-1) == targets) & real).sum())
        n_tokens += int(real.sum())
        image_embeds.append(out.image_embeds.float())
        text_embeds.append(out.text_embeds.float())
    similarity = torch.cat(text_embeds) @ torch.cat(image_embeds).T  # (N texts, N images)
    own = [{i} for i in range(similarity.shape[0])]
    text_to_image = recall_at_k(similarity, own, [1])[1]
    image_to_text = recall_at_k(similarity.T, own, [1])[1]
    return {"caption_loss": loss_sum / n_tokens, "caption_accuracy": n_right / n_tokens,
            "retrieval_r1": (text_to_image + image_to_text) / 2, "retrieval_r1_text_to_image": text_to_image,
            "retrieval_r1_image_to_text": image_to_text}


@torch.no_grad()
def _speech_metrics(model: MMBM, dataset: SpeechDataset, tokenizer: Tokenizer, batch_size: int,
                    device: torch.device, autocast: Callable[[], AbstractContextManager[object]]) -> dict[str, float]:
    references, hypotheses = [], []
    for indices in batched(range(len(dataset)), batch_size):
        batch = dataset.collate([dataset[i] for i in indices]).to(device)
        with autocast():
            out = model.ctc_logits(batch.features, batch.feature_lengths)
        for row, index in enumerate(indices):
            ids = ctc_greedy(out.log_probs[row, : int(out.lengths[row])], model.config.blank_id)
            hypotheses.append(tokenizer.decode(ids))
            references.append(dataset.records[index].text)
    rates = error_rates(references, hypotheses)
    return {"speech_cer": rates.cer, "speech_wer": rates.wer}


def validate(model: MMBM, image_text: CaptionDataset, speech: SpeechDataset, tokenizer: Tokenizer, *,
             batch_size: int, device: torch.device, autocast: Callable[[], AbstractContextManager[object]]) -> ValidationResult:
    """All three tasks on the validation sets, in eval mode (the model's mode is restored after)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        image_text.set_epoch(0)  # the same caption per image at every validation
        values = _image_text_metrics(model, image_text, batch_size, device, autocast)
        values |= _speech_metrics(model, speech, tokenizer, batch_size, device, autocast)
    finally:
        model.train(was_training)
    return ValidationResult(**values, n_images=len(image_text), n_clips=len(speech),
                            seconds=time.perf_counter() - start)
