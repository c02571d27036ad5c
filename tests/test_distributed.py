"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch.

Each process takes half of every global batch; the contrastive loss gathers the
embeddings of both, and DDP averages the gradients. The two runs must agree up
to float32 rounding: the gradient all-reduce adds two half-batch sums instead of
summing one batch, and matmuls over 2 rows block differently from matmuls over
4, so results differ in the last bits (~1e-7 relative in the losses). Adam then
divides each update by sqrt(v): where a gradient is near zero a last-bit
difference becomes a visible share of that coordinate's step, so weights are
compared to 5e-5 absolute (1.7 % of one step of lr 3e-3; measured: 6.5e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmbm.training.logs import LOG_FILE
from mmbm.training.train_config import add_train_arguments, config_from_args
from mmbm.training.trainer import train
from tests.helpers import REPO

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5


def losses(out: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("mixing", "grad_accum"), [("round_robin", 3), ("sum", 2)])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    training_corpora: tuple[Path, Path], tmp_path: Path, mixing: str, grad_accum: int
) -> None:
    images, speech = training_corpora
    flags = ["--images", str(images), "--speech", str(speech), "--max-steps", "3", "--batch-size", "4",
             "--speech-batch-size", "4", "--warmup-steps", "1", "--lr", "3e-3", "--precision", "fp32",
             "--device", "cpu", "--no-progress", "--n-val-images", "4", "--n-val-clips", "4", "--d-model", "32",
             "--n-layers", "1", "--n-heads", "2", "--d-ff", "64", "--vocab-size", "64", "--image-size", "16",
             "--mixing", mixing, "--grad-accum", str(grad_accum)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mmbm.training", "--out", str(tmp_path / "two"), *flags]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    train(config_from_args(parser.parse_args(["--out", str(tmp_path / "one"), *flags])))

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("caption_loss", "contrastive_loss", "ctc_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (a["step"], key)
    weights_one = load_file(tmp_path / "one" / "checkpoints" / "step-0000003" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "checkpoints" / "step-0000003" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    assert worst < WEIGHT_ATOL
