"""The trainer: mixing schedule, LR schedule, exact resume, atomic checkpoints, refusals, logs, base smoke test."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmbm.config import ModelConfig
from mmbm.errors import CheckpointError, ConfigError, DataError
from mmbm.model.checkpoint import load_checkpoint
from mmbm.model.model import MMBM
from mmbm.tokenizer import Tokenizer
from mmbm.training import state as checkpoints
from mmbm.training.data import EpochBatchSampler
from mmbm.training.logs import LOG_FILE, PLOT_FILE, TENSORBOARD_DIR, RunLog
from mmbm.training.mixing import plan_micro_steps
from mmbm.training.objective import parameter_groups
from mmbm.training.schedule import Schedule
from mmbm.training.train_config import TrainConfig, add_train_arguments, config_from_args
from mmbm.training.trainer import build_model, train
from tests.helpers import make_speech_corpus, tiny_model_config, tiny_train_config

WEIGHTS = {"caption": 1.0, "retrieval": 0.5, "speech": 2.0}


def train_rows(out: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


# ---------------------------------------------------------------- mixing and LR schedule


def test_sum_mixing_shows_every_task_in_every_micro_step_with_weight_over_count() -> None:
    plan = plan_micro_steps("sum", 2, WEIGHTS)
    assert [m.tasks for m in plan] == [("caption", "retrieval", "speech")] * 2
    assert all(m.needs_image_text and m.needs_speech for m in plan)
    assert plan[0].scales == {"caption": 0.5, "retrieval": 0.25, "speech": 1.0}  # weight / 2 micro-steps


def test_round_robin_mixing_takes_turns_and_each_step_sums_to_the_weights() -> None:
    plan = plan_micro_steps("round_robin", 6, WEIGHTS)
    assert [m.tasks for m in plan] == [("caption",), ("retrieval",), ("speech",)] * 2
    assert [m.needs_speech for m in plan] == [False, False, True] * 2
    for task, weight in WEIGHTS.items():
        assert sum(m.scales.get(task, 0.0) for m in plan) == pytest.approx(weight)


def test_a_zero_weight_leaves_its_task_out_of_every_micro_step() -> None:
    plan = plan_micro_steps("sum", 2, {"caption": 1.0, "retrieval": 1.0, "speech": 0.0})
    assert [m.tasks for m in plan] == [("caption", "retrieval")] * 2 and not any(m.needs_speech for m in plan)
    with pytest.raises(ConfigError, match="at least one must be positive"):
        plan_micro_steps("sum", 1, dict.fromkeys(WEIGHTS, 0.0))


def test_round_robin_refuses_a_step_that_cannot_see_every_task() -> None:
    with pytest.raises(ConfigError, match="multiple of 3"):
        plan_micro_steps("round_robin", 4, WEIGHTS)
    with pytest.raises(ConfigError, match="grad_accum: round_robin needs a multiple of 3"):
        TrainConfig(out="x", max_steps=1, mixing="round_robin", grad_accum=2)


def test_schedule_peaks_after_warmup_halves_at_midpoint_and_ends_at_the_floor() -> None:
    schedule = Schedule(peak=1e-3, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert schedule.lr_at(0) == pytest.approx(1e-4)
    assert schedule.lr_at(9) == pytest.approx(1e-3)  # last warmup step reaches the peak
    assert schedule.lr_at(10) == pytest.approx(1e-3)
    assert schedule.lr_at(60) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the cosine
    assert schedule.lr_at(110) == pytest.approx(1e-4)
    assert schedule.lr_at(500) == pytest.approx(1e-4)


def test_sampler_shards_are_disjoint_and_make_up_the_global_batch() -> None:
    def first_batches(rank: int, world: int, start: int = 0) -> list[list[tuple[int, int]]]:
        sampler = EpochBatchSampler(10, 4, seed=3, stream="speech", start=start, rank=rank, world_size=world)
        iterator = iter(sampler)
        return [next(iterator) for _ in range(5)]  # 2 batches per epoch: crosses two epoch boundaries

    whole = first_batches(0, 1)
    halves = zip(first_batches(0, 2), first_batches(1, 2), strict=True)
    assert [a + b for a, b in halves] == whole
    assert [e for e, _ in whole[2]] == [1] * 4 and {i for _, i in whole[2] + whole[3]} != set()
    assert first_batches(0, 1, start=3)[:2] == whole[3:5]  # a resumed sampler continues the same order
    with pytest.raises(DataError, match="does not split over 3 processes"):
        EpochBatchSampler(10, 4, seed=0, stream="speech", start=0, rank=0, world_size=3)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = MMBM(tiny_model_config())
    decay, no_decay = parameter_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert "text_stem.token.weight" not in names and "image_stem.position" not in names
    assert not any(name.endswith("bias") or ".ln_" in name for name in names)
    assert "backbone.blocks.0.mlp.fc.weight" in names or any(name.endswith("fc.weight") for name in names)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


# ---------------------------------------------------------------- CLI and refusals


def test_cli_flags_map_onto_config_fields() -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--out", "o", "--max-steps", "7", "--batch-size", "8", "--mixing", "round_robin",
                              "--grad-accum", "3", "--no-augment", "--preset", "base", "--d-model", "64",
                              "--n-heads", "4", "--image-size", "32", "--ctc-weight", "0.5"])
    config = config_from_args(args)
    assert (config.max_steps, config.batch_size, config.mixing, config.grad_accum) == (7, 8, "round_robin", 3)
    assert config.augment is False and config.task_weights["speech"] == 0.5
    assert (config.model.d_model, config.model.n_layers, config.model.image.image_size) == (64, 12, 32)
    assert config.images == "data/shapes" and config.speech == "data/speech"


def test_config_needs_a_step_or_time_budget() -> None:
    with pytest.raises(ConfigError, match="max_steps: give --max-steps, --max-minutes or both"):
        TrainConfig(out="o")


def test_missing_corpus_folder_is_refused_before_work(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path / "nowhere", training_corpora[1], tmp_path / "out")
    with pytest.raises(DataError, match="image corpus folder not found: .*nowhere"):
        train(config)
    assert not (tmp_path / "out" / LOG_FILE).exists()


def test_incomplete_corpus_is_refused(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    speech = make_speech_corpus(tmp_path / "speech", n_train=2, n_val=1)
    (speech / "corpus.json").unlink()  # as if generation had been interrupted
    with pytest.raises(DataError, match=r"speech corpus .* is incomplete: corpus.json is missing"):
        train(tiny_train_config(training_corpora[0], speech, tmp_path / "out"))


def test_unwritable_output_folder_is_refused(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write to output folder .*a-file"):
        train(tiny_train_config(*training_corpora, blocker / "out"))


def test_a_manifest_source_needs_its_validation_manifest(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "one"}) + "\n")
    with pytest.raises(DataError, match=r"speech manifest .*train.jsonl.* needs a validation manifest \(--speech-val\)"):
        train(tiny_train_config(training_corpora[0], manifest, tmp_path / "out"))


def test_trains_from_generic_jsonl_manifests(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    images, speech = training_corpora
    for split in ("train", "val"):  # {"image", "text"} rows, one per caption, as a COCO export would give
        rows = [json.loads(line) for line in (images / f"{split}.jsonl").read_text().splitlines()]
        lines = [json.dumps({"image": str(images / r["image"]), "text": c}) for r in rows for c in r["captions"]]
        (tmp_path / f"images-{split}.jsonl").write_text("\n".join(lines) + "\n")
    result = train(tiny_train_config(tmp_path / "images-train.jsonl", speech / "train.jsonl", tmp_path / "out",
                                     images_val=str(tmp_path / "images-val.jsonl"),
                                     speech_val=str(speech / "val.jsonl"), max_steps=1))
    assert result.steps == 1 and math.isfinite(result.last_losses["loss"])


# ---------------------------------------------------------------- runs


def test_run_writes_best_model_logs_plot_and_counts_batches_per_mixing(training_corpora: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = train(tiny_train_config(*training_corpora, out, max_steps=2, mixing="round_robin", grad_accum=3,
                                     eval_every=1, checkpoint_every=2))
    assert result.steps == 2 and result.stop_reason == "max_steps"
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert [r["step"] for r in train_rows(out, "eval")] == [1, 2]
    config_row = train_rows(out, "config")[0]
    assert config_row["task_weights"] == {"caption": 1.0, "retrieval": 1.0, "speech": 1.0}
    assert (out / PLOT_FILE).stat().st_size > 10_000 and any((out / TENSORBOARD_DIR).iterdir())
    best = load_checkpoint(out)  # the best model is a complete checkpoint with its tokenizer
    assert best.config.d_model == 32 and (out / "tokenizer.json").is_file()
    saved = checkpoints.load_latest(out / "checkpoints")
    assert saved is not None and saved.state.step == 2
    # round_robin: per step, caption and retrieval each draw an image-text batch, speech one speech batch
    assert saved.state.positions == {"image_text": 4, "speech": 2}


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(training_corpora: tuple[Path, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def config(out: Path, **overrides: object) -> TrainConfig:
        return tiny_train_config(*training_corpora, out, max_steps=6, checkpoint_every=3, eval_every=2,
                                 grad_accum=2, **overrides)

    train(config(tmp_path / "straight"))
    original = RunLog.log_train

    def crash_at_step_4(self: RunLog, step: int, values: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during step 4
        original(self, step, values)

    monkeypatch.setattr(RunLog, "log_train", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "resumed"))
    monkeypatch.setattr(RunLog, "log_train", original)
    assert [r["step"] for r in train_rows(tmp_path / "resumed")] == [1, 2, 3]
    result = train(config(tmp_path / "resumed", resume=True))
    assert result.steps == 6
    straight, resumed = train_rows(tmp_path / "straight"), train_rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "caption_loss", "contrastive_loss", "ctc_loss", "lr", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["step"], key)
    final = [load_file(tmp_path / name / "checkpoints" / "step-0000006" / "model.safetensors")
             for name in ("straight", "resumed")]
    assert all(torch.allclose(final[0][k], final[1][k], atol=1e-6) for k in final[0])


def test_resume_refuses_changed_settings(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=1))
    with pytest.raises(ConfigError, match="--resume: these settings differ .*batch_size"):
        train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=1, batch_size=8, resume=True))
    with pytest.raises(CheckpointError, match="holds checkpoints of an earlier run; pass --resume"):
        train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=1))


def test_crash_mid_save_leaves_the_previous_checkpoint_loadable(training_corpora: tuple[Path, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    train(tiny_train_config(*training_corpora, out, max_steps=1))
    saved = checkpoints.load_latest(out / "checkpoints")
    assert saved is not None
    real_save = torch.save

    def dies_half_way(payload: object, f: object) -> None:
        real_save(payload, f)
        f.truncate(100)  # type: ignore[attr-defined]  # a partial file on disk ...
        raise OSError("disk full")  # ... then the process fails

    monkeypatch.setattr(checkpoints.torch, "save", dies_half_way)
    saved.state.step = 2
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(out / "checkpoints", saved.model, saved.tokenizer,
                                    torch.optim.AdamW(saved.model.parameters()), saved.state, saved.rng_states,
                                    saved.config, keep=2)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]  # no partial folder left
    latest = checkpoints.load_latest(out / "checkpoints")
    assert latest is not None and latest.state.step == 1 and latest.optimizer["state"]


def test_early_stopping_ends_a_run_whose_metric_does_not_improve(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=6, lr=1e-12, warmup_steps=0,
                                     eval_every=1, patience=1))
    assert result.stop_reason == "early_stopping" and result.steps == 2 and result.best_step == 1


def test_time_budget_stops_a_run_given_only_minutes(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=None, max_minutes=1e-4))
    assert result.stop_reason == "time_budget" and result.steps >= 1
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the final validation kept a model


def test_minutes_only_run_fits_its_schedule_to_the_measured_step_time(training_corpora: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    result = train(tiny_train_config(*training_corpora, tmp_path / "out", max_steps=None, max_minutes=0.05))
    plans = train_rows(tmp_path / "out", "plan")
    assert len(plans) == 1 and plans[0]["step"] == 10  # timed over the first max(10, warmup) steps
    assert result.planned_steps == plans[0]["planned_steps"] > 10
    assert result.steps <= result.planned_steps
    lrs = [r["lr"] for r in train_rows(tmp_path / "out")]
    if result.stop_reason == "max_steps":  # the cosine ran to its end within the budget
        assert lrs[-1] < 0.2 * max(lrs)


@pytest.mark.slow
def test_base_preset_takes_two_steps_on_the_cpu(training_corpora: tuple[Path, Path], tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_train_config(*training_corpora, tmp_path / "out"), model=ModelConfig.base(),
                                 max_steps=2, batch_size=2, speech_batch_size=2, n_val_images=2, n_val_clips=2)
    result = train(config)
    assert result.steps == 2 and all(math.isfinite(v) for v in result.last_losses.values())
    trained = load_file(tmp_path / "out" / "checkpoints" / "step-0000002" / "model.safetensors")
    initial = build_model(config, Tokenizer.load(tmp_path / "out" / "tokenizer.json")).state_dict()
    # base's conv stem: four 3x3 stride-2 convolutions, 224 px -> the 14x14 grid of 16 px patches
    assert trained["image_stem.patch.0.weight"].shape == (64, 3, 3, 3)
    assert trained["image_stem.patch.6.weight"].shape == (512, 256, 3, 3)
    changed = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert len(changed) > 0.9 * len(trained)
