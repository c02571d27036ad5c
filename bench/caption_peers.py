"""The seed's LSTM captioner trained on the ShapesWorld corpus, and captioners compared on the same images.

    python -m bench.caption_peers train --images data/shapes --out runs/bench/lstm --minutes 12
    python -m bench.caption_peers compare --images data/shapes --lstm runs/bench/lstm \\
        --mmbm runs/bench/caption-attention [--limit N]

``train_lstm`` trains bench.lstm_captioner as the seed tutorial does:
cross-entropy on teacher-forced captions, Adam (lr 1e-3, no schedule), batches
of 32 images with one of their five reference captions drawn at random, no
augmentation, until a wall-clock budget runs out (the budget counts everything
from the call, reading images included, as MMBM's trainer counts its setup).
``compare_captioners`` captions the test and compositional splits with every
system (greedy decoding), judges them with the evaluator's truth checker and
pycocoevalcap (mmbm.evaluate.measure.caption_truth), and times one caption from the
image file per system in turn, in one process, after a warm-up: medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.lstm_captioner import (
    LSTMCaptioner,
    LSTMCaptionerConfig,
    build_vocabulary,
    caption_loss,
    load_lstm_captioner,
    pad_captions,
    parameter_count,
    save_lstm_captioner,
)
from bench.parameters import PART_TASKS, parameter_counts
from mmbm.decode.captions import DecodingOptions
from mmbm.errors import ConfigError
from mmbm.evaluate.evaluator import CAPTION_SPLITS
from mmbm.evaluate.measure import CaptionMetrics, caption_truth, evaluate_captions
from mmbm.files import write_text_atomic
from mmbm.image import image_to_tensor, load_image
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.corpus import ImageRecord, load_image_manifest

logger = logging.getLogger(__name__)

DONE_FILE = "lstm_done.json"
LOG_FILE = "lstm_log.jsonl"
CHUNK = 64  # images captioned per batch
TIMING_IMAGES = 5  # distinct test images cycled through by the timing loop


@dataclass(frozen=True)
class LSTMTrainResult:
    steps: int
    seconds: float
    final_loss: float  # mean training loss over the last LOG_EVERY steps
    n_train_images: int
    n_parameters: int


def train_lstm(images: Path, out: Path, minutes: float | None = None, max_steps: int | None = None, seed: int = 0,
               batch_size: int = 32, lr: float = 1e-3, log_every: int = 50) -> LSTMTrainResult:
    """Train on the train split until ``minutes`` of wall clock or ``max_steps``; save to ``out``; log losses."""
    if minutes is None and max_steps is None:
        raise ConfigError("minutes: give a wall-clock budget, max_steps or both")
    start = time.perf_counter()
    torch.manual_seed(seed)
    records = load_image_manifest(images, "train")
    side = Image.open(records[0].image).width
    grid = min(LSTMCaptionerConfig.pooled_grid, side // 2 ** len(LSTMCaptionerConfig.channels))  # small test images
    model = LSTMCaptioner(LSTMCaptionerConfig(build_vocabulary(c for r in records for c in r.captions),
                                              image_size=side, pooled_grid=grid))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    cache: dict[int, torch.Tensor] = {}  # decoded, normalised pixels, filled as images are first drawn
    losses: list[float] = []
    out.mkdir(parents=True, exist_ok=True)
    log = (out / LOG_FILE).open("w", encoding="utf-8")
    step = 0
    model.train()
    while (max_steps is None or step < max_steps) and (minutes is None or time.perf_counter() - start < minutes * 60):
        rows = rng.integers(len(records), size=batch_size)
        for row in rows:
            if row not in cache:
                cache[row] = image_to_tensor(load_image(records[row].image, model.image_config), model.image_config)
        pixels = torch.stack([cache[row] for row in rows])  # (B, 3, S, S)
        ids = pad_captions([model.encode_text(records[row].captions[rng.integers(len(records[row].captions))])
                            for row in rows])  # (B, L)
        loss = caption_loss(model(pixels, ids), ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % log_every == 0:
            log.write(json.dumps({"step": step, "loss": statistics.mean(losses[-log_every:]),
                                  "seconds": time.perf_counter() - start}) + "\n")
            log.flush()
    log.close()
    save_lstm_captioner(model, out)
    result = LSTMTrainResult(step, time.perf_counter() - start, statistics.mean(losses[-log_every:]) if losses else
                             float("nan"), len(records), parameter_count(model))
    write_text_atomic(out / DONE_FILE, json.dumps({**asdict(result), "minutes": minutes, "max_steps": max_steps,
                                                   "seed": seed, "batch_size": batch_size, "lr": lr}, indent=1) + "\n")
    logger.info("LSTM captioner: %d steps in %.0f s, loss %.3f", step, result.seconds, result.final_loss)
    return result


def trained_lstm(out: Path) -> dict[str, Any] | None:
    """The record of a finished ``train_lstm`` in ``out``, or None."""
    path = out / DONE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass(frozen=True)
class Captioner:
    """A named system that captions image files: MMBM through its pipeline, or the LSTM baseline."""

    name: str
    caption_files: Callable[[Sequence[Path]], list[str]]  # greedy captions of image files, in order
    n_parameters: int  # the parameters captioning reads
    score: Callable[[Sequence[ImageRecord], str], CaptionMetrics]  # (records, split name) -> quality


def mmbm_captioner(name: str, model_dir: Path) -> Captioner:
    """MMBM greedy captions via mmbm.pipeline; parameters counted over the parts captioning reads."""
    pipeline = Pipeline.load(model_dir, device="cpu")
    counts = parameter_counts(pipeline.model)
    n_caption = sum(n for part, n in counts.items() if "caption" in PART_TASKS[part])
    options = DecodingOptions()

    def caption_files(paths: Sequence[Path]) -> list[str]:
        return [result.captions[0].text for result in pipeline.caption_images(list(paths), options)]

    def score(records: Sequence[ImageRecord], split: str) -> CaptionMetrics:
        return evaluate_captions(pipeline, records, options, progress=False, label=f"{name} {split}")

    return Captioner(name, caption_files, n_caption, score)


def lstm_captioner(name: str, model_dir: Path) -> Captioner:
    model = load_lstm_captioner(model_dir)

    def caption_files(paths: Sequence[Path]) -> list[str]:
        return model.caption_images([load_image(path, model.image_config) for path in paths])

    def score(records: Sequence[ImageRecord], split: str) -> CaptionMetrics:
        captions = []
        for start in range(0, len(records), CHUNK):
            captions += caption_files([r.image for r in records[start : start + CHUNK]])
        return caption_truth(records, captions)

    return Captioner(name, caption_files, parameter_count(model), score)


def compare_captioners(systems: Sequence[Captioner], images: Path, limit: int | None = None,
                       repeats: int = 20) -> dict[str, Any]:
    """Quality per split and latency per system (ms per caption from the file, median and p90)."""
    splits = {}
    for split in CAPTION_SPLITS:
        records = load_image_manifest(images, split)
        splits[split] = records if limit is None else records[:limit]
    results: dict[str, Any] = {s.name: {"n_parameters": s.n_parameters, "splits": {}} for s in systems}
    for system in systems:
        for split, records in splits.items():
            if records:
                results[system.name]["splits"][split] = asdict(system.score(records, split))
    timing_paths = [r.image for r in splits["test"][:TIMING_IMAGES]]
    latencies: dict[str, list[float]] = {s.name: [] for s in systems}
    if timing_paths:
        for system in systems:
            system.caption_files(timing_paths[:1])  # warm-up
        for r in range(repeats):
            for system in systems:  # in turn, so a busy machine slows every system alike
                begin = time.perf_counter()
                system.caption_files([timing_paths[r % len(timing_paths)]])
                latencies[system.name].append((time.perf_counter() - begin) * 1000)
    for name, values in latencies.items():
        results[name]["latency_ms"] = {"median": statistics.median(values) if values else None,
                                       "p90": float(np.percentile(values, 90)) if values else None}
    return {"limit": limit, "repeats": repeats, "systems": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caption_peers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the LSTM baseline")
    train.add_argument("--images", type=Path, default=Path("data/shapes"))
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--minutes", type=float, default=None)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    compare = commands.add_parser("compare", help="score captioners on the same images")
    compare.add_argument("--images", type=Path, default=Path("data/shapes"))
    compare.add_argument("--lstm", type=Path, nargs="*", default=[])
    compare.add_argument("--mmbm", type=Path, nargs="*", default=[])
    compare.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        print(train_lstm(args.images, args.out, args.minutes, args.max_steps, args.seed))
        return 0
    systems = [lstm_captioner(f"LSTM {p.name}", p) for p in args.lstm]
    systems += [mmbm_captioner(f"MMBM {p.name}", p) for p in args.mmbm]
    print(json.dumps(compare_captioners(systems, args.images, args.limit), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
