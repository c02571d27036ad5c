"""Speech-only CTC runs that isolate the audio stem: 4x or 8x subsampling, with or without its LayerNorm.

    python -m bench.speech_stem --speech data/speech --steps 600 --out runs/bench/speech_stem.json

Each variant trains a fresh tiny-preset MMBM on the speech corpus alone (CTC
only, no images, no text), with the same seed, clips, batch order, optimizer and
schedule; only the stem differs. Every ``--eval-every`` steps it reports greedy
CER and WER on the first 128 validation clips, so the table shows how soon each
stem leaves the CTC blank plateau (where every frame says blank and the
transcript is empty, CER ~0.96) and how far it gets in the same number of steps.
"No LayerNorm" swaps the stem's norm for the identity, which is the stem the
first shipped model had (docs/model.md says why it was changed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmbm.config import ModelConfig
from mmbm.data.adapters import AudioTextRecord
from mmbm.data.augment import AudioAugmentConfig
from mmbm.data.datasets import SpeechDataset, collate_speech
from mmbm.decode.ctc import ctc_greedy
from mmbm.errors import DataError
from mmbm.evaluate.metrics import error_rates
from mmbm.files import write_text_atomic
from mmbm.model.losses import ctc_loss
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.tokenizer import Tokenizer, train_tokenizer
from mmbm.training.data import speech_split

VARIANTS = {  # name -> (audio_subsampling, LayerNorm after the convolutions)
    "4x no LayerNorm": (4, False),
    "4x": (4, True),
    "8x no LayerNorm": (8, False),
    "8x": (8, True),
}
N_VAL_CLIPS = 128


@torch.no_grad()
def _error_rates(model: MMBM, dataset: SpeechDataset, tokenizer: Tokenizer) -> tuple[float, float]:
    model.eval()
    hypotheses = []
    for start in range(0, len(dataset), 32):
        batch = collate_speech([dataset[i] for i in range(start, min(start + 32, len(dataset)))], tokenizer.pad_id)
        out = model.ctc_logits(batch.features, batch.feature_lengths)
        for row in range(out.log_probs.shape[0]):
            hypotheses.append(tokenizer.decode(ctc_greedy(out.log_probs[row, : int(out.lengths[row])],
                                                          model.config.blank_id)))
    model.train()
    rates = error_rates([r.text for r in dataset.records], hypotheses)
    return rates.cer, rates.wer


def run_variant(name: str, train: list[AudioTextRecord], val: list[AudioTextRecord], tokenizer: Tokenizer, *,
                steps: int, batch_size: int, lr: float, eval_every: int, augment: bool, seed: int) -> dict:
    """Train one stem variant for ``steps`` CTC steps; return its curve and seconds per step."""
    subsampling, norm = VARIANTS[name]
    torch.manual_seed(seed)
    model = MMBM(config_for_tokenizer(ModelConfig.tiny(audio_subsampling=subsampling), tokenizer))
    if not norm:
        model.audio_stem.norm = nn.Identity()
    model.train()
    train_set = SpeechDataset(train, tokenizer, model.config.audio, augment=AudioAugmentConfig() if augment else None,
                              seed=seed, cache=True)
    val_set = SpeechDataset(val, tokenizer, model.config.audio, seed=seed, cache=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    order = np.random.default_rng(seed)
    queue: list[int] = []
    epoch, curve, train_seconds = 0, [], 0.0
    for step in tqdm(range(1, steps + 1), desc=name, unit="step", file=sys.stderr):
        if len(queue) < batch_size:
            epoch += 1
            train_set.set_epoch(epoch)
            queue = [int(i) for i in order.permutation(len(train_set))]
        indices, queue = queue[:batch_size], queue[batch_size:]
        started = time.perf_counter()
        batch = collate_speech([train_set[i] for i in indices], tokenizer.pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 100)  # linear warmup, then constant: the variants differ early
        out = model.ctc_logits(batch.features, batch.feature_lengths)
        loss = ctc_loss(out.log_probs, out.lengths, batch.targets, batch.target_lengths, model.config.blank_id)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_seconds += time.perf_counter() - started
        if step % eval_every == 0 or step == steps:
            cer, wer = _error_rates(model, val_set, tokenizer)
            curve.append({"step": step, "loss": round(loss.item(), 4), "cer": round(cer, 4), "wer": round(wer, 4)})
    return {"variant": name, "curve": curve, "seconds_per_step": train_seconds / steps}


def markdown(results: Sequence[dict]) -> str:
    steps = [point["step"] for point in results[0]["curve"]]
    head = "| stem | s/step | " + " | ".join(f"CER @{s}" for s in steps) + " | WER @" + str(steps[-1]) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 3)]
    for result in results:
        cers = " | ".join(f"{point['cer']:.3f}" for point in result["curve"])
        lines.append(f"| {result['variant']} | {result['seconds_per_step']:.2f} | {cers} | "
                     f"{result['curve'][-1]['wer']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", default="data/speech", help="speech corpus folder (train.jsonl, val.jsonl)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--no-augment", action="store_true", help="train on clean clips")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {list(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/speech_stem.json", help="JSON results (the table is printed)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    folder = Path(args.speech)
    try:
        train, val = speech_split(folder, "train"), speech_split(folder, "val")[:N_VAL_CLIPS]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer = train_tokenizer([r.text for r in train], vocab_size=512)
    results = [run_variant(name, train, val, tokenizer, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           eval_every=args.eval_every, augment=not args.no_augment, seed=args.seed)
               for name in names]
    report = {"command": "python -m bench.speech_stem " + " ".join(sys.argv[1:] if argv is None else argv),
              "torch_threads": torch.get_num_threads(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
