"""Measure a trained MMBM and write metrics.json and metrics.md beside it.

``python -m mmbm.evaluate MODEL_DIR --images data/shapes --speech data/speech
[--real-speech PATH/manifest.jsonl ...] [--out DIR] [--limit N]`` measures:
- captions: truth-checker faithful / complete / unparseable rates and BLEU-4 / CIDEr
  (pycocoevalcap) against the reference captions, on the test and compositional splits;
- retrieval on a test gallery (first ``--gallery-size`` test images): Recall@1/5/10
  text->image (each caption queries, its image is the positive) and image->text (its
  captions are the positives), and semantic precision@1/@10 of text->image (a hit is
  an image whose scene makes the query caption faithful);
- speech: WER / CER / word accuracy (jiwer) on seen voices (test.jsonl), the held-out
  voice (heldout.jsonl), a copy of it with white noise at 10 dB SNR (seeded per clip,
  so every run hears the same noise) and each real-speech manifest (per speaker too),
  for each decoding method asked for; the lexicon comes from the speech training
  transcripts, never from test data;
- timing on this machine: median caption latency and transcription real-time factor.
metrics.json opens with a ``provenance`` block (command line, data folders with the
sha256 of their corpus.json or manifest, model identity, date, hardware) that every
number below it shares. Everything goes through ``mmbm.pipeline`` and
``mmbm.metrics``; imports no training or UI code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmbm.ctc import CTCDecodingOptions, Lexicon
from mmbm.data.adapters import AudioTextRecord, load_audio_manifest
from mmbm.data.augment import add_noise
from mmbm.data.captions import check, judge, parse
from mmbm.data.corpus import ImageRecord, load_image_manifest
from mmbm.data.scene import Scene
from mmbm.decoding import DecodingOptions
from mmbm.errors import AudioError, ConfigError, DataError, MMBMError
from mmbm.files import write_text_atomic
from mmbm.metrics import ErrorRates, caption_scores, error_rates, recall_at_k, semantic_precision_at_k, top_k
from mmbm.pipeline import Pipeline

logger = logging.getLogger(__name__)

METRICS_FORMAT = "mmbm-metrics/1"
SECTIONS: tuple[str, ...] = ("captions", "retrieval", "speech", "timing")
CAPTION_SPLITS: tuple[str, ...] = ("test", "compositional")
SPEECH_METHODS: tuple[str, ...] = ("greedy", "beam", "beam+lexicon")
RECALL_KS: tuple[int, ...] = (1, 5, 10)
PRECISION_KS: tuple[int, ...] = (1, 10)
CAPTION_CHUNK = 64  # images per progress-bar step (and per decoder batch)
TIMING_ITEMS = 5  # distinct images / clips cycled through by the timing loop


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation run; each field is a CLI flag. Invalid values raise ConfigError naming the field."""

    model_dir: Path
    images: Path | None = Path("data/shapes")
    speech: Path | None = Path("data/speech")
    real_speech: tuple[Path, ...] = ()
    out: Path | None = None  # None: write into model_dir
    limit: int | None = None  # at most this many images per split / clips per set
    gallery_size: int = 1_000
    caption_method: str = "greedy"  # "greedy" or "beam"
    beam_size: int = 4  # caption beam search
    speech_methods: tuple[str, ...] = ("greedy", "beam+lexicon")
    speech_beam_size: int = 8
    noise_snr_db: float = 10.0
    noise_seed: int = 0
    timing_repeats: int = 20
    sections: tuple[str, ...] = SECTIONS
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None keeps torch's default (one per core)
    progress: bool = True

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {message}")

        require(self.limit is None or self.limit >= 1, "limit", f"must be at least 1, got {self.limit}")
        require(self.gallery_size >= 1, "gallery_size", f"must be at least 1, got {self.gallery_size}")
        require(
            self.caption_method in ("greedy", "beam"),
            "caption_method",
            f"must be greedy or beam, got {self.caption_method!r}",
        )
        unknown = [m for m in self.speech_methods if m not in SPEECH_METHODS]
        require(
            bool(self.speech_methods) and not unknown,
            "speech_methods",
            f"choose from {SPEECH_METHODS}, got {self.speech_methods}",
        )
        require(self.threads is None or self.threads >= 1, "threads", f"must be at least 1, got {self.threads}")
        require(self.timing_repeats >= 1, "timing_repeats", f"must be at least 1, got {self.timing_repeats}")
        bad = [s for s in self.sections if s not in SECTIONS]
        require(bool(self.sections) and not bad, "sections", f"choose from {SECTIONS}, got {self.sections}")
        needs_images = {"captions", "retrieval"} & set(self.sections)
        require(self.images is not None or not needs_images, "images", f"sections {sorted(needs_images)} need --images")
        require(
            self.speech is not None or "beam+lexicon" not in self.speech_methods or "speech" not in self.sections,
            "speech_methods",
            "beam+lexicon takes its lexicon from --speech train.jsonl; give --speech or drop the method",
        )


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


def _decoder(method: str, beam_size: int, lexicon: Lexicon | None) -> tuple[CTCDecodingOptions, Lexicon | None]:
    if method == "greedy":
        return CTCDecodingOptions(method="greedy"), None
    return CTCDecodingOptions(method="beam", beam_size=beam_size), lexicon if method == "beam+lexicon" else None


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


# ----- the run -----------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def hardware_description(device: torch.device) -> str:
    """CPU model, core count and torch threads (plus the GPU when one is used), e.g. for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, device {device}"


def _corpus_stamp(folder: Path) -> dict[str, str]:
    marker = folder / "corpus.json"
    if not marker.is_file():
        raise DataError(f"{str(folder)!r} is not a complete corpus: corpus.json is missing")
    return {"dir": str(folder), "corpus_json": sha256_file(marker)}


def _limited(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def _speech_sets(config: EvaluateConfig) -> list[tuple[str, Path, tuple[float, int] | None, bool]]:
    """(name, manifest, noise, per_speaker) for every speech set of the run."""
    sets: list[tuple[str, Path, tuple[float, int] | None, bool]] = []
    if config.speech is not None:
        heldout, noise = config.speech / "heldout.jsonl", (config.noise_snr_db, config.noise_seed)
        sets += [("seen", config.speech / "test.jsonl", None, False), ("heldout", heldout, None, False)]
        sets.append((f"heldout_noisy_{config.noise_snr_db:g}db", heldout, noise, False))
    for path in config.real_speech:
        name = path.parent.name or path.stem
        sets.append((name if name not in [s[0] for s in sets] else f"{name}_{len(sets)}", path, None, True))
    return sets


def _speech_section(pipeline: Pipeline, config: EvaluateConfig) -> dict[str, Any]:
    lexicon, lexicon_info = None, None
    if "beam+lexicon" in config.speech_methods and config.speech is not None:
        train = config.speech / "train.jsonl"
        lexicon = Lexicon.from_texts((r.text for r in load_audio_manifest(train, missing="skip")), pipeline.tokenizer)
        lexicon_info = {"source": str(train), "n_words": lexicon.n_words}
    sets: dict[str, Any] = {}
    for name, manifest, noise, per_speaker in _speech_sets(config):
        records = _limited(load_audio_manifest(manifest, missing="error"), config.limit)
        methods = {}
        for method in config.speech_methods:
            options, method_lexicon = _decoder(method, config.speech_beam_size, lexicon)
            label = f"{name} {method}"
            result = evaluate_speech(
                pipeline, records, options, method_lexicon, noise, config.progress, label, per_speaker
            )
            methods[method] = dataclasses.asdict(result)
        sets[name] = {"manifest": str(manifest), "n_clips": len(records), "methods": methods}
    noise_info = (
        None if config.speech is None else {"snr_db": config.noise_snr_db, "color": "white", "seed": config.noise_seed}
    )
    return {"lexicon": lexicon_info, "noise": noise_info, "beam_size": config.speech_beam_size, "sets": sets}


def _image_sections(pipeline: Pipeline, config: EvaluateConfig, metrics: dict[str, Any]) -> list[Path]:
    """Fill "captions" and "retrieval"; returns test image paths for the timing loop."""
    assert config.images is not None
    test = _limited(load_image_manifest(config.images, "test"), config.limit)
    if "captions" in config.sections:
        options = DecodingOptions(method=config.caption_method, beam_size=config.beam_size)  # type: ignore[arg-type]
        scored = {}
        for split in CAPTION_SPLITS:
            records = test if split == "test" else _limited(load_image_manifest(config.images, split), config.limit)
            if records:
                scored[split] = dataclasses.asdict(
                    evaluate_captions(pipeline, records, options, config.progress, split)
                )
        metrics["captions"] = {"decoding": dataclasses.asdict(options), "splits": scored}
    if "retrieval" in config.sections and test:
        gallery = test[: config.gallery_size]
        result = evaluate_retrieval(pipeline, gallery, config.progress)
        metrics["retrieval"] = {"gallery": f"the first {len(gallery)} test images", **dataclasses.asdict(result)}
    return [record.image for record in test[:TIMING_ITEMS]]


def run_evaluation(config: EvaluateConfig, command: str) -> dict[str, Any]:
    """Every section asked for, as the dict written to metrics.json."""
    start = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)  # process-wide: a run is meant to own its process (the CLI)
    pipeline = Pipeline.load(config.model_dir, device=config.device)
    data = {
        "images": _corpus_stamp(config.images) if config.images is not None else None,
        "speech": _corpus_stamp(config.speech) if config.speech is not None else None,
        "real_speech": [{"manifest": str(path), "sha256": sha256_file(path)} for path in config.real_speech],
    }
    metrics: dict[str, Any] = {"format": METRICS_FORMAT, "provenance": {}}
    timing_images: list[Path] = []
    if config.images is not None and {"captions", "retrieval", "timing"} & set(config.sections):
        timing_images = _image_sections(pipeline, config, metrics)
    if "speech" in config.sections and (config.speech is not None or config.real_speech):
        metrics["speech"] = _speech_section(pipeline, config)
    if "timing" in config.sections:
        clip_sets = [manifest for _, manifest, noise, _ in _speech_sets(config) if noise is None][:1]
        clips = [r.audio_path for m in clip_sets for r in load_audio_manifest(m)[:TIMING_ITEMS]]
        timing = measure_timing(pipeline, timing_images, clips, config.timing_repeats)
        paths = {"images": [str(p) for p in timing_images], "clips": [str(p) for p in clips]}
        metrics["timing"] = {**dataclasses.asdict(timing), **paths}
    metrics["provenance"] = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware_description(pipeline.device),
        "model": {"dir": str(config.model_dir), "identity": pipeline.identity},
        "data": data,
        "limit": config.limit,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return metrics


def write_metrics(metrics: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write metrics.json and metrics.md into ``out_dir`` atomically (temporary file, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("metrics.json", json.dumps(metrics, indent=2) + "\n"), ("metrics.md", format_report(metrics))):
        write_text_atomic(out_dir / name, text)
        written.append(out_dir / name)
    return written[0], written[1]


# ----- the report --------------------------------------------------------------------


def _number(value: float | None, percent: bool = False, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _speech_rows(speech: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, entry in speech["sets"].items():
        for method, m in entry["methods"].items():
            refused = f" ({m['n_refused']} refused)" if m["n_refused"] else ""
            groups = [(name, m["rates"], refused)] + [(f"{name} / {s}", r, "") for s, r in m["per_speaker"].items()]
            for label, r, note in groups:
                cells = [_number(r["wer"], True), _number(r["cer"], True), _number(r["word_accuracy"], True)]
                rows.append([label, method, f"{r['n_utterances']}{note}", *cells])
    return rows


def _data_line(data: dict[str, Any]) -> str:
    parts = [
        f"{kind} {d['dir']} (corpus.json {d['corpus_json'][:19]})" for kind in ("images", "speech") if (d := data[kind])
    ]
    parts += [f"real speech {d['manifest']} ({d['sha256'][:19]})" for d in data["real_speech"]]
    return "data: " + ", ".join(parts)


def format_report(metrics: dict[str, Any]) -> str:
    """The markdown tables of a metrics.json dict (what ``make eval`` prints and metrics.md holds)."""
    p = metrics["provenance"]
    lines = [
        "# MMBM evaluation",
        "",
        f"`{p['command']}`, {p['date']}, {p['seconds']} s on {p['hardware']}.",
        f"Model {p['model']['dir']} ({p['model']['identity'][:19]}); {_data_line(p['data'])}.",
    ]
    if "captions" in metrics:
        c = metrics["captions"]
        lines += ["", f"## Captions ({c['decoding']['method']} decoding)", ""]
        rows = [
            [
                split,
                str(m["n_images"]),
                *(_number(m[key]) for key in ("faithful", "complete", "unparseable", "bleu4", "cider")),
            ]
            for split, m in c["splits"].items()
        ]
        lines += _table(["split", "images", "faithful", "complete", "unparseable", "BLEU-4", "CIDEr"], rows)
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        lines += ["", f"## Retrieval ({r['gallery']}, {r['n_text_queries']} caption queries)", ""]
        rows = [
            [label, *(_number(r[key][f"recall@{k}"]) for k in RECALL_KS)]
            for label, key in (("text → image", "text_to_image"), ("image → text", "image_to_text"))
        ]
        lines += _table(["direction", *(f"R@{k}" for k in RECALL_KS)], rows)
        precision = ", ".join(f"{k.replace('precision', 'P')} {_number(v)}" for k, v in r["semantic_precision"].items())
        lines += ["", f"Semantic precision, text → image: {precision}."]
    if "speech" in metrics:
        s = metrics["speech"]
        noise = s["noise"]
        heading = f"noisy copy: {noise['color']} noise at {noise['snr_db']:g} dB SNR, seed {noise['seed']}"
        lines += ["", f"## Speech ({heading})" if noise else "## Speech", ""]
        lines += _table(["set", "decoding", "clips", "WER", "CER", "word accuracy"], _speech_rows(s))
    if "timing" in metrics:
        t = metrics["timing"]
        lines += ["", f"## Timing (median and p90 of {t['repeats']} runs)", ""]
        latency, rtf = t["caption_latency_ms"], t["transcription_rtf"]
        row = [
            _number(latency["median"], digits=1),
            _number(latency["p90"], digits=1),
            _number(rtf["median"]),
            _number(rtf["p90"]),
        ]
        lines += _table(["caption ms (median)", "caption ms (p90)", "transcription RTF (median)", "RTF (p90)"], [row])
    return "\n".join(lines) + "\n"


# ----- command line ------------------------------------------------------------------


def _optional_path(text: str) -> Path | None:
    return None if text.lower() == "none" else Path(text)


def build_parser() -> argparse.ArgumentParser:
    """Flags named after ``EvaluateConfig`` fields (``--gallery-size`` -> ``gallery_size``)."""
    parser = argparse.ArgumentParser(prog="python -m mmbm.evaluate", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("model_dir", type=Path, help="checkpoint folder (config.json, model.safetensors, tokenizer.json)")
    add("--images", type=_optional_path, default=Path("data/shapes"), help="image corpus, or 'none'")
    add("--speech", type=_optional_path, default=Path("data/speech"), help="speech corpus, or 'none'")
    add("--real-speech", type=Path, nargs="*", default=[], help="JSONL manifests of real recordings")
    add("--out", type=Path, default=None, help="folder for metrics.json and metrics.md (default: MODEL_DIR)")
    add("--limit", type=int, default=None, help="at most N images per split and N clips per speech set")
    add("--gallery-size", type=int, default=1_000)
    add("--caption-method", choices=("greedy", "beam"), default="greedy")
    add("--beam-size", type=int, default=4, help="caption beam size")
    add("--speech-method", dest="speech_methods", nargs="+", choices=SPEECH_METHODS, default=["greedy", "beam+lexicon"])
    add("--speech-beam-size", type=int, default=8)
    add("--noise-snr-db", type=float, default=10.0)
    add("--noise-seed", type=int, default=0)
    add("--timing-repeats", type=int, default=20)
    add("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    add("--threads", type=int, default=None, help="torch CPU threads (on a busy machine 1 can be much faster)")
    add("--no-progress", dest="progress", action="store_false")
    add("--show", action="store_true", help="print the tables of an existing metrics.json and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with a one-line message for refused input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out_dir = values["out"] if values["out"] is not None else values["model_dir"]
    try:
        if values.pop("show"):
            path = out_dir / "metrics.json"
            if not path.is_file():
                raise DataError(f"no metrics.json at {path}; run the evaluation first")
            metrics = json.loads(path.read_text(encoding="utf-8"))
        else:
            config = EvaluateConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
            metrics = run_evaluation(config, "python -m mmbm.evaluate " + " ".join(argv))
            write_metrics(metrics, out_dir)
            logger.info("wrote metrics.json and metrics.md to %s", out_dir)
    except MMBMError as e:
        print(f"mmbm.evaluate: {e}", file=sys.stderr)
        return 2
    print(format_report(metrics), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
