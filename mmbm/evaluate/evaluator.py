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
  for each decoding method asked for; beam+lexicon spells only the words ShapesWorld
  says (``mmbm.pipeline.shapes_lexicon``, the demo's lexicon), never test data;
- timing on this machine: median caption latency and transcription real-time factor.
metrics.json opens with a ``provenance`` block (command line, data folders with the
sha256 of their corpus.json or manifest, model identity, date, hardware) that every
number below it shares. This module owns the run (which sets, which decoders,
provenance, the files); the scoring of each task is ``mmbm.evaluate.measure`` over
``mmbm.pipeline`` and ``mmbm.evaluate.metrics``. Imports no training or UI code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmbm.data.adapters import load_audio_manifest
from mmbm.decode.captions import DecodingOptions
from mmbm.decode.ctc import CTCDecodingOptions, Lexicon
from mmbm.device import hardware_description
from mmbm.errors import ConfigError, DataError, MMBMError
from mmbm.evaluate.measure import RECALL_KS, evaluate_captions, evaluate_retrieval, evaluate_speech, measure_timing
from mmbm.files import sha256_file, write_text_atomic
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.corpus import load_image_manifest

logger = logging.getLogger(__name__)

METRICS_FORMAT = "mmbm-metrics/1"
SECTIONS: tuple[str, ...] = ("captions", "retrieval", "speech", "timing")
CAPTION_SPLITS: tuple[str, ...] = ("test", "compositional")
SPEECH_METHODS: tuple[str, ...] = ("greedy", "beam", "beam+lexicon")
TIMING_ITEMS = 5  # distinct images / clips cycled through by the timing loop
LEXICON_SOURCE = "ShapesWorld caption vocabulary and number words (mmbm.pipeline.shapes_lexicon)"


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


def _decoder(method: str, beam_size: int, lexicon: Lexicon | None) -> tuple[CTCDecodingOptions, Lexicon | None]:
    if method == "greedy":
        return CTCDecodingOptions(method="greedy"), None
    return CTCDecodingOptions(method="beam", beam_size=beam_size), lexicon if method == "beam+lexicon" else None


# ----- the run -----------------------------------------------------------------------


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
    if "beam+lexicon" in config.speech_methods:
        lexicon = pipeline.lexicon
        lexicon_info = {"source": LEXICON_SOURCE, "n_words": lexicon.n_words}
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
