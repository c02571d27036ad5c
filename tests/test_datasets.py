"""Datasets and collate functions: shapes, padding, lengths, seeded determinism, caching."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmbm.config import AudioConfig, ImageConfig
from mmbm.data.adapters import AudioTextRecord, ImageTextRecord
from mmbm.data.augment import AudioAugmentConfig, ImageAugmentConfig
from mmbm.data.datasets import (
    CaptionDataset,
    RetrievalDataset,
    SpeechDataset,
    collate_image_text,
    collate_speech,
)
from mmbm.errors import DataError, ImageError
from mmbm.tokenizer import Tokenizer, train_tokenizer

SAMPLE_RATE = 16_000
IMAGE_CONFIG = ImageConfig(image_size=16)
AUDIO_CONFIG = AudioConfig(n_mels=40)
CAPTIONS = [
    ["a red circle left of a blue square", "a red circle", "one circle and one square"],
    ["two green triangles", "some triangles that are green"],
    ["a big yellow star on a gradient background"],
]
TRANSCRIPTS = ["seven three nine", "a red circle", "two green triangles above a star"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer([c for captions in CAPTIONS for c in captions] + TRANSCRIPTS, vocab_size=80)


@pytest.fixture
def image_records(tmp_path: Path) -> list[ImageTextRecord]:
    records = []
    rng = np.random.default_rng(0)
    for i, captions in enumerate(CAPTIONS):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        records.append(ImageTextRecord(path, captions, f"scene{i}"))
    return records


@pytest.fixture
def audio_records(tmp_path: Path) -> list[AudioTextRecord]:
    records = []
    for i, (text, seconds) in enumerate(zip(TRANSCRIPTS, (0.5, 0.8, 1.2), strict=True)):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        path = tmp_path / f"clip{i}.wav"
        soundfile.write(path, 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t), SAMPLE_RATE)
        records.append(AudioTextRecord(path, text, f"clip{i}", "voice"))
    return records


def caption_dataset(records: list[ImageTextRecord], tokenizer: Tokenizer, **kwargs: object) -> CaptionDataset:
    return CaptionDataset(records, tokenizer, IMAGE_CONFIG, max_text_len=40, **kwargs)  # type: ignore[arg-type]


def test_caption_item_holds_pixels_and_bos_eos_ids(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    dataset = caption_dataset(image_records, tokenizer)
    assert len(dataset) == 3
    item = dataset[0]
    assert item.pixels.shape == (3, 16, 16) and item.pixels.dtype == torch.float32
    assert item.image_index == 0
    assert item.ids[0] == tokenizer.bos_id and item.ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(item.ids.tolist()) in CAPTIONS[0]


def test_all_mode_gives_every_caption_once(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    dataset = caption_dataset(image_records, tokenizer, captions="all")
    assert len(dataset) == 6
    seen = [(dataset[i].image_index, tokenizer.decode(dataset[i].ids.tolist())) for i in range(len(dataset))]
    assert seen == [(r, c) for r, captions in enumerate(CAPTIONS) for c in captions]


def test_sampled_captions_are_seeded_per_epoch(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    def captions_of(seed: int, epoch: int) -> list[str]:
        dataset = caption_dataset(image_records, tokenizer, seed=seed)
        dataset.set_epoch(epoch)
        return [tokenizer.decode(dataset[0].ids.tolist()) for _ in range(2)]

    assert captions_of(1, 0) == captions_of(1, 0)
    per_epoch = {captions_of(1, epoch)[0] for epoch in range(12)}
    assert per_epoch == set(CAPTIONS[0])  # each epoch draws afresh and every caption comes up


def test_items_do_not_depend_on_order_or_workers(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    augment = ImageAugmentConfig(p_jitter=1.0, p_shift=1.0, p_flip=0.5)
    dataset = caption_dataset(image_records, tokenizer, augment=augment, seed=3)
    last_first = dataset[2]
    forward = [dataset[i] for i in range(3)]
    torch.testing.assert_close(last_first.pixels, forward[2].pixels)
    single = next(iter(DataLoader(dataset, batch_size=3, collate_fn=dataset.collate)))
    multi = next(iter(DataLoader(dataset, batch_size=3, collate_fn=dataset.collate, num_workers=2)))
    torch.testing.assert_close(single.pixels, multi.pixels)
    assert torch.equal(single.ids, multi.ids)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2].pixels, forward[2].pixels)


def test_flip_augmentation_flips_the_caption_ids(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    plain = caption_dataset(image_records, tokenizer, captions="all")
    flipping = caption_dataset(
        image_records, tokenizer, captions="all", augment=ImageAugmentConfig(p_jitter=0, p_shift=0, p_flip=1)
    )
    assert tokenizer.decode(flipping[0].ids.tolist()) == "a red circle right of a blue square"
    torch.testing.assert_close(flipping[0].pixels, plain[0].pixels.flip(-1))


def test_caption_targets_feed_the_captioner_while_retrieval_keeps_the_sampled_caption(
    image_records: list[ImageTextRecord], tokenizer: Tokenizer
) -> None:
    targeted = [dataclasses.replace(r, caption_targets=(r.captions[0], "two green triangles"))
                for r in image_records]
    plain = caption_dataset(targeted, tokenizer, captions="all")
    assert all(item.caption_ids is item.ids for item in map(plain.__getitem__, range(len(plain))))  # off by default
    dataset = caption_dataset(targeted, tokenizer, captions="all", caption_targets=True)
    for i in range(len(dataset)):
        item = dataset[i]
        assert tokenizer.decode(item.ids.tolist()) == CAPTIONS[item.image_index][i - sum(map(len, CAPTIONS[:item.image_index]))]
        assert tokenizer.decode(item.caption_ids.tolist()) == CAPTIONS[item.image_index][0]
    flipping = caption_dataset(targeted, tokenizer, captions="all", caption_targets=True,
                               augment=ImageAugmentConfig(p_jitter=0, p_shift=0, p_flip=1))
    assert tokenizer.decode(flipping[1].caption_ids.tolist()) == "two green triangles"  # the mirror image's target
    batch = dataset.collate([dataset[i] for i in (1, 3, 5)])
    assert batch.caption_ids.shape == (3, max(len(dataset[i].caption_ids) for i in (1, 3, 5)))
    for row, item in zip(batch.caption_ids, [dataset[i] for i in (1, 3, 5)], strict=True):
        assert torch.equal(row[: len(item.caption_ids)], item.caption_ids)
        assert (row[len(item.caption_ids):] == tokenizer.pad_id).all()
    untargeted = caption_dataset(image_records, tokenizer, captions="all", caption_targets=True)
    item = untargeted[0]
    assert item.caption_ids is item.ids  # records without a target (COCO) use their caption


def test_collate_pads_ids_and_gives_lengths(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    dataset = caption_dataset(image_records, tokenizer, captions="all")
    items = [dataset[i] for i in (0, 3, 5)]
    batch = dataset.collate(items)
    lengths = [len(item.ids) for item in items]
    assert batch.pixels.shape == (3, 3, 16, 16)
    assert batch.ids.shape == (3, max(lengths)) and batch.ids.dtype == torch.long
    assert batch.lengths.tolist() == lengths and batch.image_index.tolist() == [0, 1, 2]
    for row, item in zip(batch.ids, items, strict=True):
        assert torch.equal(row[: len(item.ids)], item.ids)
        assert (row[len(item.ids) :] == tokenizer.pad_id).all()
    assert batch.to("cpu").ids is not None
    with pytest.raises(DataError, match="empty batch"):
        collate_image_text([], pad_id=0)


def test_long_captions_are_cut_to_max_text_len(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    dataset = CaptionDataset(image_records, tokenizer, IMAGE_CONFIG, max_text_len=4, captions="all")
    assert all(len(dataset[i].ids) <= 4 for i in range(len(dataset)))
    assert dataset[0].ids.tolist() == tokenizer.encode(CAPTIONS[0][0])[:4]


def test_retrieval_dataset_has_one_item_per_image(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    dataset = RetrievalDataset(image_records, tokenizer, IMAGE_CONFIG, max_text_len=40)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    assert len(dataset) == 3 and batch.image_index.tolist() == [0, 1, 2]


def test_image_cache_keeps_decoded_pixels(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    cached = caption_dataset(image_records, tokenizer, cache=True)
    uncached = caption_dataset(image_records, tokenizer)
    first = cached[1].pixels
    image_records[1].image_path.unlink()  # a cached image is not read again
    torch.testing.assert_close(cached[1].pixels, first)
    with pytest.raises(ImageError, match="Image file not found"):
        uncached[1]


def test_dataset_refuses_bad_arguments(image_records: list[ImageTextRecord], tokenizer: Tokenizer) -> None:
    with pytest.raises(DataError, match="at least one record"):
        caption_dataset([], tokenizer)
    with pytest.raises(DataError, match="captions must be 'sample' or 'all'"):
        caption_dataset(image_records, tokenizer, captions="first")
    with pytest.raises(DataError, match="has no caption|have no caption"):
        caption_dataset([ImageTextRecord(Path("x.png"), [], "x")], tokenizer)
    with pytest.raises(IndexError):
        caption_dataset(image_records, tokenizer)[3]


# ------------------------------------------------------------ speech


def test_speech_item_holds_log_mel_and_targets_without_specials(
    audio_records: list[AudioTextRecord], tokenizer: Tokenizer
) -> None:
    dataset = SpeechDataset(audio_records, tokenizer, AUDIO_CONFIG)
    item = dataset[1]
    n_samples = int(0.8 * SAMPLE_RATE)
    assert item.features.shape == (40, n_samples // AUDIO_CONFIG.hop_length + 1)
    assert item.features.dtype == torch.float32 and torch.isfinite(item.features).all()
    assert item.targets.tolist() == tokenizer.encode("a red circle", add_special=False)
    assert tokenizer.bos_id not in item.targets.tolist() and tokenizer.eos_id not in item.targets.tolist()


def test_speech_collate_pads_features_and_targets(audio_records: list[AudioTextRecord], tokenizer: Tokenizer) -> None:
    dataset = SpeechDataset(audio_records, tokenizer, AUDIO_CONFIG)
    items = [dataset[i] for i in range(3)]
    batch = dataset.collate(items)
    frames = [item.features.shape[1] for item in items]
    targets = [len(item.targets) for item in items]
    assert batch.features.shape == (3, 40, max(frames))
    assert batch.feature_lengths.tolist() == frames and batch.target_lengths.tolist() == targets
    assert batch.targets.shape == (3, max(targets))
    for k, item in enumerate(items):
        torch.testing.assert_close(batch.features[k, :, : frames[k]], item.features)
        assert (batch.features[k, :, frames[k] :] == 0).all()
        assert (batch.targets[k, targets[k] :] == tokenizer.pad_id).all()
    padded = collate_speech(items, pad_id=tokenizer.pad_id, feature_pad=-1.0)
    assert (padded.features[0, :, frames[0] :] == -1.0).all()


def test_speech_augmentation_is_seeded(audio_records: list[AudioTextRecord], tokenizer: Tokenizer) -> None:
    augment = AudioAugmentConfig(p_speed=1.0, p_noise=1.0, p_reverb=1.0)
    features = []
    for epoch in (0, 0, 1):
        dataset = SpeechDataset(audio_records, tokenizer, AUDIO_CONFIG, augment=augment, seed=5)
        dataset.set_epoch(epoch)
        features.append(dataset[2].features)
    torch.testing.assert_close(features[0], features[1])
    assert features[0].shape != features[2].shape or not torch.equal(features[0], features[2])
    plain = SpeechDataset(audio_records, tokenizer, AUDIO_CONFIG)[2].features
    assert features[0].shape != plain.shape or not torch.equal(features[0], plain)


def test_speech_cache_and_errors(audio_records: list[AudioTextRecord], tokenizer: Tokenizer) -> None:
    cached = SpeechDataset(audio_records, tokenizer, AUDIO_CONFIG, cache=True)
    first = cached[0].features
    audio_records[0].audio_path.unlink()
    torch.testing.assert_close(cached[0].features, first)
    with pytest.raises(DataError, match="at least one record"):
        SpeechDataset([], tokenizer, AUDIO_CONFIG)
    no_words = SpeechDataset(
        [AudioTextRecord(audio_records[1].audio_path, "", "silent", None)], tokenizer, AUDIO_CONFIG
    )
    with pytest.raises(DataError, match="transcript of silent .* has no tokens"):
        no_words[0]
    with pytest.raises(DataError, match="empty batch"):
        collate_speech([], pad_id=0)
