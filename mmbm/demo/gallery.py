"""Build what the demo ships beside the checkpoint: the gallery index and the example scenes.

The gallery is the app's default image index over held-out ShapesWorld scenes.
It is built once, after training, and shipped in ``models/mmbm-tiny/gallery``
(SQLite with thumbnails and captions, plus the vector cache) beside the
checkpoint whose embeddings it holds, so the demo starts in seconds with no
corpus on disk and people search scenes the model never trained on: the val,
test and compositional splits. It is built into a temporary folder beside the
target and renamed into place, so an interrupted build never leaves a
half-written gallery behind. The example scenes (``models/mmbm-tiny/examples``:
a few test-split scenes as PNGs and ``examples.json`` with the complete caption
of each) are rendered here too, so the app reads them instead of running the
corpus generator at start-up. Imports the pipeline, the checkpoint's config
reader, the ShapesWorld generator and the manifest reader; no gradio.

    python -m mmbm.demo.gallery --model models/mmbm-tiny --images data/shapes --out models/mmbm-tiny/gallery
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmbm.data.adapters import load_image_manifest
from mmbm.errors import DataError, MMBMError
from mmbm.index.image_index import ImageIndex
from mmbm.index.types import AddReport
from mmbm.model.checkpoint import load_config
from mmbm.pipeline import EXAMPLES_DIR, EXAMPLES_FILE, Pipeline
from mmbm.shapesworld.captions import canonical_caption
from mmbm.shapesworld.corpus import load_corpus_info, make_item
from mmbm.shapesworld.shapes import ShapesConfig, render_scene

logger = logging.getLogger(__name__)

GALLERY_SPLITS = ("val", "test", "compositional")  # held-out scenes only, never train
EXAMPLE_SCENES = (3, 7, 12, 21, 33, 48)  # test-split scenes of the default corpus: the model never trained on them


@dataclass(frozen=True)
class GalleryReport:
    out_dir: Path
    n_images: int
    n_skipped: int
    n_duplicates: int
    disk_bytes: int


def build_gallery(
    model_dir: str | os.PathLike[str],
    corpus_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    splits: Sequence[str] = GALLERY_SPLITS,
    overwrite: bool = False,
    progress: bool = True,
) -> GalleryReport:
    """Index the images of ``splits`` of a complete ShapesWorld corpus with the model in ``model_dir``."""
    out_dir, corpus_dir = Path(out_dir), Path(corpus_dir)
    if "train" in splits:
        raise DataError("the demo gallery must not hold training scenes; leave 'train' out of splits")
    load_corpus_info(corpus_dir)  # refuses an incomplete corpus before any work
    manifests = [corpus_dir / f"{split}.jsonl" for split in splits]
    for manifest in manifests:
        if not manifest.is_file():
            raise DataError(f"gallery: split manifest not found: {manifest}")
    if out_dir.exists() and not overwrite:
        raise DataError(f"gallery: {out_dir} already exists; pass overwrite=True (--overwrite) to rebuild it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        pipeline = Pipeline.load(model_dir, staging / "index", create_index=True)
        skipped = duplicates = 0
        for manifest in manifests:
            report = index_manifest(pipeline.index, manifest, source=f"shapesworld:{manifest.stem}", progress=progress)
            skipped += len(report.skipped)
            duplicates += len(report.duplicates)
        stats = pipeline.index.stats()
        pipeline.close()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging / "index", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("gallery: %d images in %s (%d skipped, %d duplicates)", stats.n_images, out_dir, skipped, duplicates)
    return GalleryReport(out_dir, stats.n_images, skipped, duplicates, stats.disk_bytes)


def index_manifest(
    index: ImageIndex,
    manifest: str | os.PathLike,
    source: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> AddReport:
    """Add the images of a JSONL manifest (generic ``{"image", "text"}`` rows or ShapesWorld rows) to ``index``.

    The first caption of each image is stored. Malformed rows raise ``DataError``
    naming the line before anything is added; rows whose image file is missing
    are left out with a logged warning (``mmbm.data.adapters``).
    """
    records = load_image_manifest(manifest)
    return index.add_images(
        [record.image_path for record in records],
        captions=[record.captions[0] for record in records],
        source=source or f"manifest:{manifest}",
        batch_size=batch_size,
        progress=progress,
    )


def write_examples(model_dir: str | os.PathLike[str], scene_ids: Sequence[int] = EXAMPLE_SCENES) -> Path:
    """Test-split scenes of the default corpus as PNGs in ``model_dir/examples``, and the complete caption of each.

    Rendered at the checkpoint's image size; ``examples.json`` lists them
    (``[{"image": "scene-3.png", "caption": ...}, ...]``) for ``mmbm.pipeline.load_examples``.
    """
    directory = Path(model_dir) / EXAMPLES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    config = ShapesConfig(image_size=load_config(model_dir).image.image_size)
    rows = []
    for k in scene_ids:
        scene, _ = make_item(config, "test", k)
        path = directory / f"scene-{k}.png"
        render_scene(scene, config.image_size, config.supersample).save(path)
        rows.append({"image": path.name, "caption": canonical_caption(scene)})
    (directory / EXAMPLES_FILE).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmbm.demo.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mmbm-tiny"))
    parser.add_argument("--images", type=Path, default=Path("data/shapes"), help="ShapesWorld corpus folder")
    parser.add_argument("--out", type=Path, default=Path("models/mmbm-tiny/gallery"))
    parser.add_argument("--splits", nargs="+", default=list(GALLERY_SPLITS))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = build_gallery(args.model, args.images, args.out, args.splits, args.overwrite, args.progress)
        examples = write_examples(args.model)
    except MMBMError as error:
        print(f"mmbm.demo.gallery: {error}", file=sys.stderr)
        return 2
    print(report)
    print(f"example scenes in {examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
