"""Where the three tasks' gradients meet in the shared model: sizes, conflicts and Adam shares.

    python -m bench.task_gradients --model runs/bench/shared --images data/shapes --speech data/speech \\
        --batches 8 [--init] [--json runs/bench/task_gradients.json]

For each of ``--batches`` fixed training batches (no augmentation; 32 image-caption
pairs and 16 clips, the trainer's defaults), computes each task's loss on the model
exactly as training does (mmbm.training.objective.MultiTaskModule) and that task's
gradient alone. Reported per model part (bench.parameters.PART_TASKS):
- the median gradient norm of each task over the batches;
- on parts that two or more tasks read, the median cosine between task gradients
  (negative: the tasks pull the shared weights in opposite directions);
- each task's share of Adam's second moment there: per weight, the task's mean
  squared gradient over the batches divided by the sum of all tasks' (the
  denominator Adam divides every task's step by), averaged over the part's
  weights. A task whose share is small moves the shared weights slowly however
  much its own loss would gain.
``--init`` measures the same architecture freshly initialised from ``--seed``
(the trainer's initialisation) instead of the trained weights.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.parameters import PART_TASKS
from mmbm.data.datasets import RetrievalDataset, SpeechDataset
from mmbm.errors import ConfigError, MMBMError
from mmbm.files import write_text_atomic
from mmbm.model.checkpoint import load_checkpoint, load_tokenizer
from mmbm.model.model import MMBM
from mmbm.tokenizer import Tokenizer
from mmbm.training.data import load_corpora
from mmbm.training.distributed import Distributed
from mmbm.training.objective import MultiTaskModule
from mmbm.training.train_config import TASKS


def _part_parameters(model: MMBM) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters of each top-level part that holds any (tied weights once, in their first part)."""
    seen: set[int] = set()
    parts: dict[str, list[torch.nn.Parameter]] = {}
    for name, module in model.named_children():
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            parts[name] = params
    return parts


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    pieces = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    return torch.cat(pieces)


Gradients = dict[str, dict[str, torch.Tensor]]  # {task: {part: flat gradient}}


def task_gradients(model: MMBM, image_text: Any, speech: Any, label_smoothing: float = 0.1) -> Gradients:
    """Each task's gradient of its own loss alone, for one batch (zeros on parts the task does not read)."""
    module = MultiTaskModule(model, label_smoothing, Distributed(0, 1, 0, torch.device("cpu")))
    parts = _part_parameters(model)
    params = [p for ps in parts.values() for p in ps]
    losses = module(TASKS, image_text, speech)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, task in enumerate(TASKS):
        grads = torch.autograd.grad(losses[task], params, retain_graph=i < len(TASKS) - 1, allow_unused=True)
        flat, start = {}, 0
        for part, ps in parts.items():
            flat[part] = _flat(grads[start:start + len(ps)], ps)
            start += len(ps)
        out[task] = flat
    return out


def summarize(per_batch: list[Gradients]) -> dict[str, Any]:
    """Median norms, median pairwise cosines and Adam second-moment shares per part (see the module doc)."""
    parts = list(per_batch[0][TASKS[0]])
    result: dict[str, Any] = {}
    for part in parts:
        readers = [t for t in TASKS if t in PART_TASKS.get(part, TASKS)]
        entry: dict[str, Any] = {"tasks": readers, "n_parameters": int(per_batch[0][readers[0]][part].numel()),
                                 "norm": {t: statistics.median(float(b[t][part].norm()) for b in per_batch)
                                          for t in readers}}
        if len(readers) > 1:
            entry["cosine"] = {
                f"{a}~{b}": statistics.median(float(torch.nn.functional.cosine_similarity(
                    batch[a][part], batch[b][part], dim=0)) for batch in per_batch)
                for a, b in itertools.combinations(readers, 2)}
            second = {t: torch.stack([b[t][part] ** 2 for b in per_batch]).mean(0) for t in readers}
            total = sum(second.values())
            live = total > 0
            entry["adam_share"] = {t: float((second[t][live] / total[live]).mean()) for t in readers}
        result[part] = entry
    return result


def measure(model: MMBM, tokenizer: Tokenizer, images: Path, speech: Path, batches: int, batch_size: int,
            speech_batch_size: int, seed: int, weights: dict[str, float] | None = None,
            progress: bool = True) -> dict[str, Any]:
    """The summary over ``batches`` fixed, unaugmented training batches; each task's gradient is scaled by its
    training weight in ``weights`` (default 1), as the optimizer receives it."""
    corpora = load_corpora(images, speech)
    n_images, n_clips = batches * batch_size, batches * speech_batch_size
    if len(corpora.train_images) < n_images or len(corpora.train_speech) < n_clips:
        raise ConfigError(f"--batches {batches} needs {n_images} training images and {n_clips} clips; the corpora "
                          f"have {len(corpora.train_images)} and {len(corpora.train_speech)}")
    image_set = RetrievalDataset(corpora.train_images[:n_images], tokenizer, model.config.image,
                                 max_text_len=model.config.max_text_len, seed=seed)
    speech_set = SpeechDataset(corpora.train_speech[:n_clips], tokenizer, model.config.audio, seed=seed)
    model.train()
    per_batch = []
    for k in tqdm(range(batches), desc="task gradients", unit="batch", disable=not progress):
        image_text = image_set.collate([image_set[i] for i in range(k * batch_size, (k + 1) * batch_size)])
        clips = speech_set.collate([speech_set[i] for i in range(k * speech_batch_size,
                                                                 (k + 1) * speech_batch_size)])
        gradients = task_gradients(model, image_text, clips)
        per_batch.append({t: {part: (weights or {}).get(t, 1.0) * g for part, g in by_part.items()}
                          for t, by_part in gradients.items()})
    return summarize(per_batch)


def load_model(directory: Path, init: bool, seed: int) -> tuple[MMBM, Tokenizer]:
    """The trained model in ``directory`` (or its architecture freshly initialised from ``seed``, as the trainer
    does) on the CPU, and its tokenizer."""
    model = load_checkpoint(directory, "cpu")
    if init:
        torch.manual_seed(seed)
        model = MMBM(model.config)
    return model, load_tokenizer(directory)


def format_table(summary: dict[str, Any]) -> str:
    lines = ["| part | parameters | grad norm (caption / retrieval / speech) | cosine | Adam share |",
             "|---|---:|---|---|---|"]
    for part, e in summary.items():
        norms = " / ".join(f"{e['norm'][t]:.3g}" if t in e["norm"] else "-" for t in TASKS)
        cos = ", ".join(f"{k} {v:+.3f}" for k, v in e.get("cosine", {}).items()) or "-"
        share = ", ".join(f"{k} {v:.2f}" for k, v in e.get("adam_share", {}).items()) or "-"
        lines.append(f"| {part} | {e['n_parameters']:,} | {norms} | {cos} | {share} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.task_gradients", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", type=Path, required=True, help="trained model folder (model.safetensors, tokenizer.json)")
    add("--images", type=Path, default=Path("data/shapes"))
    add("--speech", type=Path, default=Path("data/speech"))
    add("--batches", type=int, default=8)
    add("--batch-size", type=int, default=32)
    add("--speech-batch-size", type=int, default=16)
    add("--seed", type=int, default=0)
    add("--weights", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("CAPTION", "CONTRASTIVE", "CTC"),
        help="the run's task weights (mmbm.training --caption-weight ...)")
    add("--init", action="store_true", help="measure the architecture freshly initialised instead")
    add("--threads", type=int, default=1)
    add("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        for name in ("batches", "batch_size", "speech_batch_size"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
        model, tokenizer = load_model(args.model, args.init, args.seed)
        summary = measure(model, tokenizer, args.images, args.speech, args.batches, args.batch_size, args.speech_batch_size,
                          args.seed, dict(zip(TASKS, args.weights, strict=True)))
    except MMBMError as e:
        print(f"bench.task_gradients: {e}", file=sys.stderr)
        return 2
    command = "python -m bench.task_gradients " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command}\n\n{format_table(summary)}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps({"command": command, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
