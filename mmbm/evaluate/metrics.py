"""Quality metrics: speech error rates, caption n-gram scores, retrieval recall and precision.

Owns the arithmetic behind every figure ``mmbm.evaluate`` reports, each checked
against hand-computed examples in tests/test_metrics.py. Speech uses ``jiwer``;
BLEU-4 and CIDEr use ``pycocoevalcap`` (captions are already normalised, so its
Java tokenizer is not needed). Imports no model code; works on plain arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from mmbm.errors import MMBMError


@dataclass(frozen=True)
class ErrorRates:
    """Word and character error rates over a set of utterances (0 = perfect; can exceed 1)."""

    wer: float
    cer: float
    n_utterances: int
    n_words: int  # reference words
    word_accuracy: float  # fraction of reference words recognised: hits / reference words


@dataclass(frozen=True)
class CaptionScores:
    bleu4: float
    cider: float
    n_images: int


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
    """WER and CER of ``hypotheses`` against ``references`` (corpus level, jiwer)."""
    if len(references) != len(hypotheses):
        raise MMBMError(f"error_rates: {len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise MMBMError("error_rates: no utterances to score")
    if any(not r.strip() for r in references):
        raise MMBMError("error_rates: a reference transcript is empty; every reference needs at least one word")
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    n_words = words.hits + words.substitutions + words.deletions
    return ErrorRates(
        wer=float(words.wer),
        cer=float(chars.cer),
        n_utterances=len(references),
        n_words=n_words,
        word_accuracy=words.hits / n_words,
    )


def caption_scores(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> CaptionScores:
    """Corpus BLEU-4 and CIDEr-D-style CIDEr (pycocoevalcap) of one hypothesis per image."""
    if set(references) != set(hypotheses):
        raise MMBMError("caption_scores: references and hypotheses must cover the same image ids")
    if not references:
        raise MMBMError("caption_scores: no images to score")
    gts = {key: [r for r in refs] for key, refs in references.items()}
    res = {key: [hypotheses[key] if hypotheses[key].strip() else "<empty>"] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return CaptionScores(bleu4=float(bleu[3]), cider=float(cider), n_images=len(references))


def top_k(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of the k most similar items per query row of ``similarity`` (Q, N)."""
    k = min(k, similarity.shape[1])
    return similarity.topk(k, dim=1).indices


def recall_at_k(similarity: torch.Tensor, positives: Sequence[set[int]], ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with at least one positive among their top k, for each k.

    similarity: (Q, N) query-by-item scores; positives[q]: the item ids that count as hits.
    """
    if similarity.shape[0] != len(positives):
        raise MMBMError(f"recall_at_k: {similarity.shape[0]} queries but {len(positives)} positive sets")
    ranked = top_k(similarity, max(ks)).tolist()
    result = {}
    for k in ks:
        hits = sum(1 for row, pos in zip(ranked, positives, strict=True) if pos.intersection(row[:k]))
        result[k] = hits / len(positives)
    return result


def semantic_precision_at_k(ranked: np.ndarray | torch.Tensor, relevant: np.ndarray, k: int) -> float:
    """Mean fraction of each query's top ``k`` items that satisfy the query.

    ranked: (Q, >=k) item indices best first; relevant: (Q, N) boolean, True where
    item n satisfies query q (for ShapesWorld: the truth checker says so).
    """
    ranked = np.asarray(ranked)[:, :k]
    if ranked.shape[1] < k:
        raise MMBMError(f"semantic_precision_at_k: only {ranked.shape[1]} ranked items for k={k}")
    hits = np.take_along_axis(np.asarray(relevant, dtype=bool), ranked, axis=1)
    return float(hits.mean())
