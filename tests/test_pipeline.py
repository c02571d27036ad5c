"""The pipeline: loading a checkpoint, captioning, transcribing, searching, and refusing bad input.

Uses the tiny random-init model and the tiny ShapesWorld corpus of tests/conftest.py
(``tiny_model_dir``, ``tiny_corpus``); untrained outputs are meaningless, so the
tests check behaviour (types, refusals, identity, batching), not quality.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmbm import pipeline as pipeline_module
from mmbm.audio import save_audio
from mmbm.decode.captions import CaptionResult, DecodingOptions
from mmbm.decode.ctc import Transcript
from mmbm.errors import AudioError, CheckpointError, ImageError, SearchIndexError, TextError
from mmbm.pipeline import Pipeline, TranscribeResult, model_identity
from mmbm.shapesworld.corpus import ImageRecord, load_image_manifest
from mmbm.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_RATE, make_small_checkpoint, tone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tiny_corpus: Path) -> tuple[Path, list[ImageRecord]]:
    """The tiny model and the test split of the corpus its tokenizer learnt."""
    return tiny_model_dir, load_image_manifest(tiny_corpus, "test")


@pytest.fixture()
def pipeline(world: tuple[Path, list[ImageRecord]], tmp_path: Path) -> Pipeline:
    return Pipeline.load(world[0], tmp_path / "index", device="cpu", create_index=True)


def test_caption_returns_a_caption_per_image_and_batches_agree(pipeline: Pipeline, world) -> None:
    records = world[1]
    one = pipeline.caption(records[0].image)
    assert isinstance(one, CaptionResult) and len(one.captions) == 1
    batch = pipeline.caption_images([r.image for r in records[:3]])
    assert [r.captions[0].token_ids for r in batch][0] == one.captions[0].token_ids
    beams = pipeline.caption(Image.open(records[1].image), DecodingOptions(method="beam", beam_size=3, n_best=2))
    assert len(beams.captions) == 2 and beams.captions[0].score >= beams.captions[1].score


def test_caption_view_reads_the_image_once_and_shows_what_the_model_saw(
    pipeline: Pipeline, world, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = world[1][0].image
    expected = pipeline.caption(path, DecodingOptions(return_attention=True))
    reads = []
    real_load = pipeline_module.load_image
    monkeypatch.setattr(pipeline_module, "load_image", lambda *args: reads.append(args) or real_load(*args))
    view = pipeline.caption_view(path, DecodingOptions(return_attention=True))
    assert len(reads) == 1
    assert view.result.captions[0].token_ids == expected.captions[0].token_ids
    size = pipeline.config.image.image_size
    assert view.picture.size == (size, size) and view.picture.mode == "RGB"
    assert np.array_equal(np.asarray(view.picture), np.asarray(Image.open(path).convert("RGB").resize((size, size))))


def test_a_search_query_is_tokenized_once(pipeline: Pipeline, world, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.add_images([r.image for r in world[1][:3]])
    expected = pipeline.index.search_text("a red circle", 2)
    calls = []
    real_encode = pipeline.tokenizer.encode
    monkeypatch.setattr(pipeline.tokenizer, "encode", lambda *args, **kw: calls.append(args) or real_encode(*args, **kw))
    assert pipeline.search_text("a red circle", 2) == expected
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [(b"not an image at all", "Not an image"), (b"", "empty bytes"), ("/no/such/file.png", "not found")],
)
def test_caption_refuses_a_broken_image_with_image_error(pipeline: Pipeline, source: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        pipeline.caption(source)  # type: ignore[arg-type]


def test_caption_refuses_a_truncated_png(pipeline: Pipeline, world) -> None:
    data = world[1][0].image.read_bytes()
    with pytest.raises(ImageError, match="(?i)corrupt|truncated|damaged"):
        pipeline.caption(data[: len(data) // 2])


def test_transcribe_reports_duration_and_real_time_factor(pipeline: Pipeline, tmp_path: Path) -> None:
    path = save_audio(tmp_path / "clip.wav", tone(1.5, rate=8_000), 8_000)  # resampled to 16 kHz on load
    result = pipeline.transcribe(path)
    assert isinstance(result.transcript, Transcript)
    assert result.duration_s == pytest.approx(1.5, abs=1e-3)
    assert result.seconds > 0 and result.rtf == pytest.approx(result.seconds / result.duration_s)
    for word in result.transcript.words:
        assert 0.0 <= word.start_s <= word.end_s <= result.duration_s + 0.1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ((SAMPLE_RATE, np.zeros(SAMPLE_RATE, np.float32)), "silent"),
        ((SAMPLE_RATE, tone(1.0, amplitude=1e-4)), "silent"),
        (b"RIFF junk", "(?i)audio"),
        ((SAMPLE_RATE, np.zeros(10, np.float32)), "(?i)short"),
    ],
)
def test_transcribe_refuses_silent_or_broken_audio(pipeline: Pipeline, source: object, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        pipeline.transcribe(source)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "empty"), ("   ", "empty"), ("?!.", "empty"), ("red " * 300, "too long"), (42, "must be a string")],
)
def test_search_text_refuses_empty_or_over_long_queries(pipeline: Pipeline, query: object, message: str) -> None:
    with pytest.raises(TextError, match=message):
        pipeline.search_text(query, k=3)  # type: ignore[arg-type]


def test_search_without_an_index_is_refused(world) -> None:
    bare = Pipeline.load(world[0], device="cpu")
    with pytest.raises(SearchIndexError, match="no image index"):
        bare.search_text("a red circle")
    with pytest.raises(SearchIndexError, match="index.db|missing"):
        bare.open_index(world[0] / "nowhere")


def test_add_images_captions_them_and_every_search_finds_them(pipeline: Pipeline, world, tmp_path: Path) -> None:
    records = world[1]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no pixels here")
    report = pipeline.add_images([r.image for r in records] + [broken], captions=None)
    assert len(report.added) == len(records)
    assert [label for label, _ in report.skipped] == [str(broken)]
    assert pipeline.index_stats().n_images == len(records)
    hits = pipeline.search_image(records[2].image, k=3)
    assert hits[0].path == str(records[2].image.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(hit.caption for hit in hits)  # filled by the model's own greedy caption
    assert hits[0].caption == pipeline.caption(records[2].image).captions[0].text
    text_hits = pipeline.search_text(records[0].captions[0], k=len(records))
    assert sorted(hit.path for hit in text_hits) == sorted(str(r.image.resolve()) for r in records)
    assert [h.score for h in text_hits] == sorted((h.score for h in text_hits), reverse=True)


def test_search_audio_returns_the_transcript_and_refuses_silence(pipeline: Pipeline, world, monkeypatch) -> None:
    pipeline.add_images([r.image for r in world[1]], captions=[r.captions[0] for r in world[1]])
    with pytest.raises(AudioError, match="silent"):
        pipeline.search_audio((SAMPLE_RATE, np.zeros(SAMPLE_RATE, np.float32)))
    clip = (SAMPLE_RATE, tone(1.0, 330.0))
    heard = pipeline.transcribe(clip).transcript.text
    assert heard  # the random model babbles something for this tone
    result = pipeline.search_audio(clip, k=2)
    assert result.transcription.transcript.text == heard and len(result.hits) == 2
    assert [h.id for h in result.hits] == [h.id for h in pipeline.index.search_text(heard, k=2)]
    nothing = TranscribeResult(Transcript("", [], [], 0.9), 1.0, 0.01, 0.01)
    monkeypatch.setattr(pipeline, "transcribe", lambda audio, options, lexicon: nothing)
    with pytest.raises(AudioError, match="no words were recognised"):
        pipeline.search_audio(clip, k=2)


def test_embedder_batches_give_the_same_unit_vectors_as_single_calls(pipeline: Pipeline, world) -> None:
    texts = [c for r in world[1][:3] for c in r.captions[:2]]
    together = pipeline.embedder.embed_text(texts)
    assert together.shape == (len(texts), pipeline.embedder.dim) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([pipeline.embedder.embed_text([t]) for t in texts])
    np.testing.assert_allclose(together, single, atol=1e-5)
    images = [pipeline.load_image(r.image) for r in world[1]]
    np.testing.assert_allclose(
        pipeline.embedder.embed_images(images)[1], pipeline.embedder.embed_images(images[1:2])[0], atol=1e-5
    )


def test_identity_follows_the_weights_and_an_index_refuses_another_model(world, tiny_corpus, tmp_path: Path) -> None:
    model_dir, records = world
    captions = [c for split in ("train", "test") for r in load_image_manifest(tiny_corpus, split) for c in r.captions]
    other = make_small_checkpoint(tmp_path / "other", captions, seed=1)  # the same tokenizer, other weights
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    assert model_identity(model_dir) != model_identity(other)
    assert model_identity(model_dir) == model_identity(model_dir)
    first = Pipeline.load(model_dir, tmp_path / "index", device="cpu", create_index=True)
    first.add_images([records[0].image])
    first.close()
    with pytest.raises(SearchIndexError, match="built with embedder"):
        Pipeline.load(other, tmp_path / "index", device="cpu")


def test_load_refuses_a_tokenizer_that_does_not_fit_the_config(world, tmp_path: Path) -> None:
    directory = make_small_checkpoint(tmp_path / "ckpt", world[1][0].captions)
    train_tokenizer(["a completely different vocabulary"] * 3, vocab_size=60).save(directory / "tokenizer.json")
    with pytest.raises(CheckpointError, match="does not fit config.json"):
        Pipeline.load(directory, device="cpu")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Pipeline.load(directory, device="cpu")


def test_caption_accepts_every_image_source_the_ui_hands_over(pipeline: Pipeline, world) -> None:
    path = world[1][0].image
    image = Image.open(path).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    texts = {
        pipeline.caption(source).captions[0].text
        for source in (path, str(path), image, np.asarray(image), buffer.getvalue())
    }
    assert len(texts) == 1
