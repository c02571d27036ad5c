"""Build the demo gallery: the app's default image index over held-out ShapesWorld scenes.

The gallery is built once, after training, and shipped in ``models/gallery``
(SQLite with thumbnails and captions, plus the vector cache), so the demo starts
in seconds with no corpus on disk and people search scenes the model never
trained on: the val, test and compositional splits. It is built into a
temporary folder beside the target and renamed into place, so an interrupted
build never leaves a half-written gallery behind. Imports the pipeline and the
corpus loader; no gradio.

    python -m mmbm.demo.gallery --model models/mmbm-tiny --images data/shapes --out models/gallery
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmbm.errors import DataError, MMBMError
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.corpus import load_corpus_info

logger = logging.getLogger(__name__)

GALLERY_SPLITS = ("val", "test", "compositional")  # held-out scenes only, never train


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
            report = pipeline.index.build_from_manifest(manifest, source=f"shapesworld:{manifest.stem}", progress=progress)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmbm.demo.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mmbm-tiny"))
    parser.add_argument("--images", type=Path, default=Path("data/shapes"), help="ShapesWorld corpus folder")
    parser.add_argument("--out", type=Path, default=Path("models/gallery"))
    parser.add_argument("--splits", nargs="+", default=list(GALLERY_SPLITS))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = build_gallery(args.model, args.images, args.out, args.splits, args.overwrite, args.progress)
    except MMBMError as error:
        print(f"mmbm.demo.gallery: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
