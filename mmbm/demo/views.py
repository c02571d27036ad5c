"""Plain helpers that turn pipeline results into what the demo shows: rows, labels, markdown, heatmaps.

Owns the demo's presentation that needs no web framework: caption and search-hit
table rows, the per-word attention heatmap drawn over the image the model saw,
transcript words with their timings and confidence, index statistics and add
reports as markdown and the About texts (model card, headline table of a
checkpoint's metrics.json, architecture diagram). app.py calls these and hands
the results to Gradio. Imports numpy, Pillow and the result types that
``mmbm.pipeline`` re-exports; nothing else from the package, and never gradio.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmbm.pipeline import AddReport, CaptionResult, IndexStats, SearchHit, Transcript

Rows = list[list[Any]]  # a table's rows, as gr.Dataframe takes them
Pictures = list[tuple[Image.Image, str]]  # (image, label) pairs, as gr.Gallery takes them
HEATMAP_SIZE = 192  # pixels a side: 3x the tiny model's 64-pixel input, large enough to read an 8x8 grid
HEATMAP_OPACITY = 0.65  # how much of the colour replaces the image where attention is highest
# "hot"-style ramp: dark red -> red -> orange -> yellow -> white, at evenly spaced attention levels
HEAT_STOPS = np.array([[80, 0, 0], [200, 30, 0], [255, 120, 0], [255, 220, 40], [255, 255, 230]], dtype=np.float32)
_LEVELS = np.linspace(0.0, 1.0, 256)
HEAT_LUT = np.stack(  # (256, 3): the ramp sampled at 256 levels, so colouring a map is one table lookup
    [np.interp(_LEVELS, np.linspace(0.0, 1.0, len(HEAT_STOPS)), HEAT_STOPS[:, c]) for c in range(3)], axis=-1
).astype(np.float32)
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
_DIAGRAM = re.compile(r"^## Diagram\s*\n+```[^\n]*\n(.*?)\n```", re.DOTALL | re.MULTILINE)


# ----- captions -------------------------------------------------------------------


def caption_rows(result: CaptionResult) -> Rows:
    """[rank, caption, score] per caption, best first; score is the length-normalised log-probability."""
    return [[rank, c.text or "(empty caption)", round(c.score, 3)] for rank, c in enumerate(result.captions, 1)]


def heatmap_overlay(image: Image.Image, weights: np.ndarray, size: int = HEATMAP_SIZE) -> Image.Image:
    """``weights`` (grid, grid), row-major over the image, drawn as a heat colour over ``image`` at size x size.

    The grid is upsampled bilinearly and scaled so its largest cell is full heat,
    so each word's map uses the whole colour range.
    """
    grid = np.asarray(weights, dtype=np.float32)
    if grid.ndim != 2 or not np.all(np.isfinite(grid)):
        raise ValueError(f"attention weights must be a finite 2-D grid, got shape {grid.shape}")
    peak = float(grid.max())
    grid = grid / peak if peak > 0 else np.zeros_like(grid)
    heat = np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    heat = np.clip(heat, 0.0, 1.0)  # (size, size)
    colour = HEAT_LUT[np.rint(heat * 255).astype(np.uint8)]  # (size, size, 3)
    heat = heat[..., None]
    base = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.NEAREST), dtype=np.float32)
    alpha = HEATMAP_OPACITY * heat
    return Image.fromarray(np.clip(base * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8))


def attention_gallery(result: CaptionResult, seen: Image.Image) -> Pictures:
    """One (heatmap, word) pair per word of the best caption; empty when the decoder returned no attention."""
    best = result.captions[0]
    if not best.word_attention:
        return []
    return [(heatmap_overlay(seen, w.weights), w.word) for w in best.word_attention]


# ----- search ---------------------------------------------------------------------


def hit_label(hit: SearchHit) -> str:
    return f"{hit.score:.3f} · {hit.caption or '(no caption)'}"


def hit_rows(hits: Sequence[SearchHit]) -> Rows:
    """[rank, score, caption, id] per hit, best first."""
    return [[rank, round(h.score, 4), h.caption or "", h.id] for rank, h in enumerate(hits, 1)]


def hit_gallery(hits: Sequence[SearchHit]) -> Pictures:
    """(thumbnail, "score · caption") per hit; thumbnails come from the index, so missing originals do not matter."""
    return [(Image.open(io.BytesIO(h.thumbnail)).convert("RGB"), hit_label(h)) for h in hits]


def stats_markdown(stats: IndexStats) -> str:
    kind = stats.kind if stats.kind == stats.active_kind else f"{stats.kind}, searching {stats.active_kind}"
    return (
        f"**{stats.n_images:,} images** in the gallery · {stats.dim}-d vectors · {kind} search · "
        f"{stats.disk_bytes / 1e6:.1f} MB on disk"
    )


def add_report_markdown(report: AddReport) -> str:
    """What an add did, in plain words: how many were added, which were skipped and why, which were already there."""
    n = len(report.added)
    lines = [
        f"Added **{n}** image{'s' if n != 1 else ''}" + (f" (ids {', '.join(map(str, report.added))})." if n else ".")
    ]
    for label, reason in report.skipped:
        lines.append(f"- skipped {_file_name(label)}: {reason}")
    for label, existing in report.duplicates:
        lines.append(f"- {_file_name(label)} is already in the gallery (id {existing})")
    return "\n".join(lines)


def _file_name(label: str) -> str:
    return label.rsplit("/", 1)[-1]


# ----- speech ---------------------------------------------------------------------


def word_highlights(transcript: Transcript) -> list[tuple[str, float | None]]:
    """(word with its time span, confidence) pairs, separated by plain spaces, for a confidence-shaded view."""
    pairs: list[tuple[str, float | None]] = []
    for i, word in enumerate(transcript.words):
        if i:
            pairs.append((" ", None))
        pairs.append((f"{word.word} {word.start_s:.2f}–{word.end_s:.2f} s", round(word.confidence, 2)))
    return pairs


def transcript_summary(duration_s: float, seconds: float, rtf: float, transcript: Transcript) -> str:
    words = len(transcript.words)
    return (
        f"**{duration_s:.2f} s** of audio transcribed in **{seconds * 1000:.0f} ms** "
        f"(real-time factor **{rtf:.3f}**) · {words} word{'s' if words != 1 else ''} · "
        f"mean confidence {transcript.confidence:.2f}"
    )


# ----- about ------------------------------------------------------------------------


def strip_front_matter(markdown: str) -> str:
    """A model card without its YAML header."""
    return _FRONT_MATTER.sub("", markdown, count=1).lstrip()


def diagram_from_model_doc(markdown: str) -> str | None:
    """The first code block under "## Diagram" in docs/model.md, or None when there is none."""
    match = _DIAGRAM.search(markdown)
    return match.group(1) if match else None


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "n/a"


def _decimal(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Headline figures of a metrics.json (``python -m mmbm.evaluate``) as one markdown table."""
    rows: list[tuple[str, str, str]] = []
    for split, m in metrics.get("captions", {}).get("splits", {}).items():
        rows.append(
            (
                f"captions, {split} split",
                "faithful / complete",
                f"{_percent(m.get('faithful'))} / {_percent(m.get('complete'))}",
            )
        )
        if m.get("bleu4") is not None or m.get("cider") is not None:
            rows.append(
                (
                    f"captions, {split} split",
                    "BLEU-4 / CIDEr",
                    f"{_decimal(m.get('bleu4'))} / {_decimal(m.get('cider'))}",
                )
            )
    retrieval = metrics.get("retrieval")
    if retrieval:
        recalls = " / ".join(_percent(retrieval["text_to_image"].get(f"recall@{k}")) for k in (1, 5, 10))
        rows.append((f"text → image, {retrieval.get('gallery', 'gallery')}", "R@1 / R@5 / R@10", recalls))
    for name, entry in metrics.get("speech", {}).get("sets", {}).items():
        for method, m in entry.get("methods", {}).items():
            rates = m["rates"]
            rows.append(
                (f"speech, {name}", f"WER / CER ({method})", f"{_percent(rates['wer'])} / {_percent(rates['cer'])}")
            )
    timing = metrics.get("timing")
    if timing:
        rows.append(("timing", "caption latency (median)", f"{timing['caption_latency_ms']['median']:.1f} ms"))
        rows.append(
            ("timing", "transcription real-time factor (median)", f"{timing['transcription_rtf']['median']:.3f}")
        )
    if not rows:
        return "metrics.json holds no caption, retrieval, speech or timing figures."
    lines = ["| set | measure | value |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    command = metrics.get("provenance", {}).get("command")
    if command:
        lines += ["", f"Measured by `{command}`."]
    return "\n".join(lines)


def about_texts(model_dir: Path, model_doc: Path) -> tuple[str, str, str]:
    """(model card, metrics table, architecture diagram) as markdown, each saying what is missing when absent."""
    card_path, metrics_path = model_dir / "README.md", model_dir / "metrics.json"
    card = f"No model card ({card_path} is missing)."
    if card_path.is_file():
        card = strip_front_matter(card_path.read_text(encoding="utf-8"))
    metrics = f"No metrics yet ({metrics_path} is missing); `python -m mmbm.evaluate` writes it."
    if metrics_path.is_file():
        metrics = metrics_markdown(json.loads(metrics_path.read_text(encoding="utf-8")))
    diagram = diagram_from_model_doc(model_doc.read_text(encoding="utf-8")) if model_doc.is_file() else None
    return card, metrics, f"```\n{diagram}\n```" if diagram else f"No diagram ({model_doc} is missing)."
