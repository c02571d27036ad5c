"""Public value types of the image index, and what happens to an input before it is stored.

Owns the ``Embedder`` protocol (what the index needs from a model), ``IndexConfig``,
the results ``SearchHit``, ``AddReport`` and ``IndexStats``, and the functions that
read an input for adding (``load_for_adding``: pixels, content hash, thumbnail),
validate embeddings and captions. ``mmbm.index.image_index`` re-exports the public names.

Imports numpy, Pillow, ``mmbm.config``, ``mmbm.errors``, ``mmbm.image`` and
``mmbm.index.vectors``; never the model, SQLite or faiss.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from mmbm.config import ImageConfig
from mmbm.errors import ConfigError, ImageError, SearchIndexError, TextError
from mmbm.image import ImageSource, load_image
from mmbm.index.vectors import IndexKind, SearchConfig, SearchKind

NORM_TOLERANCE = 1e-3  # embeddings whose norm is further than this from 1 are renormalised


class Embedder(Protocol):
    """What the index needs from a model: a stable identity, a width, and two encoders.

    ``identity`` names the weights and config (e.g. a sha256 of both); ``embed_images``
    and ``embed_text`` return (N, dim) float32 L2-normalised rows.
    """

    identity: str
    dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class IndexConfig:
    """Limits and defaults of an image index; ``search`` tunes the vector search."""

    search: SearchConfig = field(default_factory=SearchConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # how added and query images are read
    batch_size: int = 64  # images embedded and committed per transaction
    embed_size: int = 512  # larger images are shrunk to this longest side before embedding (memory per batch)
    thumbnail_size: int = 128  # longest side of the stored JPEG thumbnail, pixels
    thumbnail_quality: int = 85
    max_query_chars: int = 500
    max_k: int = 1_000

    def __post_init__(self) -> None:
        for name in ("batch_size", "embed_size", "thumbnail_size", "max_query_chars", "max_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.thumbnail_quality <= 95:
            raise ConfigError(f"thumbnail_quality: must be in [1, 95], got {self.thumbnail_quality}")


@dataclass(frozen=True)
class SearchHit:
    """One result: the image's id, its cosine similarity to the query, and its metadata."""

    id: int
    score: float
    path: str | None  # None for images added as objects rather than files
    caption: str | None
    thumbnail: bytes  # JPEG


@dataclass(frozen=True)
class AddReport:
    """What an add did: new ids, inputs skipped with the reason, duplicates with the id already stored."""

    added: tuple[int, ...]
    skipped: tuple[tuple[str, str], ...]
    duplicates: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class IndexStats:
    n_images: int  # rows in SQLite
    n_vectors: int  # vectors this process searches (equal to n_images unless another process wrote since)
    dim: int
    kind: IndexKind  # as created
    active_kind: SearchKind  # what searches use at the current size
    embedder_identity: str
    generation: int
    disk_bytes: int


DEFAULT_INDEX_CONFIG = IndexConfig()  # frozen, so sharing one default is safe


@dataclass(frozen=True)
class LoadedImage:
    """An input read for adding: what reports call it, where it came from, and what is stored."""

    label: str
    path: str | None  # absolute; None for images given as objects, arrays or bytes
    image: Image.Image  # RGB, at most embed_size on its longer side
    thumbnail: bytes
    caption: str | None
    content_hash: str


def input_label(item: ImageSource, position: int) -> str:
    """How reports name an input: its path, or its position in the call for objects."""
    return str(item) if isinstance(item, str | os.PathLike) else f"<image {position}>"


def load_for_adding(item: ImageSource, caption: str | None, position: int, config: IndexConfig) -> LoadedImage:
    """Read one input (``ImageError`` if it is not a usable image) and prepare what the index stores."""
    image = load_image(item, config.image)
    path = str(Path(item).resolve()) if isinstance(item, str | os.PathLike) else None
    return LoadedImage(
        label=input_label(item, position),
        path=path,
        image=shrink(image, config.embed_size),  # full-size photos are not kept for a whole batch
        thumbnail=make_thumbnail(image, config.thumbnail_size, config.thumbnail_quality),
        caption=check_caption(caption),
        content_hash=content_hash(image),
    )


def try_load(path: str | None, config: ImageConfig) -> Image.Image | None:
    """The image at ``path``, or None when there is no path or it no longer reads."""
    if path is None:
        return None
    try:
        return load_image(path, config)
    except ImageError:
        return None


def check_query(text: str, max_chars: int) -> None:
    if not isinstance(text, str):
        raise TextError(f"a text query must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError("the text query is empty")
    if len(text) > max_chars:
        raise TextError(f"the text query is {len(text)} characters long; the limit is {max_chars}")


def check_k(k: int, max_k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= max_k:
        raise SearchIndexError(f"k must be an integer in [1, {max_k}], got {k!r}")


def check_embedder(embedder: Embedder) -> None:
    for name in ("identity", "dim", "embed_images", "embed_text"):
        if not hasattr(embedder, name):
            raise SearchIndexError(f"the embedder {type(embedder).__name__} has no {name!r}")
    if not isinstance(embedder.identity, str) or not embedder.identity:
        raise SearchIndexError(f"the embedder's identity must be a non-empty string, got {embedder.identity!r}")
    if isinstance(embedder.dim, bool) or not isinstance(embedder.dim, int) or embedder.dim < 1:
        raise SearchIndexError(f"the embedder's dim must be a positive integer, got {embedder.dim!r}")


def check_embeddings(vectors: np.ndarray, n: int, embedder: Embedder, what: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (n, embedder.dim):
        raise SearchIndexError(
            f"embedder {embedder.identity!r} returned shape {array.shape} for {n} {what}; expected ({n}, {embedder.dim})"
        )
    return normalise(array, f"embedder {embedder.identity!r} output for {what}")


def normalise(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise SearchIndexError(f"{what} has non-finite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise SearchIndexError(f"{what} has an all-zero vector, which has no direction to search by")
    if np.abs(norms - 1).max() > NORM_TOLERANCE:
        array = array / norms
    return np.ascontiguousarray(array, dtype=np.float32)


def check_caption(caption: str | None) -> str | None:
    if caption is None:
        return None
    if not isinstance(caption, str):
        raise SearchIndexError(f"a caption must be a string or None, got {type(caption).__name__}")
    return " ".join(caption.split()) or None


def content_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: equal for the same picture in any file format."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def shrink(image: Image.Image, size: int) -> Image.Image:
    """``image`` itself when it fits in ``size`` x ``size``, else a bicubic copy whose longer side is ``size``."""
    if max(image.size) <= size:
        return image
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.BICUBIC)
    return small


def make_thumbnail(image: Image.Image, size: int, quality: int) -> bytes:
    """JPEG bytes of ``image`` shrunk to at most ``size`` pixels on its longer side."""
    thumbnail = image.copy()
    thumbnail.thumbnail((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
