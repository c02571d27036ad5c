"""``make bench``: every comparison of docs/benchmarks.md in one resumable command.

    python -m bench.run_all --model models/mmbm-tiny \\
        --real-speech ../shared/data/fsdd-dev/manifest.jsonl          # full: writes docs/benchmarks.md
    python -m bench.run_all --quick                                    # smoke test: tiny budgets, OUT/benchmarks.md

Stages, each skipped when its result is already in ``--out`` (default
runs/bench, or runs/bench-quick): (1) the seven MMBM training runs of
bench.ablation (shared, one per task, the fusion ablation, the shared model
with captioning weighted 3x) and their evaluations, then bench.task_gradients
on the shared models (how large each task's gradient is on the shared weights,
and its share of Adam's step there); (2) the seed's LSTM captioner, trained for
the wall-clock minutes the caption-only MMBM took (or ``--lstm-minutes``);
(3) every captioner on the same test and compositional images
(bench.caption_peers); (4) MMBM beside
pocketsphinx on the same clips (bench.speech_peers; ``--model`` is the MMBM
judged there, by default the shared model trained here). Then the report and
its plots are written from scratch (bench.report). Stop it at any point and
rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.ablation import FUSION_RUNS, REWEIGHTED_RUN, RUNS, Budget, run_all_trainings
from bench.caption_peers import compare_captioners, lstm_captioner, mmbm_captioner, train_lstm, trained_lstm
from bench.report import write_report
from bench.speech_peers import run_speech_peers
from bench.task_gradients import load_model, measure
from mmbm.device import hardware_description
from mmbm.errors import ConfigError, MMBMError
from mmbm.files import write_text_atomic
from mmbm.pipeline import model_identity
from mmbm.training.train_config import TASKS

logger = logging.getLogger("bench.run_all")

FULL = {"steps": 600, "limit": None, "gallery_size": 1000, "repeats": 20, "out": Path("runs/bench"),
        "gradient_batches": (8, 32, 16)}
QUICK = {"steps": 2, "limit": 4, "gallery_size": 8, "repeats": 3, "out": Path("runs/bench-quick"),
         "lstm_max_steps": 5, "gradient_batches": (1, 4, 2)}
# bench.task_gradients on: (label, run, freshly initialised?)
GRADIENT_POINTS = (("shared, at initialisation", "shared", True), ("shared, trained", "shared", False),
                   ("shared caption x3, trained", REWEIGHTED_RUN, False))
LSTM_NAME = "LSTM (seed, init-state)"
FUSION_NAMES = {fusion: f"MMBM caption-only ({fusion})" for fusion in FUSION_RUNS}


def _cached(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The result stored at ``path`` when it was made with exactly ``settings``."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    return stored["result"] if stored.get("settings") == settings else None


def _store(path: Path, settings: dict[str, Any], result: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps({"settings": settings, "result": result}, indent=1) + "\n")


def _validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["step"], r["caption_accuracy"]) for r in rows if r.get("kind") == "eval" and "caption_accuracy" in r]


def task_gradient_stage(out: Path, args: argparse.Namespace, trainings: dict[str, Any]) -> dict[str, Any]:
    """bench.task_gradients at each of GRADIENT_POINTS (cached in OUT/gradients.json)."""
    batches, batch_size, speech_batch_size = args.gradient_batches
    weights = {run.name: dict(zip(TASKS, run.weights, strict=True)) for run in RUNS}
    settings = {"images": str(args.images), "speech": str(args.speech), "seed": args.seed, "batches": batches,
                "batch_size": batch_size, "speech_batch_size": speech_batch_size,
                "models": {label: model_identity(out / run) for label, run, _ in GRADIENT_POINTS}}
    cached = _cached(out / "gradients.json", settings)
    if cached is not None:
        return cached
    points = {}
    for label, run, init in GRADIENT_POINTS:
        logger.info("task gradients: %s", label)
        model, tokenizer = load_model(out / run, init, args.seed)
        points[label] = {"run": run, "init": init, "weights": weights[run], "steps": 0 if init else
                         trainings[run]["run"]["steps"], "summary": measure(
                             model, tokenizer, args.images, args.speech, batches, batch_size, speech_batch_size,
                             args.seed, weights[run], progress=False)}
    result = {"batches": batches, "batch_size": batch_size, "speech_batch_size": speech_batch_size,
              "command": f"python -m bench.task_gradients --model {out}/RUN --images {args.images} --speech "
                         f"{args.speech} --batches {batches} --batch-size {batch_size} --speech-batch-size "
                         f"{speech_batch_size} --weights CAPTION CONTRASTIVE CTC [--init]", "points": points}
    _store(out / "gradients.json", settings, result)
    return result


def run_benchmark(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """All stages (resumable) -> the results dict bench.report reads."""
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    budget = Budget(args.images, args.speech, args.steps, args.seed, args.threads, tuple(args.train_flags))
    trainings = run_all_trainings(out, budget, args.real_speech, args.limit, args.gallery_size)

    gradients = task_gradient_stage(out, args, trainings)
    caption_run = trainings[FUSION_RUNS["attention"]]["run"]
    minutes = args.lstm_minutes if args.lstm_minutes is not None else caption_run["train_seconds"] / 60
    lstm_dir = out / "lstm"
    lstm = trained_lstm(lstm_dir)
    if lstm is None or (lstm["minutes"], lstm["max_steps"], lstm["seed"]) != (minutes, args.lstm_max_steps,
                                                                               args.seed):
        train_lstm(args.images, lstm_dir, minutes, args.lstm_max_steps, args.seed)
        lstm = trained_lstm(lstm_dir)
    assert lstm is not None

    model_dirs = {FUSION_NAMES[f]: out / run for f, run in FUSION_RUNS.items()}
    model_dirs["MMBM shared (trained here)"] = out / "shared"
    if args.model is not None:
        model_dirs[f"MMBM {args.model.name} (--model)"] = args.model
    settings = {"images": str(args.images), "limit": args.limit, "repeats": args.repeats,
                "lstm": lstm, "models": {name: model_identity(path) for name, path in model_dirs.items()}}
    captions = _cached(out / "captions.json", settings)
    if captions is None:
        systems = [lstm_captioner(LSTM_NAME, lstm_dir)]
        systems += [mmbm_captioner(name, path) for name, path in model_dirs.items()]
        captions = compare_captioners(systems, args.images, args.limit, args.repeats)
        _store(out / "captions.json", settings, captions)

    speech_model = args.model if args.model is not None else out / "shared"
    settings = {"model": model_identity(speech_model), "speech": str(args.speech),
                "real_speech": [str(p) for p in args.real_speech], "limit": args.limit, "threads": args.threads}
    speech = _cached(out / "speech.json", settings)
    if speech is None:
        speech = run_speech_peers(speech_model, args.speech, args.real_speech, args.limit, threads=args.threads)
        _store(out / "speech.json", settings, speech)

    caption_training = {FUSION_NAMES[f]: {"steps": trainings[run]["run"]["steps"],
                                          "seconds": trainings[run]["run"]["train_seconds"]}
                        for f, run in FUSION_RUNS.items()}
    caption_training["MMBM shared (trained here)"] = {"steps": trainings["shared"]["run"]["steps"],
                                                      "seconds": trainings["shared"]["run"]["train_seconds"]}
    caption_training[LSTM_NAME] = {"steps": lstm["steps"], "seconds": lstm["seconds"]}
    real = " ".join(f"--real-speech {shlex.quote(str(p))}" for p in args.real_speech)
    meta = {"command": command, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "hardware": hardware_description(torch.device("cpu")), "seed": args.seed, "steps": args.steps,
            "threads": args.threads, "quick": args.quick, "seconds": time.perf_counter() - start,
            "speech_command": f"python -m bench.speech_peers --model {speech_model} --speech {args.speech} {real} "
                              f"--threads {args.threads}" + (f" --limit {args.limit}" if args.limit else ""),
            "caption_command": f"{caption_run['command']}; then python -m bench.caption_peers train --images "
                               f"{args.images} --out {lstm_dir} --minutes {minutes:.2f} --seed {args.seed}"}
    return {"meta": meta, "speech": speech, "trainings": trainings, "gradients": gradients, "lstm": lstm,
            "captions": captions,
            "caption_training": caption_training,
            "caption_names": {"lstm": LSTM_NAME, "mmbm": FUSION_NAMES["attention"], "fusions": FUSION_NAMES},
            "validation_curves": {run: _validation_curve(out / run) for run in FUSION_RUNS.values()}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke-test budgets (CI); the report goes to OUT, not docs/")
    add("--images", type=Path, default=Path("data/shapes"))
    add("--speech", type=Path, default=Path("data/speech"))
    add("--real-speech", type=Path, action="append", default=[], help="JSONL manifest of real recordings (repeat)")
    add("--model", type=Path, default=None, help="MMBM judged against pocketsphinx (default: the shared model "
                                                 "trained here); also listed in the caption table")
    add("--out", type=Path, default=None, help="work folder (default runs/bench, quick: runs/bench-quick)")
    add("--steps", type=int, default=None, help="optimizer steps of every MMBM run (default 600, quick 2)")
    add("--lstm-minutes", type=float, default=None, help="LSTM budget (default: the caption-only MMBM's minutes)")
    add("--lstm-max-steps", type=int, default=None, help="also stop the LSTM after this many steps (quick: 5)")
    add("--limit", type=int, default=None, help="at most N images per split / clips per set (quick: 4)")
    add("--gallery-size", type=int, default=None, help="retrieval gallery (default 1000, quick 8)")
    add("--repeats", type=int, default=None, help="timing repeats (default 20, quick 3)")
    add("--seed", type=int, default=0)
    add("--gradient-batches", type=int, nargs=3, default=None, metavar=("N", "PAIRS", "CLIPS"),
        help="bench.task_gradients: N batches of PAIRS image-caption pairs and CLIPS clips (default 8 32 16)")
    add("--threads", type=int, default=1, help="torch threads everywhere (1 is fastest on a shared 2-core CPU)")
    add("--train-flags", default="", help="more mmbm.training flags for every run, e.g. '--batch-size 16'")
    add("--report", type=Path, default=None, help="markdown page (default docs/benchmarks.md, quick: OUT/)")
    add("--assets", type=Path, default=None, help="plot folder (default docs/assets, quick: OUT/assets)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults of the chosen mode; refuse impossible values with ConfigError."""
    defaults = QUICK if args.quick else FULL
    for name in ("steps", "limit", "gallery_size", "repeats", "out", "lstm_max_steps", "gradient_batches"):
        if getattr(args, name) is None:
            setattr(args, name, defaults.get(name))
    args.train_flags = shlex.split(args.train_flags)
    if args.report is None:
        args.report = args.out / "benchmarks.md" if args.quick else Path("docs/benchmarks.md")
    if args.assets is None:
        args.assets = args.out / "assets" if args.quick else Path("docs/assets")
    for name in ("steps", "gallery_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: must be at least 1, got {args.limit}")
    if args.lstm_minutes is not None and args.lstm_minutes <= 0:
        raise ConfigError(f"--lstm-minutes: must be positive, got {args.lstm_minutes}")
    for path in (args.images, args.speech, *args.real_speech):
        if not path.exists():
            raise ConfigError(f"{path} does not exist (make data builds data/shapes and data/speech)")
    if args.model is not None:
        model_identity(args.model)  # CheckpointError now, not after hours of training
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = resolve(build_parser().parse_args(argv))
        results = run_benchmark(args, "python -m bench.run_all " + " ".join(map(shlex.quote, argv)))
        write_text_atomic(args.out / "results.json", json.dumps(results, indent=1) + "\n")
        path = write_report(results, args.report, args.assets)
    except MMBMError as e:
        print(f"bench.run_all: {e}", file=sys.stderr)
        return 2
    logger.info("wrote %s (%.1f min)", path, results["meta"]["seconds"] / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
