"""Image search: add images, then find them by text, by image or by vector.

Owns ``ImageIndex``, an index directory that keeps every image's metadata and
embedding in SQLite (``mmbm.index.store``) and searches them in memory
(``mmbm.index.vectors``: exact by default, IVF or HNSW with exact re-ranking when
large). Embeddings come from an ``Embedder`` passed in — the model's adapter in
the pipeline, or anything with the same four members — so this module never
imports the model. The index records the embedder's ``identity`` and refuses to
open with another one unless asked to re-embed.

Duplicates are refused at add time: an image whose decoded pixels hash to a
stored image's is reported in ``AddReport.duplicates`` and not added again, so
results never show the same image twice. Audio queries are a pipeline concern:
transcribe, then call ``search_text``.

Imports numpy, Pillow, tqdm and ``mmbm.image``, ``mmbm.index.store``,
``mmbm.index.types``, ``mmbm.index.vectors``; never the model, a corpus reader
(manifests are read by their callers: ``mmbm.demo.gallery.index_manifest``),
training or gradio.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmbm.errors import DataError, ImageError, SearchIndexError
from mmbm.image import ImageSource, load_image
from mmbm.index.store import CACHE_NAME, DB_NAME, MetadataStore, NewImage, WriterLock, read_cache, write_cache
from mmbm.index.types import (
    DEFAULT_INDEX_CONFIG,
    AddReport,
    Embedder,
    IndexConfig,
    IndexStats,
    LoadedImage,
    SearchHit,
    check_embedder,
    check_embeddings,
    check_k,
    check_query,
    input_label,
    load_for_adding,
    normalise,
    shrink,
    try_load,
)
from mmbm.index.vectors import INDEX_KINDS, IndexKind, SearchConfig, VectorSet, check_kind

__all__ = ["AddReport", "Embedder", "ImageIndex", "IndexConfig", "IndexStats", "SearchConfig", "SearchHit"]

logger = logging.getLogger(__name__)


class ImageIndex:
    """A directory of indexed images; build it with ``create`` or ``open``, not the constructor."""

    def __init__(
        self, directory: Path, embedder: Embedder, store: MetadataStore, vectors: VectorSet, config: IndexConfig
    ) -> None:
        self.directory = directory
        self.embedder = embedder
        self.config = config
        self._store = store
        self._vectors = vectors
        self._generation = -1  # the SQLite generation the in-memory vectors reflect
        self._writer = threading.Lock()

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        embedder: Embedder,
        kind: IndexKind = "auto",
        config: IndexConfig = DEFAULT_INDEX_CONFIG,
    ) -> ImageIndex:
        """Make a new, empty index in ``directory`` (created if needed)."""
        check_kind(kind)
        directory = Path(directory)
        check_embedder(embedder)
        if (directory / DB_NAME).exists():
            raise SearchIndexError(f"an image index already exists at {directory}; use ImageIndex.open")
        directory.mkdir(parents=True, exist_ok=True)
        store = MetadataStore.create(directory / DB_NAME, embedder.identity, embedder.dim, kind)
        index = cls(directory, embedder, store, VectorSet(embedder.dim, kind, config.search), config)
        index._generation = store.generation()
        index._save_cache()
        return index

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        embedder: Embedder,
        reembed: bool = False,
        config: IndexConfig = DEFAULT_INDEX_CONFIG,
    ) -> ImageIndex:
        """Open an index; refuses one built by another embedder unless ``reembed`` (which re-embeds every image)."""
        directory = Path(directory)
        check_embedder(embedder)
        store = MetadataStore.open(directory / DB_NAME)
        try:
            return cls._open(directory, embedder, store, reembed, config)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _open(
        cls, directory: Path, embedder: Embedder, store: MetadataStore, reembed: bool, config: IndexConfig
    ) -> ImageIndex:
        kind = store.kind
        if kind not in INDEX_KINDS:
            raise SearchIndexError(f"{store.path} names an unknown index kind {kind!r}")
        stored = (store.identity, store.dim)
        if stored != (embedder.identity, embedder.dim):
            if not reembed:
                raise SearchIndexError(
                    f"the index at {directory} was built with embedder {stored[0]!r} (width {stored[1]}), "
                    f"but this embedder is {embedder.identity!r} (width {embedder.dim}); open it with the model "
                    "that built it, or pass reembed=True to re-embed its images"
                )
            index = cls(directory, embedder, store, VectorSet(embedder.dim, kind, config.search), config)
            index._reembed()
            return index
        index = cls._from_cache(directory, embedder, store, kind, config)
        if index._sync():
            logger.info("index at %s: brought the vector cache up to date with %s", directory, DB_NAME)
            lock = WriterLock(directory)
            if lock.acquire(blocking=False):  # another writer will save its own cache otherwise
                try:
                    index._vectors.maintain()
                    index._save_cache()
                finally:
                    lock.release()
        return index

    @classmethod
    def _from_cache(
        cls, directory: Path, embedder: Embedder, store: MetadataStore, kind: IndexKind, config: IndexConfig
    ) -> ImageIndex:
        """The index as vectors.npz left it: possibly older than SQLite (``_sync`` catches up)."""
        cached = read_cache(directory)
        if cached is None or cached[1] != embedder.identity:
            if cached is None:
                logger.warning("%s has no %s; rebuilding it from %s", directory, CACHE_NAME, DB_NAME)
            return cls(directory, embedder, store, VectorSet(embedder.dim, kind, config.search), config)
        generation, _, arrays = cached
        source = str(directory / CACHE_NAME)
        vectors = VectorSet.from_arrays(arrays, embedder.dim, kind, config.search, source)
        index = cls(directory, embedder, store, vectors, config)
        index._generation = generation
        return index

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._vectors)

    def add_images(
        self,
        images: Sequence[ImageSource],
        captions: Sequence[str | None] | None = None,
        source: str = "api",
        batch_size: int | None = None,
        progress: bool = True,
    ) -> AddReport:
        """Embed and add images (paths, PIL images, arrays or encoded bytes) in committed batches.

        Unreadable inputs are skipped with the reason; images already stored are
        reported as duplicates. Each batch is one transaction: a crash keeps every
        batch committed before it.
        """
        if isinstance(images, str | bytes | os.PathLike | Image.Image | np.ndarray):
            raise SearchIndexError(f"add_images expects a sequence of images; got one {type(images).__name__}")
        if captions is not None and len(captions) != len(images):
            raise SearchIndexError(f"got {len(captions)} captions for {len(images)} images")
        batch_size = batch_size or self.config.batch_size
        if batch_size < 1:
            raise SearchIndexError(f"batch_size must be at least 1, got {batch_size}")
        items = list(zip(images, captions if captions is not None else [None] * len(images), strict=True))
        added: list[int] = []
        skipped: list[tuple[str, str]] = []
        duplicates: list[tuple[str, int]] = []
        with self._writer, WriterLock(self.directory):
            self._sync()
            try:
                with tqdm(total=len(items), desc="indexing images", unit="image", disable=not progress) as bar:
                    for start in range(0, len(items), batch_size):
                        batch = items[start : start + batch_size]
                        self._add_batch(batch, start, source, added, skipped, duplicates)
                        bar.update(len(batch))
            finally:
                self._vectors.maintain()
                self._save_cache()
        logger.info("added %d images, skipped %d, %d duplicates", len(added), len(skipped), len(duplicates))
        return AddReport(tuple(added), tuple(skipped), tuple(duplicates))

    def _add_batch(
        self,
        batch: list[tuple[ImageSource, str | None]],
        offset: int,
        source: str,
        added: list[int],
        skipped: list[tuple[str, str]],
        duplicates: list[tuple[str, int]],
    ) -> None:
        loaded: list[LoadedImage] = []
        for i, (item, caption) in enumerate(batch):
            try:
                loaded.append(load_for_adding(item, caption, offset + i, self.config))
            except ImageError as e:
                skipped.append((input_label(item, offset + i), str(e)))
        stored = self._store.existing_hashes([item.content_hash for item in loaded])
        fresh: dict[str, LoadedImage] = {}
        repeats: list[LoadedImage] = []
        for item in loaded:
            if item.content_hash in stored:
                duplicates.append((item.label, stored[item.content_hash]))
            elif item.content_hash in fresh:
                repeats.append(item)
            else:
                fresh[item.content_hash] = item
        if not fresh:
            return
        new = list(fresh.values())
        vectors = self._embed_images([item.image for item in new])
        rows = [
            NewImage(item.path, item.thumbnail, item.caption, source, item.content_hash, vector)
            for item, vector in zip(new, vectors, strict=True)
        ]
        ids, generation = self._store.insert(rows)
        self._vectors.add(np.asarray(ids, dtype=np.int64), vectors)
        self._generation = generation
        added.extend(ids)
        id_of = {item.content_hash: new_id for item, new_id in zip(new, ids, strict=True)}
        duplicates.extend((item.label, id_of[item.content_hash]) for item in repeats)

    def build_from_folder(
        self, folder: str | os.PathLike, source: str | None = None, batch_size: int | None = None, progress: bool = True
    ) -> AddReport:
        """Add every file under ``folder`` (recursively, hidden names excluded); non-images are skipped."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"image folder not found (or not a folder): {folder}")
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if not files:
            raise DataError(f"image folder {folder} has no files")
        return self.add_images(files, source=source or f"folder:{folder}", batch_size=batch_size, progress=progress)

    def remove(self, ids: Sequence[int]) -> None:
        """Remove images by id; if any id is unknown nothing is removed (``SearchIndexError``)."""
        ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int | np.integer)]
        if bad:
            raise SearchIndexError(f"image ids must be integers, got {bad[:5]}")
        ids = [int(i) for i in dict.fromkeys(ids)]
        if not ids:
            return
        with self._writer, WriterLock(self.directory):
            self._sync()
            self._generation = self._store.delete(ids)
            self._vectors.remove(np.asarray(ids, dtype=np.int64))
            self._vectors.maintain()
            self._save_cache()

    def search_text(self, text: str, k: int = 10) -> list[SearchHit]:
        """Images best matching a description, best first."""
        self.check_text_query(text, k)
        vectors = check_embeddings(self.embedder.embed_text([text]), 1, self.embedder, "text")
        return self._search(vectors, k)

    def check_text_query(self, text: str, k: int) -> None:
        """Refuse a query ``search_text`` would refuse (bad ``k``, empty or overlong text) before any embedding."""
        check_k(k, self.config.max_k)
        check_query(text, self.config.max_query_chars)

    def search_image(self, image: ImageSource, k: int = 10) -> list[SearchHit]:
        """Images most similar to ``image`` (a path, PIL image, array or encoded bytes), best first."""
        check_k(k, self.config.max_k)
        loaded = shrink(load_image(image, self.config.image), self.config.embed_size)
        return self._search(self._embed_images([loaded]), k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[SearchHit]:
        """Images nearest to a (dim,) embedding by cosine similarity, best first."""
        check_k(k, self.config.max_k)
        array = np.asarray(vector, dtype=np.float32)
        if array.shape not in ((self.embedder.dim,), (1, self.embedder.dim)):
            raise SearchIndexError(f"a query vector must have shape ({self.embedder.dim},), got {array.shape}")
        return self._search(normalise(array.reshape(1, -1), "the query vector"), k)

    def _search(self, query: np.ndarray, k: int) -> list[SearchHit]:
        scores, labels = self._vectors.search(query, k)
        found = [(int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True) if i >= 0]
        rows = self._store.rows([i for i, _ in found])
        # an id missing from SQLite was removed by another process since this one last synced
        return [
            SearchHit(i, score, rows[i].path, rows[i].caption, rows[i].thumbnail) for i, score in found if i in rows
        ]

    def refresh(self) -> bool:
        """Catch up with changes another process committed; True if there were any."""
        if self._store.generation() == self._generation:
            return False
        if not self._writer.acquire(blocking=False):
            return False  # a writer in this process is updating the vectors itself
        try:
            return self._sync()
        finally:
            self._writer.release()

    def verify(self) -> int:
        """Check that the searched ids and vectors are exactly SQLite's; returns the image count.

        Raises ``SearchIndexError`` on any disagreement. Reads every stored vector.
        """
        generation, _, ids, vectors = self._store.sync(np.empty(0, np.int64), self.embedder.dim)
        same = np.array_equal(ids, self._vectors.ids) and np.array_equal(vectors, self._vectors.vectors)
        if generation != self._generation or not same:
            raise SearchIndexError(
                f"the index at {self.directory} disagrees with {DB_NAME}: {len(self._vectors)} vectors at "
                f"generation {self._generation}, {len(ids)} rows at generation {generation}"
            )
        return len(ids)

    def stats(self) -> IndexStats:
        disk = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        return IndexStats(
            n_images=self._store.count(),
            n_vectors=len(self._vectors),
            dim=self.embedder.dim,
            kind=self._vectors.kind,
            active_kind=self._vectors.active_kind,
            embedder_identity=self.embedder.identity,
            generation=self._generation,
            disk_bytes=disk,
        )

    def _sync(self) -> bool:
        """Make the in-memory vectors match SQLite; True if anything changed."""
        if self._store.generation() == self._generation:
            return False
        generation, extra, missing, vectors = self._store.sync(self._vectors.ids, self.embedder.dim)
        if len(extra):
            self._vectors.remove(extra)
        if len(missing):
            self._vectors.add(missing, vectors)
        self._generation = generation
        return True

    def _save_cache(self) -> None:
        """Write vectors.npz; on failure the committed SQLite rows still hold everything."""
        try:
            write_cache(self.directory, self._generation, self.embedder.identity, self._vectors.to_arrays())
        except OSError as e:
            logger.warning(
                "could not write the vector cache in %s (%s); it is rebuilt from %s", self.directory, e, DB_NAME
            )

    def _reembed(self) -> None:
        """Re-embed every stored image with the current embedder, committed in one transaction."""
        with self._writer, WriterLock(self.directory):
            ids: list[int] = []
            vectors: list[np.ndarray] = []
            n_from_thumbnail = 0
            total = self._store.count()
            with tqdm(total=total, desc="re-embedding images", unit="image") as bar:
                for batch in self._store.iter_sources(self.config.batch_size):
                    images = []
                    for _, path, thumbnail in batch:
                        image = try_load(path, self.config.image)
                        if image is None:  # the original file is gone: fall back to the stored thumbnail
                            image = load_image(thumbnail, self.config.image)
                            n_from_thumbnail += 1
                        images.append(shrink(image, self.config.embed_size))
                    ids.extend(row[0] for row in batch)
                    vectors.append(self._embed_images(images))
                    bar.update(len(batch))
            if n_from_thumbnail:
                logger.warning(
                    "re-embedded %d of %d images from their thumbnails (originals missing)", n_from_thumbnail, total
                )
            id_array = np.asarray(ids, dtype=np.int64)
            matrix = np.concatenate(vectors) if vectors else np.empty((0, self.embedder.dim), np.float32)
            self._generation = self._store.replace_embeddings(
                self.embedder.identity, self.embedder.dim, id_array, matrix
            )
            self._vectors = VectorSet(self.embedder.dim, self._vectors.kind, self.config.search)
            self._vectors.add(id_array, matrix)
            self._vectors.maintain()
            self._save_cache()

    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return check_embeddings(self.embedder.embed_images(images), len(images), self.embedder, "images")
