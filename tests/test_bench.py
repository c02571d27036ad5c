"""The benchmark (bench/): pocketsphinx and its grammar, the LSTM baseline, single-task runs, the quick report."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from bench.caption_peers import train_lstm
from bench.lstm_captioner import (
    LSTMCaptioner,
    LSTMCaptionerConfig,
    load_lstm_captioner,
    pad_captions,
    save_lstm_captioner,
)
from bench.report import TABLES
from bench.run_all import build_parser, main, resolve
from bench.speech_peers import PocketSphinx, _grammar_words, noisy_copy, shapesworld_jsgf
from mmbm.audio import load_audio, resample
from mmbm.errors import CheckpointError, ConfigError
from mmbm.image import load_image
from mmbm.shapesworld.captions import VOCABULARY
from mmbm.shapesworld.corpus import generate_image_corpus, load_image_manifest
from mmbm.shapesworld.shapes import ShapesConfig
from mmbm.shapesworld.speech import SpeechConfig, generate_speech_corpus
from mmbm.shapesworld.tts import make_engine
from mmbm.shapesworld.words import NUMBER_WORDS
from mmbm.training.mixing import plan_micro_steps

TINY_MODEL = ("--d-model 32 --n-layers 1 --n-heads 2 --d-ff 64 --patch-size 8 --vocab-size 256 --image-size 32 "
              "--batch-size 4 --speech-batch-size 4 --n-val-images 4 --n-val-clips 4 --warmup-steps 1")


def needs(engine: str) -> None:
    if not make_engine(engine).available():
        pytest.skip(f"TTS engine {engine} is not installed")


def flite(text: str, path: Path) -> Path:
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench") / "shapes"
    config = ShapesConfig(image_size=32, n_train=16, n_val=4, n_test=4, n_compositional=4, n_heldout_pairs=2,
                          supersample=1, seed=0)
    return generate_image_corpus(folder, config, progress=False).out_dir


# ----- speech peers --------------------------------------------------------------------------


def test_grammar_speaks_exactly_the_shapesworld_language_and_its_numbers() -> None:
    grammar = shapesworld_jsgf()
    assert grammar.startswith("#JSGF V1.0;") and "public <utterance>" in grammar
    assert _grammar_words(grammar) == {w for phrase in (*VOCABULARY, *NUMBER_WORDS) for w in phrase.split()}
    assert "<one> [<size>] [<colour>] <singular>" in grammar  # "a" and "one" take the singular
    decoder = PocketSphinx(grammar)
    assert decoder.added_words == {"hexagons": "HH EH K S AH G AA N Z"}  # the one word cmudict lacks


@pytest.mark.tts
def test_pocketsphinx_with_the_grammar_hears_digits_and_a_caption(tmp_path: Path) -> None:
    needs("flite")
    grammar, general = PocketSphinx(shapesworld_jsgf()), PocketSphinx()
    digits = load_audio(flite("seven three nine", tmp_path / "digits.wav"))
    caption = load_audio(flite("two red hexagons above a star", tmp_path / "caption.wav"))
    assert grammar.transcribe(digits) == "seven three nine"
    assert grammar.transcribe(caption) == "two red hexagons above a star"
    assert "seven" in general.transcribe(digits).split()  # the general model runs too (and is weaker)


def test_noisy_copy_is_deterministic_at_the_asked_snr() -> None:
    wave = (0.3 * np.sin(np.linspace(0, 400 * np.pi, 16_000))).astype(np.float32)
    first, again, other = noisy_copy(wave, 10.0, 0, 3), noisy_copy(wave, 10.0, 0, 3), noisy_copy(wave, 10.0, 0, 4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    noise = first.astype(np.float64) - wave
    assert 10 * math.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(10.0, abs=0.01)


# ----- the LSTM baseline -------------------------------------------------------------------


def test_lstm_captioner_learns_16_scenes_and_round_trips(images: Path, tmp_path: Path) -> None:
    result = train_lstm(images, tmp_path / "lstm", max_steps=30, seed=0, batch_size=16, log_every=10)
    rows = [json.loads(line) for line in (tmp_path / "lstm" / "lstm_log.jsonl").read_text().splitlines()]
    assert result.steps == 30 and len(rows) == 3
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], rows  # it learns the 16 scenes' captions
    model = load_lstm_captioner(tmp_path / "lstm")
    pixels = torch.randn(3, 3, 32, 32)
    again = load_lstm_captioner(tmp_path / "lstm")
    assert model.generate(pixels) == again.generate(pixels)
    records = load_image_manifest(images, "train")[:4]
    captions = model.caption_images([load_image(r.image, model.image_config) for r in records])
    assert all(c and set(c.split()) <= set(model.config.vocabulary) for c in captions)


def test_lstm_captioner_shapes_and_refusals(tmp_path: Path) -> None:
    model = LSTMCaptioner(LSTMCaptionerConfig(("a", "red", "circle"), image_size=32, pooled_grid=2)).eval()
    ids = pad_captions([model.encode_text("a red circle"), model.encode_text("a circle")])
    assert ids.tolist()[1][-1] == 0 and model(torch.zeros(2, 3, 32, 32), ids).shape == (2, 5, 7)
    assert model.decode_ids(model.encode_text("a blue circle")) == "a circle"  # unknown word -> <unk>, dropped
    with pytest.raises(ConfigError, match="image_size: 30 must be divisible"):
        LSTMCaptionerConfig(("a",), image_size=30)
    with pytest.raises(ConfigError, match="vocabulary: has repeated words"):
        LSTMCaptionerConfig(("a", "a"))
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_lstm_captioner(tmp_path)
    save_lstm_captioner(model, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mmbm"}))
    with pytest.raises(CheckpointError, match="not an lstm-captioner config"):
        load_lstm_captioner(tmp_path)


# ----- single-task runs and the command line ------------------------------------------------


def test_a_zero_weight_takes_the_task_out_of_every_micro_step() -> None:
    plan = plan_micro_steps("sum", 2, {"caption": 1.0, "retrieval": 0.0, "speech": 0.0})
    assert [m.tasks for m in plan] == [("caption",), ("caption",)]
    assert not any(m.needs_speech for m in plan) and plan[0].scales == {"caption": 0.5}
    plan = plan_micro_steps("round_robin", 3, {"caption": 0.0, "retrieval": 1.0, "speech": 1.0})
    assert [m.tasks for m in plan] == [("retrieval",), ("speech",), ("retrieval",)]
    with pytest.raises(ConfigError, match="at least one must be positive"):
        plan_micro_steps("sum", 1, {"caption": 0.0, "retrieval": 0.0, "speech": 0.0})


def test_bad_benchmark_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--steps: must be at least 1"):
        resolve(build_parser().parse_args(["--quick", "--steps", "0"]))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(build_parser().parse_args(["--quick", "--images", str(tmp_path / "nope")]))
    assert main(["--quick", "--images", str(tmp_path / "nope")]) == 2
    with pytest.raises(CheckpointError, match="checkpoint is missing config.json"):
        resolve(build_parser().parse_args(["--quick", "--images", str(tmp_path), "--speech", str(tmp_path),
                                           "--model", str(tmp_path)]))


# ----- the quick benchmark ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.tts
def test_quick_benchmark_writes_every_table_and_resumes(images: Path, tmp_path: Path) -> None:
    needs("espeak")
    needs("flite")
    captions = [c for r in load_image_manifest(images, "train") for c in r.captions]
    speech = tmp_path / "speech"
    generate_speech_corpus(speech, captions, SpeechConfig(seed=0, n_train=8, n_val=4, n_test=3, n_heldout=3,
                                                          engines=("espeak", "flite"), heldout_family="awb",
                                                          n_workers=2), progress=False)
    real = tmp_path / "real"
    real.mkdir()
    for i, text in enumerate(("seven", "three")):  # 8 kHz recordings, as the real set holds
        wave = load_audio(flite(text, real / f"{i}.wav"))
        soundfile.write(real / f"{i}.wav", resample(wave, 16_000, 8_000), 8_000, subtype="PCM_16")
    (real / "manifest.jsonl").write_text("".join(json.dumps({"audio": f"{i}.wav", "text": t, "speaker": "slt"}) + "\n"
                                                 for i, t in enumerate(("seven", "three"))))
    out = tmp_path / "bench"
    argv = ["--quick", "--images", str(images), "--speech", str(speech), "--real-speech", str(real / "manifest.jsonl"),
            "--out", str(out), "--train-flags", TINY_MODEL, "--limit", "3"]
    assert main(argv) == 0
    report = (out / "benchmarks.md").read_text()
    for heading in TABLES:
        assert f"## {heading}" in report
    for name in ("speech-wer", "captions", "fusion", "shared"):
        assert (out / "assets" / f"bench-{name}.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert set(results["trainings"]) == {"shared", "caption-attention", "retrieval-only", "speech-only",
                                         "caption-concat", "caption-multiply", "shared-caption-x3"}
    assert results["trainings"]["shared-caption-x3"]["run"]["weights"] == [3.0, 1.0, 1.0]
    points = results["gradients"]["points"]
    assert [p["init"] for p in points.values()] == [True, False, False]
    for point in points.values():
        shares = point["summary"]["backbone"]["adam_share"]
        assert set(shares) == {"caption", "retrieval", "speech"} and sum(shares.values()) == pytest.approx(1.0)
    assert "### Why: each task's gradient on the shared weights" in report
    assert results["trainings"]["speech-only"]["run"]["tasks"] == ["speech"]
    speech_only_log = (out / "speech-only" / "train_log.jsonl").read_text()
    assert '"caption_loss": NaN' in speech_only_log  # the caption task really did not run
    sets = results["speech"]["sets"]
    assert set(sets) == {"seen", "heldout", "heldout_noisy_10db", "real"}
    grammar = sets["real"]["systems"]["pocketsphinx (ShapesWorld grammar)"]
    assert grammar["rates"]["n_utterances"] == 2 and grammar["rtf_median"] > 0
    evaluated = results["trainings"]["shared"]["metrics"]["speech"]["sets"]  # mmbm.evaluate on the same model
    for name in ("seen", "heldout_noisy_10db", "real"):  # same clips, same noise, same decoders: same hypotheses
        for system, method in (("MMBM greedy", "greedy"), ("MMBM beam+lexicon", "beam+lexicon")):
            assert sets[name]["systems"][system]["rates"] == evaluated[name]["methods"][method]["rates"]
    assert set(results["captions"]["systems"]) >= {"LSTM (seed, init-state)", "MMBM caption-only (attention)"}
    stamp = (out / "shared" / "bench_run.json").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun skips every finished stage
    assert (out / "shared" / "bench_run.json").stat().st_mtime_ns == stamp


# ----- audio stem ablation -------------------------------------------------------------------


def test_speech_stem_ablation_trains_every_variant_and_refuses_bad_input(tmp_path: Path) -> None:
    from bench.speech_stem import main as speech_stem

    folder = tmp_path / "speech"
    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, texts in (("train", ["one two", "three", "four five six"]), ("val", ["one", "two three"])):
        rows = []
        for i, text in enumerate(texts):
            path = folder / "clips" / f"{split}{i}.wav"
            soundfile.write(path, 0.1 * rng.standard_normal(8_000 + 4_000 * i), 16_000)
            rows.append(json.dumps({"audio": f"clips/{path.name}", "text": text}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "stem.json"
    assert speech_stem(["--speech", str(folder), "--steps", "2", "--eval-every", "1", "--batch-size", "2",
                        "--no-augment", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == ["4x no LayerNorm", "4x", "8x no LayerNorm", "8x"]
    for result in results:
        assert [p["step"] for p in result["curve"]] == [1, 2]
        assert all(p["cer"] >= 0.0 and math.isfinite(p["loss"]) for p in result["curve"])
    assert speech_stem(["--speech", str(tmp_path / "missing"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        speech_stem(["--speech", str(folder), "--variants", "16x"])


# ----- task gradients -----------------------------------------------------------------------


def test_task_gradients_split_the_summed_gradient_by_task_and_shares_sum_to_one(tmp_path: Path) -> None:
    from bench.task_gradients import TASKS, main, summarize, task_gradients
    from mmbm.config import ImageConfig, ModelConfig
    from mmbm.data.datasets import ImageTextItem, SpeechItem, collate_image_text, collate_speech
    from mmbm.model.model import MMBM
    from mmbm.training.distributed import Distributed
    from mmbm.training.objective import MultiTaskModule

    config = ModelConfig.tiny(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=40, d_embed=16,
                              max_audio_tokens=64, image=ImageConfig(image_size=32))
    torch.manual_seed(0)
    model = MMBM(config).train()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        items = [ImageTextItem(torch.randn(3, 32, 32, generator=g), ids, i, ids)
                 for i, ids in enumerate([torch.tensor([1, 7, 9, 2]), torch.tensor([1, 11, 2]),
                                          torch.tensor([1, 8, 8, 12, 2])])]
        clips = [SpeechItem(torch.randn(config.audio.n_mels, 90 + 10 * i, generator=g), torch.tensor([5 + i, 6]), i)
                 for i in range(3)]
        batches.append((collate_image_text(items, 0), collate_speech(clips, 0)))

    per_batch = [task_gradients(model, image_text, speech) for image_text, speech in batches]
    # the tasks' gradients add up to the gradient of the summed loss the trainer backpropagates
    model.zero_grad()
    losses = MultiTaskModule(model, 0.1, Distributed(0, 1, 0, torch.device("cpu")))(TASKS, *batches[0])
    sum(losses.values()).backward()
    total = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                       for module in model.children() for p in module.parameters()])
    torch.testing.assert_close(torch.cat([sum(per_batch[0][t][part] for t in TASKS) for part in per_batch[0]["caption"]]),
                               total, rtol=1e-4, atol=1e-6)
    assert float(per_batch[0]["speech"]["image_stem"].abs().max()) == 0.0  # speech does not read the image stem
    assert float(per_batch[0]["caption"]["audio_stem"].abs().max()) == 0.0

    summary = summarize(per_batch)
    assert summary["backbone"]["tasks"] == list(TASKS)
    assert set(summary["backbone"]["cosine"]) == {"caption~retrieval", "caption~speech", "retrieval~speech"}
    assert all(-1.0 <= c <= 1.0 for c in summary["backbone"]["cosine"].values())
    assert sum(summary["backbone"]["adam_share"].values()) == pytest.approx(1.0)
    assert sum(summary["image_stem"]["adam_share"].values()) == pytest.approx(1.0)
    assert "cosine" not in summary["audio_stem"] and summary["audio_stem"]["norm"]["speech"] > 0
    assert main(["--model", str(tmp_path / "missing")]) == 2  # a clear error, not a traceback
    assert main(["--model", str(tmp_path), "--batches", "0"]) == 2
