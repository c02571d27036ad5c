"""PyTorch datasets over adapter records, the batches they form, and their collate functions.

Owns ``CaptionDataset`` / ``RetrievalDataset`` (image pixels + caption ids) and
``SpeechDataset`` (log-mel features + CTC target ids), the per-item
``ImageTextItem`` / ``SpeechItem`` and the padded ``ImageTextBatch`` /
``SpeechBatch``. Items are decoded on demand (``cache=True`` keeps decoded images
or waveforms in memory, per process) and augmented with a generator seeded from
``(seed, epoch, index)``: an item is the same whichever worker makes it and in
whatever order, and nothing global is read or changed. Call ``set_epoch`` before
each epoch; DataLoader workers see it when they are re-created each epoch, that
is with ``persistent_workers=False``.

Imports ``mmbm.config``, ``mmbm.errors``, ``mmbm.image``, ``mmbm.audio``,
``mmbm.tokenizer`` and this package's ``adapters`` and ``augment``; never model
or training code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from mmbm.audio import LogMel, load_audio
from mmbm.config import AudioConfig, ImageConfig
from mmbm.data.adapters import AudioTextRecord, ImageTextRecord
from mmbm.data.augment import AudioAugmentConfig, ImageAugmentConfig, augment_image, augment_waveform, spec_augment
from mmbm.errors import DataError
from mmbm.image import image_to_tensor, load_image
from mmbm.tokenizer import Tokenizer

CaptionMode = Literal["sample", "all"]


@dataclass(frozen=True)
class ImageTextItem:
    pixels: torch.Tensor  # (3, S, S) float32, normalised
    ids: torch.Tensor  # (L,) int64 caption ids with bos/eos
    image_index: int  # index of the image's record, shared by all its captions
    caption_ids: torch.Tensor  # (L',) the captioner's target ids: ``ids`` unless the dataset uses caption targets


@dataclass(frozen=True)
class SpeechItem:
    features: torch.Tensor  # (n_mels, T) float32 log-mel
    targets: torch.Tensor  # (L,) int64 transcript ids without bos/eos
    index: int


class TensorBatch:
    """A batch whose fields are all tensors, moved together (to a device, into pinned memory)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Self:
        """Called by DataLoader(pin_memory=True) for faster host-to-GPU copies."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Self:
        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class ImageTextBatch(TensorBatch):
    pixels: torch.Tensor  # (B, 3, S, S) float32
    ids: torch.Tensor  # (B, L) int64, padded with pad_id
    lengths: torch.Tensor  # (B,) int64 ids before padding
    image_index: torch.Tensor  # (B,) int64; equal entries are the same image (a false negative for retrieval)
    caption_ids: torch.Tensor  # (B, L') int64 captioner targets, padded with pad_id (``ids`` without targets)



@dataclass(frozen=True)
class SpeechBatch(TensorBatch):
    features: torch.Tensor  # (B, n_mels, T) float32, padded with feature_pad
    feature_lengths: torch.Tensor  # (B,) int64 frames before padding
    targets: torch.Tensor  # (B, L) int64, padded with pad_id
    target_lengths: torch.Tensor  # (B,) int64


def pad_ids(sequences: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D int64 tensors into (B, L_max) padded with ``pad_id``; also return their lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return pad_sequence(list(sequences), batch_first=True, padding_value=pad_id), lengths


def collate_image_text(items: Sequence[ImageTextItem], pad_id: int) -> ImageTextBatch:
    """Batch items: pixels stacked, ids padded with ``pad_id``."""
    if not items:
        raise DataError("cannot collate an empty batch")
    ids, lengths = pad_ids([item.ids for item in items], pad_id)
    same = all(item.caption_ids is item.ids for item in items)
    return ImageTextBatch(
        pixels=torch.stack([item.pixels for item in items]),  # (B, 3, S, S)
        ids=ids,
        lengths=lengths,
        image_index=torch.tensor([item.image_index for item in items], dtype=torch.long),
        caption_ids=ids if same else pad_ids([item.caption_ids for item in items], pad_id)[0],
    )


def collate_speech(items: Sequence[SpeechItem], pad_id: int, feature_pad: float = 0.0) -> SpeechBatch:
    """Batch items: features padded along time with ``feature_pad``, targets with ``pad_id``."""
    if not items:
        raise DataError("cannot collate an empty batch")
    frames = [item.features.transpose(0, 1) for item in items]  # (T, n_mels) each, so time pads
    features = pad_sequence(frames, batch_first=True, padding_value=feature_pad).transpose(1, 2)  # (B, n_mels, T)
    targets, target_lengths = pad_ids([item.targets for item in items], pad_id)
    return SpeechBatch(
        features=features.contiguous(),
        feature_lengths=torch.tensor([f.shape[0] for f in frames], dtype=torch.long),
        targets=targets,
        target_lengths=target_lengths,
    )


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (seed, epoch, index), from numpy's SeedSequence hashing."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class CaptionDataset(Dataset[ImageTextItem]):
    """Images with caption ids (bos ... eos, at most ``max_text_len``; longer captions are cut, losing eos).

    ``captions="sample"``: one item per image, its caption drawn afresh each epoch.
    ``captions="all"``: one item per (image, caption) pair, for evaluation or
    epochs that see every caption.
    ``caption_targets=True``: an item's ``caption_ids`` are its record's caption
    target (the mirrored one when augmentation flips the image) where the record
    has one; its ``ids`` stay the sampled caption, for retrieval.
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        tokenizer: Tokenizer,
        image_config: ImageConfig,
        *,
        max_text_len: int,
        captions: CaptionMode = "sample",
        augment: ImageAugmentConfig | None = None,
        seed: int = 0,
        cache: bool = False,
        caption_targets: bool = False,
    ) -> None:
        if not records:
            raise DataError("CaptionDataset needs at least one record")
        if captions not in ("sample", "all"):
            raise DataError(f"captions must be 'sample' or 'all', got {captions!r}")
        if max_text_len < 2:
            raise DataError(f"max_text_len must be at least 2 (bos and eos), got {max_text_len}")
        empty = [r.id for r in records if not r.captions]
        if empty:
            raise DataError(f"{len(empty)} record(s) have no caption, e.g. {empty[:3]}")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.max_text_len = max_text_len
        self.captions = captions
        self.augment = augment
        self.seed = seed
        self.caption_targets = caption_targets
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self._pairs = [(r, c) for r, record in enumerate(self.records) for c in range(len(record.captions))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) if self.captions == "sample" else len(self._pairs)

    def __getitem__(self, index: int) -> ImageTextItem:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        seed = item_seed(self.seed, self.epoch, index)
        if self.captions == "sample":
            record_index = index
            caption_index = int(np.random.default_rng(seed).integers(len(self.records[index].captions)))
        else:
            record_index, caption_index = self._pairs[index]
        record = self.records[record_index]
        pixels = self.pixels(record_index)
        caption, flipped = record.captions[caption_index], False
        if self.augment is not None:
            augmented = augment_image(
                pixels, caption, self.augment, self.image_config, torch.Generator().manual_seed(seed)
            )
            pixels, caption, flipped = augmented.pixels, augmented.caption, augmented.flipped
        ids = self._encode(caption)
        caption_ids = ids
        if self.caption_targets and record.caption_targets is not None:
            caption_ids = self._encode(record.caption_targets[int(flipped)])
        return ImageTextItem(pixels=pixels, ids=ids, image_index=record_index, caption_ids=caption_ids)

    def _encode(self, caption: str) -> torch.Tensor:
        ids = self.tokenizer.encode(caption, add_special=True)[: self.max_text_len]
        return torch.tensor(ids, dtype=torch.long)

    def pixels(self, record_index: int) -> torch.Tensor:
        """Decoded, resized, normalised (3, S, S) pixels of one record, before augmentation."""
        if self._cache is not None and record_index in self._cache:
            return self._cache[record_index]
        image = load_image(self.records[record_index].image_path, self.image_config)
        pixels = image_to_tensor(image, self.image_config)
        if self._cache is not None:
            self._cache[record_index] = pixels
        return pixels

    def collate(self, items: Sequence[ImageTextItem]) -> ImageTextBatch:
        """``collate_image_text`` with this dataset's pad id; pass as DataLoader(collate_fn=...)."""
        return collate_image_text(items, self.tokenizer.pad_id)


class RetrievalDataset(CaptionDataset):
    """A ``CaptionDataset`` with one caption per image per epoch.

    Contrastive training treats the other items of a batch as negatives, so a
    batch must not hold the same image twice; ``batch.image_index`` still lets a
    loss mask duplicates when a sampler repeats images.
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        tokenizer: Tokenizer,
        image_config: ImageConfig,
        *,
        max_text_len: int,
        augment: ImageAugmentConfig | None = None,
        seed: int = 0,
        cache: bool = False,
        caption_targets: bool = False,
    ) -> None:
        super().__init__(
            records,
            tokenizer,
            image_config,
            max_text_len=max_text_len,
            captions="sample",
            augment=augment,
            seed=seed,
            cache=cache,
            caption_targets=caption_targets,
        )


class SpeechDataset(Dataset[SpeechItem]):
    """Clips as log-mel features (n_mels, T) with transcript ids (no bos/eos) as CTC targets.

    With ``augment``, the waveform goes through ``augment_waveform`` before the
    log-mel and the features through ``spec_augment`` after it.
    """

    def __init__(
        self,
        records: Sequence[AudioTextRecord],
        tokenizer: Tokenizer,
        audio_config: AudioConfig,
        *,
        augment: AudioAugmentConfig | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        if not records:
            raise DataError("SpeechDataset needs at least one record")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.audio_config = audio_config
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.log_mel = LogMel(audio_config)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._targets: dict[int, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> SpeechItem:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        wave = self.waveform(index)
        seed = item_seed(self.seed, self.epoch, index)
        if self.augment is not None:
            wave = augment_waveform(wave, self.audio_config.sample_rate, self.augment, np.random.default_rng(seed))
        with torch.no_grad():
            features = self.log_mel(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None])[0]
        if self.augment is not None:
            features = spec_augment(features, self.augment, torch.Generator().manual_seed(seed))
        return SpeechItem(features=features, targets=self.targets(index), index=index)

    def waveform(self, index: int) -> np.ndarray:
        """The decoded mono float32 clip at ``audio_config.sample_rate``, before augmentation."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        wave = load_audio(self.records[index].audio_path, self.audio_config)
        if self._cache is not None:
            self._cache[index] = wave
        return wave

    def targets(self, index: int) -> torch.Tensor:
        """(L,) int64 transcript ids without bos/eos; refuses a transcript with no tokens."""
        if index not in self._targets:
            record = self.records[index]
            ids = self.tokenizer.encode(record.text, add_special=False)
            if not ids:
                raise DataError(f"transcript of {record.id} ({record.audio_path}) has no tokens: {record.text!r}")
            self._targets[index] = torch.tensor(ids, dtype=torch.long)
        return self._targets[index]

    def collate(self, items: Sequence[SpeechItem]) -> SpeechBatch:
        """``collate_speech`` with this dataset's pad id; pass as DataLoader(collate_fn=...)."""
        return collate_speech(items, self.tokenizer.pad_id)
