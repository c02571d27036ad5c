"""The MMBM demo: caption an image, search a gallery by text, voice or image, transcribe speech.

``python app.py [--model models/mmbm-tiny] [--index models/mmbm-tiny/gallery] [--host 127.0.0.1] [--port 7860]``

A thin Gradio 6 front end over ``mmbm.pipeline``: the pipeline is loaded once at
start-up and every event calls it; presentation helpers live in ``mmbm.demo.views``.
Library errors (``MMBMError``) reach the page as ``gr.Error`` with their plain
message, never a traceback. The shipped gallery index is copied into a working
directory first, so images people add never change the files in ``models/``; the
example scenes are read as shipped beside the checkpoint (``mmbm.pipeline.load_examples``).
Named API endpoints: /caption, /search, /search_image, /search_voice, /transcribe,
/add_images, /index_stats (see docs/demo.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from mmbm.demo import views
from mmbm.demo.views import Pictures, Rows
from mmbm.pipeline import (
    COLOUR_RGB,
    CTCDecodingOptions,
    DecodingOptions,
    Lexicon,
    MMBMError,
    Pipeline,
    has_index,
    load_examples,
)

logger = logging.getLogger("mmbm.app")

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = Path("models/mmbm-tiny")
DEFAULT_INDEX = Path("models/mmbm-tiny/gallery")
MAX_FILE_SIZE = "10mb"  # per upload; a 64x64 scene is ~10 kB, a minute of 48 kHz WAV ~6 MB
MAX_ADD = 64  # images per add: one embedding batch, a few seconds on 2 cores
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full") instead of piling up
# Concurrency per event, for a 2-core CPU where one call already uses both cores for its
# matrix products: two short calls (a caption, a text search) overlap their Python overhead;
# long ones (speech, adding images) run one at a time so a burst cannot starve the rest.
CAPTION_GROUP = {"concurrency_limit": 2, "concurrency_id": "caption"}
SEARCH_GROUP = {"concurrency_limit": 2, "concurrency_id": "search"}
SPEECH_GROUP = {"concurrency_limit": 1, "concurrency_id": "speech"}  # /transcribe and /search_voice together
ADD_GROUP = {"concurrency_limit": 1, "concurrency_id": "add_images"}
IMAGE_SOURCES = ["upload", "webcam", "clipboard"]
AUDIO_SOURCES = ["microphone", "upload"]
CAPTION_METHODS = {"greedy": "greedy", "beam search": "beam", "sampling": "sample"}
SPEECH_METHODS = ("beam + ShapesWorld words", "beam", "greedy")
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="blue")
# Scenes are 64 px: show them large with their pixels, not a blur.
CSS = (
    ".pixelated img, #caption-image img, #search-image img { image-rendering: pixelated; }\n"
    "#caption-image img, #search-image img { width: 100%; height: 100%; object-fit: contain; }"
)


def refuse(message: str) -> gr.Error:
    """A gr.Error for input the person can fix: shown on the page, not logged with a traceback."""
    return gr.Error(message, print_exception=False)


def public_message(message: str) -> str:
    """``message`` with Gradio's upload folders cut down to the file name (no server paths on the page)."""
    return re.sub(re.escape(str(Path(get_upload_folder()).resolve())) + r"/[0-9a-f]+/", "", message)


def plain_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into gr.Error with their message; log anything unexpected, show no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error:
            raise
        except MMBMError as e:
            raise refuse(public_message(str(e))) from e
        except Exception as e:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong on the server ({type(e).__name__}); it has been logged.") from e

    return wrapper


def _path_of(upload: dict[str, Any] | str | None, what: str) -> str:
    """The server path of an upload given raw (``preprocess=False``), or a gr.Error asking for one."""
    if isinstance(upload, dict) and upload.get("path"):
        return str(upload["path"])
    if isinstance(upload, str) and upload:
        return upload
    how = "upload, capture or paste an image" if what == "image" else "record or upload a clip"
    raise refuse(f"No {what} yet: {how} first.")


@dataclass(frozen=True)
class Demo:
    """The loaded pipeline and what the handlers share; every public method is one event."""

    pipeline: Pipeline
    lexicon: Lexicon
    model_dir: Path
    examples: list[str]  # example scenes shipped with the checkpoint
    example_queries: list[str]

    @plain_errors
    def caption(
        self, image: dict | str | None, method: str, beam_size: float, temperature: float, n_best: float
    ) -> tuple[Rows, Pictures]:
        """Caption one image: n-best (rank, caption, score) rows and one attention heatmap per word."""
        return self._caption(_path_of(image, "image"), method, beam_size, temperature, n_best)

    @plain_errors
    def caption_drawing(
        self, drawing: dict | None, method: str, beam_size: float, temperature: float, n_best: float
    ) -> tuple[Rows, Pictures]:
        composite = None if drawing is None else drawing.get("composite")
        if composite is None or composite.min() == composite.max():
            raise refuse("The canvas is empty: draw a few shapes first.")
        return self._caption(composite, method, beam_size, temperature, n_best)

    def _caption(
        self, source: Any, method: str, beam_size: float, temperature: float, n_best: float
    ) -> tuple[Rows, Pictures]:
        if method not in CAPTION_METHODS:
            raise refuse(f"Unknown decoding method {method!r}; choose one of {', '.join(CAPTION_METHODS)}.")
        attention = self.pipeline.config.fusion == "attention"
        options = DecodingOptions(
            method=CAPTION_METHODS[method],
            beam_size=int(beam_size),
            n_best=1 if method == "greedy" else int(n_best),
            temperature=float(temperature),
            return_attention=attention,
        )
        view = self.pipeline.caption_view(source, options)
        return views.caption_rows(view.result), views.attention_gallery(view.result, view.picture)

    @plain_errors
    def search(self, query: str, k: float) -> tuple[Pictures, Rows]:
        """Images matching a description: gallery of (thumbnail, "score · caption") and (rank, score, caption, id) rows."""
        hits = self.pipeline.search_text(query or "", int(k))
        return views.hit_gallery(hits), views.hit_rows(hits)

    @plain_errors
    def search_image(self, image: dict | str | None, k: float) -> tuple[Pictures, Rows]:
        hits = self.pipeline.search_image(_path_of(image, "image"), int(k))
        return views.hit_gallery(hits), views.hit_rows(hits)

    @plain_errors
    def search_voice(self, audio: str | None, k: float) -> tuple[str, Pictures, Rows]:
        """Transcribe what was said (ShapesWorld words), then search by it; returns what was heard first."""
        found = self.pipeline.search_audio(_path_of(audio, "audio"), int(k), *self._speech_options(SPEECH_METHODS[0]))
        heard = found.transcription.transcript.text
        return heard, views.hit_gallery(found.hits), views.hit_rows(found.hits)

    @plain_errors
    def transcribe(self, audio: str | None, method: str) -> tuple[str, list[tuple[str, float | None]], str]:
        """Transcript, per-word (word and time span, confidence) highlights, and a summary with the real-time factor."""
        result = self.pipeline.transcribe(_path_of(audio, "audio"), *self._speech_options(method))
        transcript = result.transcript
        summary = views.transcript_summary(result.duration_s, result.seconds, result.rtf, transcript)
        return transcript.text or "(no words recognised)", views.word_highlights(transcript), summary

    def _speech_options(self, method: str) -> tuple[CTCDecodingOptions, Lexicon | None]:
        if method not in SPEECH_METHODS:
            raise refuse(f"Unknown decoding method {method!r}; choose one of {', '.join(SPEECH_METHODS)}.")
        if method == "greedy":
            return CTCDecodingOptions(method="greedy"), None
        return CTCDecodingOptions(method="beam"), self.lexicon if method == SPEECH_METHODS[0] else None

    @plain_errors
    def add_images(self, files: Sequence[str] | None) -> tuple[str, str]:
        """Add uploaded images (captioned by the model) to the gallery; returns the report and the new statistics."""
        paths = [str(f) for f in files or []]
        if not paths:
            raise refuse("Choose one or more image files to add.")
        if len(paths) > MAX_ADD:
            raise refuse(f"Too many files at once: {len(paths)}; add at most {MAX_ADD} per call.")
        report = self.pipeline.add_images(paths, source="upload")
        return public_message(views.add_report_markdown(report)), self.index_stats()

    @plain_errors
    def index_stats(self) -> str:
        return views.stats_markdown(self.pipeline.index_stats())


# ----- the page, one function per tab ------------------------------------------------

PRIVATE = {"api_visibility": "private"}  # UI glue: not callable by API clients


def picture_grid(label: str, elem_id: str, columns: int) -> gr.Gallery:
    style = {
        "height": "auto",
        "preview": False,
        "fit_columns": False,
        "object_fit": "contain",
        "elem_classes": "pixelated",
    }
    return gr.Gallery(label=label, columns=columns, elem_id=elem_id, **style)


def results_table(headers: list[str], label: str, elem_id: str | None = None) -> gr.Dataframe:
    types = ["str" if name == "caption" else "number" for name in headers]
    return gr.Dataframe(headers=headers, datatype=types, label=label, interactive=False, elem_id=elem_id)


def decoding_controls() -> list[gr.components.Component]:
    with gr.Accordion("Decoding", open=True):
        method = gr.Radio(list(CAPTION_METHODS), value="greedy", label="Method")
        with gr.Row():
            beam = gr.Slider(1, 8, value=4, step=1, label="Beam size (beam search)")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature (sampling)")
            n_best = gr.Slider(1, 5, value=3, step=1, label="Captions to show (beam, sampling)")
    return [method, beam, temperature, n_best]


def caption_tab(demo: Demo) -> None:
    palette = [f"rgb{rgb}" for rgb in COLOUR_RGB.values()]  # ShapesWorld's ten colours, nothing else
    with gr.Row():
        with gr.Column():
            with gr.Tab("Photo"):
                photo = gr.Image(sources=IMAGE_SOURCES, label="Image", height=280, elem_id="caption-image")
                photo_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                if demo.examples:
                    gr.Examples(demo.examples, inputs=photo, label="ShapesWorld scenes the model never trained on")
            with gr.Tab("Draw"):
                brush = gr.Brush(colors=palette, default_color=palette[0], color_mode="fixed", default_size=12)
                sketch = gr.Sketchpad(
                    type="numpy",
                    image_mode="RGB",
                    canvas_size=(256, 256),
                    brush=brush,
                    label="Draw coloured shapes",
                    elem_id="sketchpad",
                )
                sketch_button = gr.Button("Caption the drawing", variant="primary", elem_id="sketch-button")
            controls = decoding_controls()
        with gr.Column():
            captions = results_table(["rank", "caption", "score"], "Captions, best first", "captions")
            heatmaps = picture_grid("Where the model looked, word by word", "heatmaps", columns=5)
    outputs = [captions, heatmaps]
    # preprocess=False: the handler reads the upload itself, so a broken file gets the library's plain message
    photo_button.click(demo.caption, [photo, *controls], outputs, api_name="caption", preprocess=False, **CAPTION_GROUP)
    sketch_button.click(
        demo.caption_drawing, [sketch, *controls], outputs, api_name="caption_drawing", **PRIVATE, **CAPTION_GROUP
    )


@dataclass(frozen=True)
class SearchParts:
    """What other tabs need from the search tab."""

    tab_id: str
    query: gr.Textbox
    k: gr.Slider
    gallery: gr.Gallery
    table: gr.Dataframe
    stats: gr.Markdown


def search_tab(demo: Demo) -> SearchParts:
    with gr.Row(equal_height=True):
        query = gr.Textbox(
            label="Describe what you are looking for",
            placeholder="two red circles above a blue square",
            scale=5,
            elem_id="search-query",
        )
        search_button = gr.Button("Search", variant="primary", scale=1, min_width=120, elem_id="search-button")
    gr.Examples([[q] for q in demo.example_queries], inputs=query, label="Try")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            k = gr.Slider(1, 24, value=8, step=1, label="Results")
            voice = gr.Audio(sources=AUDIO_SOURCES, type="filepath", label="…or say what you are looking for")
            voice_button = gr.Button("Search by voice")
            heard = gr.Textbox(label="Heard", interactive=False)
            image = gr.Image(
                sources=IMAGE_SOURCES,
                label="…or find images like this one",
                height=200,
                elem_id="search-image",
            )
            image_button = gr.Button("Find similar images")
        with gr.Column(scale=2):
            gallery = picture_grid("Results (score · caption)", "search-results", columns=4)
            table = results_table(["rank", "score", "caption", "id"], "Results")
            with gr.Row(equal_height=True):
                stats = gr.Markdown(elem_id="index-stats")
                refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90)
            with gr.Accordion("Add your own images", open=False):
                files = gr.File(file_count="multiple", file_types=["image"], label=f"Images (up to {MAX_ADD} at once)")
                add_button = gr.Button("Add to the gallery")
                report = gr.Markdown()
    outputs = [gallery, table]
    search_button.click(demo.search, [query, k], outputs, api_name="search", **SEARCH_GROUP)
    query.submit(demo.search, [query, k], outputs, api_name="search_on_enter", **PRIVATE, **SEARCH_GROUP)
    image_button.click(
        demo.search_image, [image, k], outputs, api_name="search_image", preprocess=False, **SEARCH_GROUP
    )
    voice_button.click(demo.search_voice, [voice, k], [heard, *outputs], api_name="search_voice", **SPEECH_GROUP)
    add_button.click(demo.add_images, files, [report, stats], api_name="add_images", **ADD_GROUP)
    refresh.click(demo.index_stats, None, stats, api_name="index_stats")
    return SearchParts("search", query, k, gallery, table, stats)


def transcribe_tab(demo: Demo, search: SearchParts, tabs: gr.Tabs) -> None:
    with gr.Row():
        with gr.Column():
            audio = gr.Audio(
                sources=AUDIO_SOURCES,
                type="filepath",
                label="Speak or upload a clip",
                elem_id="transcribe-audio",
            )
            method = gr.Radio(list(SPEECH_METHODS), value=SPEECH_METHODS[0], label="Decoding")
            button = gr.Button("Transcribe", variant="primary", elem_id="transcribe-button")
        with gr.Column():
            text = gr.Textbox(label="Transcript", interactive=False, elem_id="transcript")
            words = gr.HighlightedText(
                label="Words and their times; shading is the model's confidence", show_legend=False
            )
            summary = gr.Markdown(elem_id="transcribe-summary")
            to_search = gr.Button("Search the gallery for this")
    button.click(demo.transcribe, [audio, method], [text, words, summary], api_name="transcribe", **SPEECH_GROUP)

    def send(transcript: str) -> tuple[str, gr.Tabs]:
        if not transcript or transcript.startswith("("):
            raise refuse("Transcribe something first.")
        return transcript, gr.Tabs(selected=search.tab_id)

    inputs, outputs = [search.query, search.k], [search.gallery, search.table]
    to_search.click(send, text, [search.query, tabs], api_name="send_to_search", **PRIVATE).success(
        demo.search, inputs, outputs, api_name="search_transcript", **PRIVATE, **SEARCH_GROUP
    )


def about_tab(demo: Demo) -> None:
    card, metrics, diagram = views.about_texts(demo.model_dir, REPO / "docs" / "model.md")
    config, pipeline = demo.pipeline.config, demo.pipeline
    n_parameters = sum(p.numel() for p in pipeline.model.parameters())  # tied weights are one Parameter
    gr.Markdown(
        f"**Checkpoint** `{demo.model_dir}` ({pipeline.identity[:19]}): {n_parameters / 1e6:.2f} M parameters, "
        f"{config.n_layers} × {config.d_model}-wide blocks, `{config.fusion}` fusion, running on `{pipeline.device}`."
    )
    for title, text in (("Model card", card), ("Measured results (metrics.json)", metrics), ("Architecture", diagram)):
        with gr.Accordion(title, open=True):
            gr.Markdown(text)


def build_demo(demo: Demo) -> gr.Blocks:
    with gr.Blocks(title="MMBM: caption, search, transcribe") as blocks:
        gr.Markdown(
            "# MMBM\nOne small Transformer backbone that captions images, finds them by description and "
            "transcribes speech — trained on ShapesWorld, a world of coloured shapes."
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Caption", id="caption"):
                caption_tab(demo)
            with gr.Tab("Search", id="search"):
                search = search_tab(demo)
            with gr.Tab("Transcribe", id="transcribe"):
                transcribe_tab(demo, search, tabs)
            with gr.Tab("About", id="about"):
                about_tab(demo)
        blocks.load(demo.index_stats, None, search.stats, api_name="index_stats_on_load", **PRIVATE)
    blocks.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return blocks


# ----- start-up ------------------------------------------------------------------------


def load_demo(model_dir: Path, index_dir: Path | None, work_dir: Path, device: str = "auto") -> Demo:
    """Load the pipeline with a working copy of ``index_dir`` (an empty index when None) and the shipped examples."""
    working_index = work_dir / "gallery"
    if index_dir is not None:
        shutil.copytree(index_dir, working_index, ignore=shutil.ignore_patterns("writer.lock"), dirs_exist_ok=True)
    pipeline = Pipeline.load(model_dir, working_index, device=device, create_index=index_dir is None)
    examples = load_examples(model_dir)
    return Demo(pipeline, pipeline.lexicon, model_dir, [str(e.image) for e in examples], [e.caption for e in examples])


def launch(blocks: gr.Blocks, demo: Demo, host: str, port: int, prevent_thread_lock: bool = False) -> None:
    """Serve ``blocks`` with the demo's upload limit, theme and file access (tests pass ``prevent_thread_lock``)."""
    blocks.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_FILE_SIZE,
        theme=THEME,
        css=CSS,
        allowed_paths=sorted({str(Path(path).parent) for path in demo.examples}),
        prevent_thread_lock=prevent_thread_lock,
        quiet=prevent_thread_lock,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint directory (default: %(default)s)")
    parser.add_argument(
        "--index",
        type=Path,
        default=DEFAULT_INDEX,
        help="gallery index directory, copied at start-up (default: %(default)s)",
    )
    parser.add_argument("--empty-gallery", action="store_true", help="start with an empty gallery instead of --index")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the gallery copy lives (default: a temporary directory removed at exit)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> str | None:
    """The one-line reason the app cannot start with these arguments, or None."""
    if not (args.model / "config.json").is_file():
        return f"no model at {args.model} (config.json is missing); train one with `python -m mmbm.training` or pass --model DIR"
    if not args.empty_gallery and not has_index(args.index):
        return f"no gallery index at {args.index} (index.sqlite is missing); pass --index DIR or --empty-gallery"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    problem = check_inputs(args)
    if problem:
        print(f"app.py: {problem}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="mmbm-demo-"))
    try:
        demo = load_demo(args.model, None if args.empty_gallery else args.index, work_dir, args.device)
    except MMBMError as e:
        print(f"app.py: {e}", file=sys.stderr)
        return 2
    try:
        launch(build_demo(demo), demo, args.host, args.port)
    finally:
        demo.pipeline.close()
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
