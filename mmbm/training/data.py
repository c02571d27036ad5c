"""Training data: the corpora checked up front, the tokenizer, the datasets, and a resumable batch order.

Owns ``load_corpora`` (ShapesWorld-layout corpus folders, or generic JSONL
manifests for other corpora; refuses a missing or incomplete corpus with a
DataError before any work), ``build_tokenizer`` (trained on the image corpus' training
captions plus the speech training transcripts), ``EpochBatchSampler`` and
``BatchStream``.

Data order is a pure function of a counter: batch k of a task is slice
``k mod n`` of the permutation of epoch ``k // n``, drawn from
``(seed, task, epoch)``; each process takes its own contiguous share of that
global batch. A checkpoint stores the counter of each task, and a resumed run
starts the sampler there. Augmentation follows the item: the datasets seed it
from ``(seed, epoch, index)``, which the sampler hands over with each index, so
a resumed (or differently sharded) run sees the very same augmented items.
Imports ``mmbm.data``, ``mmbm.shapesworld`` and ``mmbm.tokenizer``; never the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmbm.config import ModelConfig
from mmbm.data.adapters import AudioTextRecord, ImageTextRecord, load_audio_manifest
from mmbm.data.adapters import load_image_manifest as load_image_manifest_file
from mmbm.data.augment import AudioAugmentConfig, ImageAugmentConfig
from mmbm.data.datasets import CaptionDataset, RetrievalDataset, SpeechDataset, item_seed
from mmbm.errors import DataError
from mmbm.shapesworld.captions import canonical_caption
from mmbm.shapesworld.corpus import load_image_manifest
from mmbm.shapesworld.scene import mirror_scene
from mmbm.tokenizer import Tokenizer, train_tokenizer

STREAM_KEYS = {"image_text": 1, "speech": 2}  # separate permutation streams per task
Item = TypeVar("Item")
Batch = TypeVar("Batch")


@dataclass(frozen=True)
class Corpora:
    """The records of the training and validation splits of both corpora."""

    train_images: list[ImageTextRecord]
    val_images: list[ImageTextRecord]
    train_speech: list[AudioTextRecord]
    val_speech: list[AudioTextRecord]


def _image_split(folder: Path, split: str) -> list[ImageTextRecord]:
    """ShapesWorld records; each carries its canonical caption (as drawn and mirrored) as captioner target."""
    records = load_image_manifest(folder, split)  # DataError when corpus.json or an image is missing
    return [ImageTextRecord(image_path=r.image, captions=list(r.captions), id=r.id,
                            caption_targets=(canonical_caption(r.scene), canonical_caption(mirror_scene(r.scene))))
            for r in records]


def speech_split(folder: Path, split: str) -> list[AudioTextRecord]:
    """The records of one split of a speech corpus folder; DataError when its manifest or a clip is missing."""
    manifest = folder / f"{split}.jsonl"
    if not manifest.is_file():
        raise DataError(f"speech corpus {str(folder)!r} has no {split}.jsonl manifest")
    return load_audio_manifest(manifest, missing="error")


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix == ".jsonl"


def check_sources(images: str | Path, speech: str | Path, images_val: str | None = None,
                  speech_val: str | None = None) -> None:
    """DataError unless each source is a complete corpus folder (it holds corpus.json, written last) or a
    JSONL manifest whose validation manifest is given too."""
    for source, val, what in ((Path(images), images_val, "image"), (Path(speech), speech_val, "speech")):
        if _is_manifest(source):
            if val is None or not Path(val).is_file():
                raise DataError(f"{what} manifest {str(source)!r} needs a validation manifest "
                                f"(--{what if what == 'speech' else 'images'}-val); got {val!r}")
        elif not source.is_dir():
            raise DataError(f"{what} corpus folder not found: {str(source)!r}")
        elif not (source / "corpus.json").is_file():
            raise DataError(f"{what} corpus {str(source)!r} is incomplete: corpus.json is missing "
                            f"(its generation never finished); run `python -m mmbm.shapesworld` to finish it")


def load_corpora(images: str | Path, speech: str | Path, images_val: str | None = None,
                 speech_val: str | None = None) -> Corpora:
    """Train and val records of both sources: ShapesWorld-layout folders or generic JSONL manifests
    (``{"image": path, "text"|"captions": ...}`` and ``{"audio": path, "text": ...}``, see mmbm.data.adapters)."""
    check_sources(images, speech, images_val, speech_val)
    image_source, speech_source = Path(images), Path(speech)
    if _is_manifest(image_source):
        train_images = load_image_manifest_file(image_source, missing="error")
        val_images = load_image_manifest_file(str(images_val), missing="error")
    else:
        train_images, val_images = _image_split(image_source, "train"), _image_split(image_source, "val")
    if _is_manifest(speech_source):
        train_speech = load_audio_manifest(speech_source, missing="error")
        val_speech = load_audio_manifest(str(speech_val), missing="error")
    else:
        train_speech, val_speech = speech_split(speech_source, "train"), speech_split(speech_source, "val")
    corpora = Corpora(train_images, val_images, train_speech, val_speech)
    for name in ("train_images", "val_images", "train_speech", "val_speech"):
        if not getattr(corpora, name):
            raise DataError(f"{name.replace('_', ' ')}: the split is empty; training and validation need both")
    return corpora


def build_tokenizer(corpora: Corpora, vocab_size: int) -> Tokenizer:
    """BPE tokenizer over every training caption and training transcript (never val or test text)."""
    texts = [c for r in corpora.train_images for c in r.captions] + [r.text for r in corpora.train_speech]
    return train_tokenizer(texts, vocab_size=vocab_size)


@dataclass(frozen=True)
class Datasets:
    train_image_text: RetrievalDataset
    train_speech: SpeechDataset
    val_image_text: CaptionDataset
    val_speech: SpeechDataset


def build_datasets(corpora: Corpora, tokenizer: Tokenizer, model: ModelConfig, *, seed: int, augment: bool,
                   cache: bool, n_val_images: int, n_val_clips: int, caption_targets: bool = False) -> Datasets:
    """Training sets (augmented when asked, one caption per image per epoch) and fixed validation sets.

    ``caption_targets``: the captioner learns each record's caption target where it has one
    (ShapesWorld's canonical caption) while retrieval still sees the sampled captions.
    """
    return Datasets(
        train_image_text=RetrievalDataset(corpora.train_images, tokenizer, model.image, max_text_len=model.max_text_len,
                                          augment=ImageAugmentConfig() if augment else None, seed=seed, cache=cache,
                                          caption_targets=caption_targets),
        train_speech=SpeechDataset(corpora.train_speech, tokenizer, model.audio,
                                   augment=AudioAugmentConfig() if augment else None, seed=seed, cache=cache),
        val_image_text=CaptionDataset(corpora.val_images[:n_val_images], tokenizer, model.image,
                                      max_text_len=model.max_text_len, seed=seed, cache=True,
                                      caption_targets=caption_targets),
        val_speech=SpeechDataset(corpora.val_speech[:n_val_clips], tokenizer, model.audio, seed=seed, cache=True),
    )


class EpochDataset(Dataset[Item], Generic[Item]):
    """Wraps a dataset with ``set_epoch`` so that items are fetched by (epoch, index) pairs."""

    def __init__(self, dataset: CaptionDataset | SpeechDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        epoch, index = key
        self.dataset.set_epoch(epoch)  # the item's caption choice and augmentation depend on it
        return self.dataset[index]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless (epoch, index) batches for one rank, starting at global batch ``start``.

    Each epoch is a fresh permutation of the items cut into ``len // global_batch``
    whole batches (the remainder is left out that epoch); rank r takes items
    ``[r * B/world, (r+1) * B/world)`` of every global batch.
    """

    def __init__(self, n_items: int, global_batch: int, *, seed: int, stream: str, start: int, rank: int,
                 world_size: int) -> None:
        if global_batch % world_size:
            raise DataError(f"a global batch of {global_batch} does not split over {world_size} processes")
        if n_items < global_batch:
            raise DataError(f"{stream}: {n_items} training items are fewer than one batch of {global_batch}")
        self.n_items, self.global_batch, self.seed, self.start = n_items, global_batch, seed, start
        self.stream_key = STREAM_KEYS[stream]
        self.local = global_batch // world_size
        self.offset = rank * self.local
        self.batches_per_epoch = n_items // global_batch

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.stream_key, epoch))
        return torch.randperm(self.n_items, generator=generator).tolist()

    def global_batch_at(self, k: int) -> list[tuple[int, int]]:
        """The (epoch, index) pairs of global batch k."""
        epoch, position = divmod(k, self.batches_per_epoch)
        begin = position * self.global_batch
        return [(epoch, i) for i in self.permutation(epoch)[begin : begin + self.global_batch]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k, epoch, order = self.start, -1, []
        while True:
            batch_epoch, position = divmod(k, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch, order = batch_epoch, self.permutation(batch_epoch)
            begin = position * self.global_batch + self.offset
            yield [(epoch, i) for i in order[begin : begin + self.local]]
            k += 1


class BatchStream(Generic[Batch]):
    """Batches of one task in sampler order; ``position`` counts the global batches handed out."""

    def __init__(self, dataset: CaptionDataset | SpeechDataset, sampler: EpochBatchSampler, num_workers: int,
                 seed: int) -> None:
        self.position = sampler.start
        self.loader = DataLoader(
            EpochDataset(dataset),
            batch_sampler=sampler,
            collate_fn=dataset.collate,
            num_workers=num_workers,
            # an explicit generator keeps the loader from drawing on the global RNG (which resume restores)
            generator=torch.Generator().manual_seed(seed),
        )
        self._iterator: Iterator[Batch] | None = None

    def next(self) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        self.position += 1
        return next(self._iterator)


def batched(items: Sequence[int], size: int) -> Iterator[list[int]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for begin in range(0, len(items), size):
        yield list(items[begin : begin + size])
