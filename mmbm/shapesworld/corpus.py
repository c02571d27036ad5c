"""The ShapesWorld image corpus on disk: writing it, resuming it, reading it back.

Owns ``generate_image_corpus`` (scenes, captions and PNGs for the train, val,
test and compositional splits, in a process pool with a progress bar), the
readers ``load_corpus_info`` / ``load_image_manifest``, the sample grid for the
docs (``render_sample_grid``) and the ``python -m mmbm.shapesworld shapes`` flags.

Layout (the corpus contract): ``images/<id>.png``; ``<split>.jsonl`` with rows
``{"id", "image": "images/<id>.png", "captions": [...], "scene": {...}}``;
``generator.json`` (written first: what the images depend on) and
``corpus.json`` (written last, atomically: the config, counts and held-out
pairs). Without corpus.json a folder is incomplete. Scene ``k`` of a split comes
from ``numpy.random.default_rng([seed, split key, k])``, so any process may
render any image and a stopped run resumes by keeping every valid PNG.
Train, val and test scenes never show a held-out colour-shape pair; each
compositional scene shows at least one. Imports ``mmbm.errors`` and this
package's ``shapes``, ``scene`` and ``captions``; never torch or the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from mmbm.errors import ConfigError, DataError
from mmbm.files import write_text_atomic
from mmbm.shapesworld.captions import VOCABULARY, captions_for
from mmbm.shapesworld.scene import Scene
from mmbm.shapesworld.shapes import ShapesConfig, heldout_pairs, render_scene, sample_scene

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
SPLIT_KEYS = {"train": 1, "val": 2, "test": 3, "compositional": 4}  # SeedSequence keys, one stream per split
CORPUS_FORMAT = "shapesworld-images/1"
CORPUS_FILE, GENERATOR_FILE, IMAGE_DIR = "corpus.json", "generator.json", "images"
# Fields that change only the manifests, never an image: images survive a change of them.
MANIFEST_ONLY_FIELDS = ("n_train", "n_val", "n_test", "n_compositional", "n_captions")
CHUNK_SIZE = 32  # items per process-pool task


@dataclass(frozen=True)
class ImageRecord:
    """One row of an image manifest, with the image path resolved against the corpus folder."""

    id: str
    image: Path
    captions: tuple[str, ...]
    scene: Scene
    split: str


@dataclass(frozen=True)
class CorpusInfo:
    """What ``corpus.json`` says about a complete corpus."""

    corpus_dir: Path
    config: ShapesConfig
    counts: dict[str, int]
    heldout_pairs: tuple[tuple[str, str], ...]
    bytes_on_disk: int


@dataclass(frozen=True)
class CorpusSummary:
    """What a corpus folder holds, and what this call had to do to make it."""

    out_dir: Path
    counts: dict[str, int]
    heldout_pairs: tuple[tuple[str, str], ...]
    n_rendered: int  # images drawn by this call (0 when the corpus was already complete)
    n_reused: int  # valid images found on disk and kept
    seconds: float  # wall time of this call
    bytes_on_disk: int  # sum of file sizes: images, manifests, generator.json

    @property
    def images_per_second(self) -> float:
        return self.n_rendered / self.seconds if self.n_rendered and self.seconds > 0 else 0.0


def image_id(split: str, index: int) -> str:
    return f"{split}-{index:07d}"


def make_item(config: ShapesConfig, split: str, index: int) -> tuple[Scene, list[str]]:
    """Scene ``index`` of ``split`` and its captions, exactly as the corpus holds them."""
    held = frozenset(heldout_pairs(config.seed, config.n_heldout_pairs))
    rng = np.random.default_rng([config.seed, SPLIT_KEYS[split], index])
    if split == "compositional":
        scene = sample_scene(rng, config, include=held)
    else:
        scene = sample_scene(rng, config, exclude=held)
    return scene, captions_for(scene, rng, config.n_captions)


def _valid_image(path: Path, size: int) -> bool:
    try:
        with Image.open(path) as image:
            if image.size != (size, size) or image.mode != "RGB":
                return False
            image.verify()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _build(config: ShapesConfig, images: Path, task: tuple[str, int]) -> tuple[dict[str, Any], bool]:
    """Make one manifest row, rendering its PNG unless a valid one is on disk."""
    split, index = task
    scene, captions = make_item(config, split, index)
    name = image_id(split, index)
    path = images / f"{name}.png"
    rendered = not _valid_image(path, config.image_size)
    if rendered:
        temporary = images / f".{name}.{os.getpid()}.png"
        render_scene(scene, config.image_size, config.supersample).save(temporary, optimize=False)
        os.replace(temporary, path)
    row = {"id": name, "image": f"{IMAGE_DIR}/{name}.png", "captions": captions, "scene": scene.to_dict()}
    return row, rendered


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _render_key(config: ShapesConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in MANIFEST_ONLY_FIELDS}


def _prepare_folder(out: Path, config: ShapesConfig, overwrite: bool) -> Path:
    """Check the folder can take this corpus (before any work); returns the images folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise DataError(f"cannot write the image corpus to {str(out)!r}: {e}") from e
    images = out / IMAGE_DIR
    generator = _read_json(out / GENERATOR_FILE)
    has_images = images.is_dir() and any(images.glob("*.png"))
    stale = has_images and (generator is None or generator.get("render") != _render_key(config))
    if stale and not overwrite:
        raise DataError(
            f"{str(out)!r} holds images made with a different seed, image size or scene settings; "
            "pass overwrite=True (--overwrite) to replace them, or choose another folder"
        )
    (out / CORPUS_FILE).unlink(missing_ok=True)  # from here on the folder is incomplete
    images.mkdir(exist_ok=True)
    for path in images.glob(".*.png"):  # temporary files of a stopped run
        path.unlink()
    if stale:
        for path in images.glob("*.png"):
            path.unlink()
    write_text_atomic(out / GENERATOR_FILE, json.dumps({"format": CORPUS_FORMAT, "render": _render_key(config)}) + "\n")
    return images


def _render_all(
    config: ShapesConfig, images: Path, tasks: list[tuple[str, int]], workers: int, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    build = partial(_build, config, images)
    rows: list[dict[str, Any]] = []
    n_rendered = 0
    bar = tqdm(total=len(tasks), desc="shapes images", unit="img", disable=not progress)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = pool.map(build, tasks, chunksize=CHUNK_SIZE) if pool else map(build, tasks)
        for row, rendered in results:
            rows.append(row)
            n_rendered += rendered
            bar.update(1)
    finally:  # on Ctrl-C, drop the queue; finished images are on disk for the next run
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return rows, n_rendered


def _folder_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def generate_image_corpus(
    out_dir: str | os.PathLike[str],
    config: ShapesConfig,
    progress: bool = True,
    workers: int = 1,
    overwrite: bool = False,
) -> CorpusSummary:
    """Write the ShapesWorld image corpus to ``out_dir``, resuming what is there.

    A complete corpus made with an equal config is returned as it is (no work).
    Errors come before any image is drawn: ConfigError for a bad ``workers``,
    DataError for a folder that cannot be written or that holds images made
    with other scene settings (unless ``overwrite``).
    """
    if not isinstance(config, ShapesConfig):
        raise ConfigError(f"config: expected a ShapesConfig, got {type(config).__name__}")
    if not 1 <= workers <= 64:
        raise ConfigError(f"workers: must be in [1, 64], got {workers}")
    start = time.perf_counter()
    out = Path(out_dir)
    held = heldout_pairs(config.seed, config.n_heldout_pairs)
    record = _read_json(out / CORPUS_FILE)
    if (
        record is not None
        and record.get("config") == config.to_dict()
        and all((out / f"{split}.jsonl").is_file() for split in SPLITS)
    ):
        logger.info("image corpus in %s is complete and matches the config; nothing to do", out)
        total = sum(config.split_sizes.values())
        return CorpusSummary(
            out, config.split_sizes, held, 0, total, time.perf_counter() - start, int(record.get("bytes_on_disk", 0))
        )
    images = _prepare_folder(out, config, overwrite)
    tasks = [(split, k) for split, n in config.split_sizes.items() for k in range(n)]
    wanted = {f"{image_id(split, k)}.png" for split, k in tasks}
    for path in images.glob("*.png"):  # images of a larger corpus made with the same settings
        if path.name not in wanted:
            path.unlink()
    logger.info("image corpus: %d images planned in %s", len(tasks), out)
    rows, n_rendered = _render_all(config, images, tasks, workers, progress)
    for split in SPLITS:
        lines = [json.dumps(row) + "\n" for row, (s, _) in zip(rows, tasks, strict=True) if s == split]
        write_text_atomic(out / f"{split}.jsonl", "".join(lines))
    size = _folder_bytes(out)
    record = {
        "format": CORPUS_FORMAT,
        "config": config.to_dict(),
        "seed": config.seed,
        "image_size": config.image_size,
        "counts": config.split_sizes,
        "heldout_pairs": [list(p) for p in held],
        "vocabulary": list(VOCABULARY),
        "bytes_on_disk": size,
    }
    write_text_atomic(out / CORPUS_FILE, json.dumps(record, indent=1) + "\n")  # last: its presence means complete
    seconds = time.perf_counter() - start
    logger.info("image corpus: %d images drawn, %d kept, %.1f s", n_rendered, len(tasks) - n_rendered, seconds)
    return CorpusSummary(out, config.split_sizes, held, n_rendered, len(tasks) - n_rendered, seconds, size)


def load_corpus_info(corpus_dir: str | os.PathLike[str]) -> CorpusInfo:
    """Read ``corpus.json``; DataError when it is missing (an incomplete corpus) or malformed."""
    folder = Path(corpus_dir)
    path = folder / CORPUS_FILE
    if not path.is_file():
        raise DataError(
            f"{str(folder)!r} is not a complete ShapesWorld corpus: {CORPUS_FILE} is missing "
            "(generation never finished or this is another folder); run `python -m mmbm.shapesworld shapes`"
        )
    record = _read_json(path)
    if record is None or record.get("format") != CORPUS_FORMAT:
        raise DataError(f"{str(path)!r} is not a {CORPUS_FORMAT} record")
    try:
        config = ShapesConfig.from_dict(record["config"])
        held = tuple((str(s), str(c)) for s, c in record["heldout_pairs"])
        counts = {str(k): int(v) for k, v in record["counts"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{str(path)!r} is malformed: {e}") from e
    return CorpusInfo(folder, config, counts, held, int(record.get("bytes_on_disk", 0)))


def load_image_manifest(corpus_dir: str | os.PathLike[str], split: str) -> list[ImageRecord]:
    """The records of one split of a complete corpus, in id order."""
    info = load_corpus_info(corpus_dir)
    if split not in info.counts:
        raise DataError(f"unknown split {split!r}; this corpus has {sorted(info.counts)}")
    path = info.corpus_dir / f"{split}.jsonl"
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read manifest {str(path)!r}: {e}") from e
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            record = ImageRecord(
                id=str(row["id"]),
                image=info.corpus_dir / row["image"],
                captions=tuple(str(c) for c in row["captions"]),
                scene=Scene.from_dict(row["scene"]),
                split=split,
            )
        except (ValueError, KeyError, TypeError) as e:  # DataError is a ValueError
            raise DataError(f"{str(path)!r} line {number}: {e}") from e
        if not record.image.is_file():
            raise DataError(f"{str(path)!r} line {number}: image {str(record.image)!r} is missing")
        records.append(record)
    if len(records) != info.counts[split]:
        raise DataError(f"{str(path)!r} has {len(records)} rows but corpus.json says {info.counts[split]}")
    return records


def render_sample_grid(
    scenes: Sequence[Scene],
    captions: Sequence[Sequence[str]],
    path: str | os.PathLike[str],
    image_size: int = 128,
    columns: int = 4,
) -> Path:
    """Save a PNG grid: each scene rendered at ``image_size`` with its captions below it."""
    if len(scenes) != len(captions) or not scenes:
        raise DataError(
            f"need one caption list per scene and at least one scene, got {len(scenes)} and {len(captions)}"
        )
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.truetype("DejaVuSans.ttf", 11)
    except OSError:  # DejaVu is not installed: Pillow's built-in font
        font = ImageFont.load_default(size=11)
    cell_width, line_height, pad = max(image_size, 220), 13, 6
    wrapped = [
        [line for c in caps for line in textwrap.wrap(f"- {c}", width=(cell_width - 2 * pad) // 6)] for caps in captions
    ]
    rows = (len(scenes) + columns - 1) // columns
    text_height = max(len(lines) for lines in wrapped) * line_height
    cell_height = image_size + text_height + 3 * pad
    grid = Image.new("RGB", (columns * cell_width, rows * cell_height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (scene, lines) in enumerate(zip(scenes, wrapped, strict=True)):
        left, top = (k % columns) * cell_width, (k // columns) * cell_height
        grid.paste(render_scene(scene, image_size), (left + (cell_width - image_size) // 2, top + pad))
        for j, line in enumerate(lines):
            draw.text((left + pad, top + image_size + 2 * pad + j * line_height), line, fill=(0, 0, 0), font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp.png")
    grid.save(temporary)
    os.replace(temporary, out)
    return out


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m mmbm.shapesworld shapes``; unset ones keep the preset's values."""
    parser.add_argument("--out", default="data/shapes", help="corpus folder (default: data/shapes)")
    parser.add_argument("--preset", choices=("tiny", "base"), default="tiny", help="64 px (tiny) or 224 px (base)")
    for name in ("image_size", *MANIFEST_ONLY_FIELDS[:4], "n_heldout_pairs", "min_objects", "max_objects", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--captions", dest="n_captions", type=int, default=None, help="captions per image (>= 5)")
    parser.add_argument("--backgrounds", default=None, help="comma-separated: solid,gradient,noise")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--overwrite", action="store_true", help="replace images made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_shapes_command(args: argparse.Namespace) -> CorpusSummary:
    """Build the config from parsed flags (errors before any work), then generate the corpus."""
    names = ("image_size", *MANIFEST_ONLY_FIELDS, "n_heldout_pairs", "min_objects", "max_objects", "seed")
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.backgrounds is not None:
        overrides["backgrounds"] = tuple(b.strip() for b in args.backgrounds.split(",") if b.strip())
    config = ShapesConfig.base(**overrides) if args.preset == "base" else ShapesConfig.tiny(**overrides)
    return generate_image_corpus(
        args.out, config, progress=not args.no_progress, workers=args.workers, overwrite=args.overwrite
    )
