"""Score a pipeline on one task's records, and time it.

Captions: the truth checker's faithful / complete / unparseable rates and BLEU-4 /
CIDEr against the references. Retrieval: Recall@k both ways and semantic
precision@k (a hit is an image whose scene makes the query faithful). Speech:
corpus and per-speaker WER / CER of transcripts, optionally under seeded white
noise. Timing: caption latency and transcription real-time factor. Each
``evaluate_*`` runs the pipeline and hands its outputs to the pure scoring
function beside it (``caption_truth``, ``retrieval_metrics``, ``speech_metrics``),
which bench/ reuses on other systems' outputs. Used by mmbm.evaluate.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmbm.data.adapters import AudioTextRecord
from mmbm.data.augment import add_noise
from mmbm.decode.captions import DecodingOptions
from mmbm.decode.ctc import CTCDecodingOptions, Lexicon
from mmbm.errors import AudioError, DataError
from mmbm.evaluate.metrics import ErrorRates, caption_scores, error_rates, recall_at_k, semantic_precision_at_k, top_k
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import check, judge, parse
from mmbm.shapesworld.corpus import ImageRecord
from mmbm.shapesworld.scene import Scene

logger = logging.getLogger(__name__)

RECALL_KS: tuple[int, ...] = (1, 5, 10)
PRECISION_KS: tuple[int, ...] = (1, 10)
CAPTION_CHUNK = 64  # images per progress-bar step (and per decoder batch)


@dataclass(frozen=True)
class CaptionMetrics:
    n_images: int
    faithful: float  # fraction of generated captions the truth checker calls faithful
    complete: float  # fraction that name every object
    unparseable: float  # fraction the parser rejects (counted as neither faithful nor complete)
    bleu4: float
    cider: float


@dataclass(frozen=True)
class RetrievalMetrics:
    gallery_size: int
    n_text_queries: int
    text_to_image: dict[str, float]  # "recall@k"
    image_to_text: dict[str, float]  # "recall@k"
    semantic_precision: dict[str, float | None]  # text->image "precision@k"; None when the gallery is smaller than k


@dataclass(frozen=True)
class SpeechMetrics:
    rates: ErrorRates
    n_refused: int  # clips load_audio or the silence check refused; scored as empty transcripts
    per_speaker: dict[str, ErrorRates]


@dataclass(frozen=True)
class TimingMetrics:
    caption_latency_ms: dict[str, float | None]  # "median", "p90" of a greedy caption of an image file
    transcription_rtf: dict[str, float | None]  # "median", "p90" of greedy transcription of a clip file
    repeats: int


# ----- captions ----------------------------------------------------------------------


def caption_truth(records: Sequence[ImageRecord], captions: Sequence[str]) -> CaptionMetrics:
    """Judge one generated caption per record against its scene and score it against its references."""
    if len(records) != len(captions) or not records:
        raise DataError(f"caption_truth: need one caption per record, got {len(captions)} for {len(records)}")
    verdicts = [judge(caption, record.scene) for record, caption in zip(records, captions, strict=True)]
    scores = caption_scores(
        {r.id: list(r.captions) for r in records}, {r.id: c for r, c in zip(records, captions, strict=True)}
    )
    n = len(records)
    return CaptionMetrics(
        n_images=n,
        faithful=sum(v.faithful for v in verdicts) / n,
        complete=sum(v.complete for v in verdicts) / n,
        unparseable=sum(not v.parsed for v in verdicts) / n,
        bleu4=scores.bleu4,
        cider=scores.cider,
    )


def evaluate_captions(
    pipeline: Pipeline, records: Sequence[ImageRecord], options: DecodingOptions, progress: bool, label: str
) -> CaptionMetrics:
    captions: list[str] = []
    with tqdm(total=len(records), desc=f"captions {label}", unit="image", disable=not progress) as bar:
        for start in range(0, len(records), CAPTION_CHUNK):
            chunk = records[start : start + CAPTION_CHUNK]
            results = pipeline.caption_images([r.image for r in chunk], options)
            captions.extend(result.captions[0].text for result in results)
            bar.update(len(chunk))
    return caption_truth(records, captions)


# ----- retrieval ---------------------------------------------------------------------


def _named(prefix: str, by_k: dict[int, float]) -> dict[str, float]:
    return {f"{prefix}@{k}": value for k, value in by_k.items()}


def retrieval_metrics(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    query_image: Sequence[int],
    queries: Sequence[str],
    scenes: Sequence[Scene],
) -> RetrievalMetrics:
    """Recall@k both ways and semantic precision@k from (Q, D) caption and (G, D) image embeddings.

    ``query_image[q]`` is the gallery index of the image caption q was written for.
    Semantic relevance is judged only where it is read: for each query's top
    ``max(PRECISION_KS)`` images (Q x G truth checks would take minutes).
    """
    similarity = (
        torch.from_numpy(np.asarray(text_vectors, np.float32))
        @ torch.from_numpy(np.asarray(image_vectors, np.float32)).T
    )  # (Q, G)
    n_queries, n_images = similarity.shape
    text_to_image = _named("recall", recall_at_k(similarity, [{g} for g in query_image], RECALL_KS))
    captions_of: list[set[int]] = [set() for _ in range(n_images)]
    for q, g in enumerate(query_image):
        captions_of[g].add(q)
    image_to_text = _named("recall", recall_at_k(similarity.T, captions_of, RECALL_KS))
    ranked = top_k(similarity, max(PRECISION_KS)).numpy()  # (Q, min(10, G))
    relevant = np.zeros((n_queries, n_images), dtype=bool)  # only the ranked entries are filled and read
    for q, query in enumerate(queries):
        constraints = parse(query).constraints
        if constraints is not None:
            for g in ranked[q]:
                relevant[q, g] = check(constraints, scenes[g]).faithful
    precision = {
        f"precision@{k}": semantic_precision_at_k(ranked, relevant, k) if k <= n_images else None for k in PRECISION_KS
    }
    return RetrievalMetrics(n_images, n_queries, text_to_image, image_to_text, precision)


def evaluate_retrieval(pipeline: Pipeline, gallery: Sequence[ImageRecord], progress: bool) -> RetrievalMetrics:
    queries = [caption for record in gallery for caption in record.captions]
    query_image = [g for g, record in enumerate(gallery) for _ in record.captions]
    image_vectors, text_vectors = [], []
    with tqdm(total=len(gallery), desc="retrieval embed", unit="image", disable=not progress) as bar:
        for start in range(0, len(gallery), CAPTION_CHUNK):
            chunk = gallery[start : start + CAPTION_CHUNK]
            images = [pipeline.load_image(record.image) for record in chunk]
            image_vectors.append(pipeline.embedder.embed_images(images))
            text_vectors.append(pipeline.embedder.embed_text([c for record in chunk for c in record.captions]))
            bar.update(len(chunk))
    scenes = [record.scene for record in gallery]
    return retrieval_metrics(np.concatenate(text_vectors), np.concatenate(image_vectors), query_image, queries, scenes)


# ----- speech ------------------------------------------------------------------------


def speech_metrics(
    references: Sequence[str], hypotheses: Sequence[str], speakers: Sequence[str | None], n_refused: int = 0
) -> SpeechMetrics:
    """Corpus error rates and, for records that name a speaker, the same per speaker."""
    groups: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        if speaker is not None:
            groups.setdefault(speaker, []).append(i)
    per_speaker = {
        name: error_rates([references[i] for i in rows], [hypotheses[i] for i in rows])
        for name, rows in sorted(groups.items())
    }
    return SpeechMetrics(error_rates(references, hypotheses), n_refused, per_speaker)


def evaluate_speech(
    pipeline: Pipeline,
    records: Sequence[AudioTextRecord],
    options: CTCDecodingOptions,
    lexicon: Lexicon | None,
    noise: tuple[float, int] | None,
    progress: bool,
    label: str,
    per_speaker: bool,
) -> SpeechMetrics:
    """Transcribe every clip (with ``noise`` = (snr_db, seed): white noise, clip i seeded by (seed, i))."""
    hypotheses, n_refused = [], 0
    rate = pipeline.config.audio.sample_rate
    for i, record in enumerate(tqdm(records, desc=f"speech {label}", unit="clip", disable=not progress)):
        try:
            source: Any = record.audio_path
            if noise is not None:
                wave = pipeline.load_audio(record.audio_path)
                source = (rate, add_noise(wave, noise[0], "white", np.random.default_rng([noise[1], i])))
            hypotheses.append(pipeline.transcribe(source, options, lexicon).transcript.text)
        except AudioError as e:
            logger.warning("%s: %s refused: %s", label, record.audio_path, e)
            hypotheses.append("")
            n_refused += 1
    speakers = [r.speaker if per_speaker else None for r in records]
    return speech_metrics([r.text for r in records], hypotheses, speakers, n_refused)


# ----- timing ------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90))}


def measure_timing(pipeline: Pipeline, images: Sequence[Path], clips: Sequence[Path], repeats: int) -> TimingMetrics:
    """Median / p90 caption latency (ms, greedy, from the file) and transcription RTF (greedy), after one warm-up each."""
    latencies, rtfs = [], []
    for path in images[:1]:
        pipeline.caption(path)  # warm-up: first calls pay for allocations
    for r in range(repeats if images else 0):
        start = time.perf_counter()
        pipeline.caption(images[r % len(images)])
        latencies.append((time.perf_counter() - start) * 1000)
    for path in clips[:1]:
        pipeline.transcribe(path)
    for r in range(repeats if clips else 0):
        rtfs.append(pipeline.transcribe(clips[r % len(clips)]).rtf)
    return TimingMetrics(_percentiles(latencies), _percentiles(rtfs), repeats)
