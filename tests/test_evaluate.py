"""The evaluator: each metric on hand-made cases, and a whole run on a tiny corpus.

The tiny model is random, so its numbers are bad; these tests check that the
numbers are computed correctly and that metrics.json carries every field.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbm.audio import rms_db, save_audio
from mmbm.data.adapters import load_audio_manifest
from mmbm.decode.captions import Caption, CaptionResult, DecodingOptions
from mmbm.decode.ctc import CTCDecodingOptions
from mmbm.errors import ConfigError, DataError
from mmbm.evaluate.evaluator import EvaluateConfig, format_report, main
from mmbm.evaluate.measure import caption_truth, evaluate_captions, evaluate_speech, retrieval_metrics, speech_metrics
from mmbm.evaluate.metrics import caption_scores
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import canonical_caption, judge
from mmbm.shapesworld.corpus import ImageRecord, load_image_manifest
from mmbm.shapesworld.scene import Background, Scene, SceneObject
from mmbm.shapesworld.words import NUMBER_WORDS, SPOKEN_WORDS
from tests.helpers import SAMPLE_RATE, tone

torch.set_num_threads(1)


def write_speech_corpus(directory: Path) -> Path:
    """A ShapesWorld-layout speech corpus of tones (not speech: the model is untrained anyway)."""
    (directory / "clips").mkdir(parents=True)
    splits = {"train": NUMBER_WORDS[:8], "test": NUMBER_WORDS[:3], "heldout": NUMBER_WORDS[3:5]}
    for split, texts in splits.items():
        rows = []
        for i, text in enumerate(texts):
            clip_id = f"{split}-{i}"
            save_audio(directory / "clips" / f"{clip_id}.wav", tone(0.6, 200.0 + 40 * i), SAMPLE_RATE)
            row = {"id": clip_id, "audio": f"clips/{clip_id}.wav", "text": text, "engine": "test", "voice": "v"}
            rows.append(json.dumps({**row, "kind": "number", "duration": 0.6}))
        (directory / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (directory / "corpus.json").write_text(json.dumps({"format": "mmbm-speech-1", "counts": {}}))  # written last
    return directory


def write_real_manifest(directory: Path) -> Path:
    """8 kHz clips by two speakers, one of them silent (refused, scored as an empty transcript)."""
    (directory / "recordings").mkdir(parents=True)
    rows = []
    for i, (text, speaker) in enumerate([("zero", "ann"), ("one", "ann"), ("two", "bob"), ("three", "bob")]):
        wave = np.zeros(4_000, np.float32) if i == 3 else tone(0.5, 300.0 + 50 * i, rate=8_000)
        save_audio(directory / "recordings" / f"{i}.wav", wave, 8_000)
        rows.append(json.dumps({"audio": f"recordings/{i}.wav", "text": text, "speaker": speaker}))
    (directory / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return directory / "manifest.jsonl"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {
        "root": root,
        "images": tiny_corpus,
        "speech": write_speech_corpus(root / "speech"),
        "real": write_real_manifest(root / "fsdd-mini"),
        "model": tiny_model_dir,
    }


def test_a_whole_run_writes_every_field_with_finite_numbers_in_range(world, tmp_path: Path, capsys) -> None:
    argv = [str(world["model"]), "--images", str(world["images"]), "--speech", str(world["speech"])]
    argv += ["--real-speech", str(world["real"]), "--out", str(tmp_path), "--timing-repeats", "2", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "metrics.md").read_text() == format_report(metrics) == capsys.readouterr().out
    provenance = metrics["provenance"]
    assert provenance["command"] == "python -m mmbm.evaluate " + " ".join(argv)
    corpus_hash = hashlib.sha256((world["images"] / "corpus.json").read_bytes()).hexdigest()
    assert provenance["data"]["images"]["corpus_json"] == f"sha256:{corpus_hash}"
    assert provenance["model"]["identity"].startswith("sha256:") and provenance["hardware"] and provenance["date"]
    for split, n in (("test", 12), ("compositional", 3)):
        scores = metrics["captions"]["splits"][split]
        assert scores["n_images"] == n
        assert all(0.0 <= scores[key] <= 1.0 for key in ("faithful", "complete", "unparseable", "bleu4"))
        assert 0.0 <= scores["cider"] <= 10.0
    retrieval = metrics["retrieval"]
    assert (retrieval["gallery_size"], retrieval["n_text_queries"]) == (12, 60)
    for direction in ("text_to_image", "image_to_text"):
        recalls = [retrieval[direction][f"recall@{k}"] for k in (1, 5, 10)]
        assert recalls == sorted(recalls) and all(0.0 <= r <= 1.0 for r in recalls)
    assert all(0.0 <= p <= 1.0 for p in retrieval["semantic_precision"].values())
    sets = metrics["speech"]["sets"]
    assert list(sets) == ["seen", "heldout", "heldout_noisy_10db", "fsdd-mini"]
    assert metrics["speech"]["lexicon"]["n_words"] == len(SPOKEN_WORDS)  # the demo's lexicon, not train.jsonl's
    for entry in sets.values():
        for scores in entry["methods"].values():
            rates = scores["rates"]
            assert math.isfinite(rates["wer"]) and rates["wer"] >= 0.0 and 0.0 <= rates["word_accuracy"] <= 1.0
    real = sets["fsdd-mini"]["methods"]["greedy"]
    assert real["n_refused"] == 1 and sorted(real["per_speaker"]) == ["ann", "bob"]
    assert set(sets["fsdd-mini"]["methods"]) == {"greedy", "beam+lexicon"}
    timing = metrics["timing"]
    assert timing["caption_latency_ms"]["median"] > 0 and timing["transcription_rtf"]["median"] > 0


def test_limit_and_sections_shrink_the_run(world, tmp_path: Path) -> None:
    argv = [str(world["model"]), "--images", str(world["images"]), "--speech", "none", "--limit", "4"]
    argv += ["--sections", "captions", "retrieval", "--out", str(tmp_path), "--no-progress"]
    main(argv)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"format", "provenance", "captions", "retrieval"}
    assert metrics["captions"]["splits"]["test"]["n_images"] == 4
    assert metrics["retrieval"]["semantic_precision"]["precision@10"] is None  # 4 images cannot fill a top 10


def false_caption(scene: Scene) -> str:
    shape, colour = scene.objects[0].shape, scene.objects[0].colour
    return f"three {colour} {shape}{'es' if shape.endswith('s') else 's'}"


def test_caption_truth_rates_come_from_the_checker_through_the_decoder(world, monkeypatch) -> None:
    records = load_image_manifest(world["images"], "test")[:4]
    wanted = [
        canonical_caption(records[0].scene),
        false_caption(records[1].scene),
        "purple banana",
        canonical_caption(records[3].scene),
    ]
    verdicts = [judge(c, r.scene) for c, r in zip(wanted, records, strict=True)]
    assert [v.faithful for v in verdicts] == [True, False, False, True]
    assert [v.complete for v in verdicts] == [True, False, False, True]
    assert [v.parsed for v in verdicts] == [True, True, False, True]

    def fake_decoder(model, pixels, tokenizer, options):  # the decoder says what we want, in image order
        start = fake_decoder.calls
        fake_decoder.calls += len(pixels)
        return [CaptionResult([Caption(text, [], 0.0, None)]) for text in wanted[start : start + len(pixels)]]

    fake_decoder.calls = 0
    monkeypatch.setattr("mmbm.pipeline.generate_captions", fake_decoder)
    pipeline = Pipeline.load(world["model"], device="cpu")
    result = evaluate_captions(pipeline, records, DecodingOptions(), progress=False, label="test")
    assert (result.n_images, result.faithful, result.unparseable) == (4, 0.5, 0.25)
    assert result.complete == 0.5  # the canonical captions name every object; the false ones cannot
    expected = caption_scores(
        {r.id: list(r.captions) for r in records}, {r.id: c for r, c in zip(records, wanted, strict=True)}
    )
    assert (result.bleu4, result.cider) == (expected.bleu4, expected.cider)


def scene_of(*objects: tuple[str, str, float]) -> Scene:
    background = Background("solid", (128, 128, 128), (128, 128, 128), 0.0, 0)
    parts = tuple(SceneObject(shape, colour, "small", x, 0.5, 0.09, 0.0, (0, 0, 0)) for shape, colour, x in objects)
    return Scene(parts, background)


def test_retrieval_metrics_on_a_hand_made_similarity() -> None:
    scenes = [scene_of(("circle", "red", 0.5)), scene_of(("square", "blue", 0.5)), scene_of(("circle", "red", 0.5))]
    images = np.eye(3, dtype=np.float32)  # image g is the unit vector e_g, so similarity[q, g] = texts[q, g]
    texts = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.6], [0.3, 0.05, 0.9]], dtype=np.float32)
    queries, written_for = ["a red circle", "a red circle", "a blue square"], [0, 2, 1]
    result = retrieval_metrics(texts, images, written_for, queries, scenes)
    # text -> image: query 0 ranks 0,2,1 (own first); query 1 ranks 0,2,1 (own second); query 2 ranks 2,0,1 (own third)
    assert result.text_to_image == {"recall@1": pytest.approx(1 / 3), "recall@5": 1.0, "recall@10": 1.0}
    # image -> text: image 0 ranks q0 first (its own); image 1 ranks q1,q0,q2 (own third); image 2 ranks q2,q1 (own second)
    assert result.image_to_text == {"recall@1": pytest.approx(1 / 3), "recall@5": 1.0, "recall@10": 1.0}
    # precision@1: q0 -> image 0, a red circle (true); q1 -> image 0 (true, though not its own); q2 -> image 2 (false)
    assert result.semantic_precision["precision@1"] == pytest.approx(2 / 3)
    assert result.semantic_precision["precision@10"] is None  # a 3-image gallery has no top 10
    assert (result.gallery_size, result.n_text_queries) == (3, 3)


def test_image_to_text_recall_at_one_on_a_hand_made_similarity() -> None:
    scenes = [scene_of(("circle", "red", 0.5)), scene_of(("square", "blue", 0.5))]
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)  # captions of images 0, 1, 1
    result = retrieval_metrics(texts, np.eye(2, dtype=np.float32), [0, 1, 1], ["a red circle"] * 3, scenes)
    # image 0's best caption is caption 0 (1.0): hit; image 1's best is caption 1 (1.0): hit
    assert result.image_to_text["recall@1"] == 1.0
    # caption 2 (0.8 vs 0.6) ranks image 0 first: miss
    assert result.text_to_image["recall@1"] == pytest.approx(2 / 3)
    assert result.semantic_precision["precision@1"] == pytest.approx(2 / 3)  # "a red circle" is true of image 0 only


def test_speech_metrics_per_speaker_by_hand() -> None:
    references = ["zero one", "two", "three four"]
    hypotheses = ["zero", "two", "tree four"]
    result = speech_metrics(references, hypotheses, ["ann", "ann", "bob"], n_refused=1)
    assert result.rates.wer == pytest.approx(2 / 5) and result.rates.n_words == 5
    assert result.per_speaker["ann"].wer == pytest.approx(1 / 3) and result.per_speaker["bob"].wer == 0.5
    assert result.per_speaker["ann"].word_accuracy == pytest.approx(2 / 3) and result.n_refused == 1
    assert speech_metrics(references, hypotheses, [None] * 3).per_speaker == {}


def test_the_noisy_copy_is_deterministic_and_at_the_asked_snr(world, monkeypatch) -> None:
    pipeline = Pipeline.load(world["model"], device="cpu")
    records = load_audio_manifest(world["speech"] / "heldout.jsonl")
    heard: list[np.ndarray] = []
    real_transcribe = pipeline.transcribe

    def spy(source, options, lexicon):
        heard.append(source[1])
        return real_transcribe(source, options, lexicon)

    monkeypatch.setattr(pipeline, "transcribe", spy)
    first = evaluate_speech(
        pipeline, records, CTCDecodingOptions(), None, noise=(10.0, 7), progress=False, label="n", per_speaker=False
    )
    second = evaluate_speech(
        pipeline, records, CTCDecodingOptions(), None, noise=(10.0, 7), progress=False, label="n", per_speaker=False
    )
    assert first == second
    n = len(records)
    for a, b in zip(heard[:n], heard[n:], strict=True):
        np.testing.assert_array_equal(a, b)
    clean = pipeline.load_audio(records[0].audio_path)
    snr = rms_db(clean) - rms_db(heard[0] - clean)
    assert snr == pytest.approx(10.0, abs=0.1)
    other = pipeline.load_audio(records[1].audio_path)
    assert not np.allclose(heard[0] - clean, heard[1] - other)  # each clip gets its own noise


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"speech_methods": ("viterbi",)}, "speech_methods"),
        ({"sections": ("captions",), "images": None}, "images"),
        ({"caption_method": "sample"}, "caption_method"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        EvaluateConfig(model_dir=Path("m"), **overrides)


def test_caption_truth_refuses_a_count_mismatch_and_show_needs_metrics(tmp_path: Path, capsys) -> None:
    record = ImageRecord("x", tmp_path / "x.png", ("a red circle",) * 5, scene_of(("circle", "red", 0.5)), "test")
    with pytest.raises(DataError, match="one caption per record"):
        caption_truth([record], [])
    assert main([str(tmp_path), "--show"]) == 2
    assert "no metrics.json" in capsys.readouterr().err
