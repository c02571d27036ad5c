"""The files of an image index directory: SQLite metadata, the vector cache, the writer lock.

Owns the on-disk side of the image index (``mmbm.index``). ``index.sqlite`` is the source of truth:
one row per image (path, thumbnail, caption, source, time added, content hash and
its embedding as float32 bytes) and a ``meta`` table (schema version, embedder
identity, width, index kind and a ``generation`` counter). ``vectors.npz`` is a
cache of the in-memory search structures, tagged with the generation it reflects.

Commit protocol (why a killed process never leaves them disagreeing): every
change is one SQLite transaction that writes the rows *and* bumps the generation,
so metadata and embeddings commit or vanish together. The cache is written after
the commit, to a temporary file that ``os.replace`` puts in place, so it is
either the previous complete cache or the new one. On open, a cache whose
generation differs from SQLite's is brought up to date from SQLite: ids SQLite
no longer has are dropped, ids it has gained are added with their stored vectors
(ids are AUTOINCREMENT, never reused, and a row's vector never changes).
Writers hold an exclusive ``flock`` on ``writer.lock``; readers take none (WAL).

Imports numpy, sqlite3 and ``mmbm.errors``; never faiss, Pillow, torch or the model.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmbm.errors import SearchIndexError

DB_NAME = "index.sqlite"
CACHE_NAME = "vectors.npz"
LOCK_NAME = "writer.lock"
SCHEMA_VERSION = 1
SQL_BATCH = 500  # ids per "IN (...)" query; SQLite allows 32766 variables, small batches stay fast
META_KEYS = ("schema_version", "identity", "dim", "kind", "generation")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT,
    thumbnail BLOB NOT NULL,
    caption TEXT,
    source TEXT NOT NULL,
    added_at REAL NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class NewImage:
    """A row to insert; ``vector`` is (dim,) float32 and L2-normalised."""

    path: str | None
    thumbnail: bytes
    caption: str | None
    source: str
    content_hash: str
    vector: np.ndarray


@dataclass(frozen=True)
class ImageRow:
    """A stored image's metadata (everything but its vector)."""

    id: int
    path: str | None
    thumbnail: bytes
    caption: str | None
    source: str
    added_at: float


class MetadataStore:
    """``index.sqlite``: rows, meta and generation; every write is one transaction."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection = connection
        self._lock = threading.Lock()  # one connection shared by the index's threads

    @classmethod
    def create(cls, path: Path, identity: str, dim: int, kind: str) -> MetadataStore:
        store = cls(path, _connect(path, create=True))
        meta = {"schema_version": SCHEMA_VERSION, "identity": identity, "dim": dim, "kind": kind, "generation": 0}
        with store._write() as connection:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
        return store

    @classmethod
    def open(cls, path: Path) -> MetadataStore:
        if not path.is_file():
            raise SearchIndexError(f"no image index at {path.parent}: {path} is missing")
        store = cls(path, _connect(path, create=False))
        meta = store._meta()
        missing = [key for key in META_KEYS if key not in meta]
        if missing:
            raise SearchIndexError(f"{path} is not an image index: its meta table lacks {missing}")
        if meta["schema_version"] != str(SCHEMA_VERSION):
            raise SearchIndexError(f"{path} has schema version {meta['schema_version']}, expected {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """The connection, with SQLite's errors turned into ``SearchIndexError`` naming the file."""
        with self._lock:
            try:
                yield self._connection
            except sqlite3.DatabaseError as e:
                raise SearchIndexError(f"{self.path} is unreadable or corrupt ({e})") from e
            except sqlite3.ProgrammingError as e:
                raise SearchIndexError(f"{self.path}: the index is closed ({e})") from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error, committed otherwise."""
        with self._guard() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _meta(self) -> dict[str, str]:
        with self._guard() as connection:
            try:
                return dict(connection.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.OperationalError as e:
                raise SearchIndexError(f"{self.path} is not an image index ({e})") from e

    @property
    def identity(self) -> str:
        return self._meta()["identity"]

    @property
    def dim(self) -> int:
        return int(self._meta()["dim"])

    @property
    def kind(self) -> str:
        return self._meta()["kind"]

    def generation(self) -> int:
        with self._guard() as connection:
            return int(connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def count(self) -> int:
        with self._guard() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def insert(self, images: Sequence[NewImage]) -> tuple[list[int], int]:
        """Insert rows and bump the generation in one transaction; returns (ids, generation)."""
        now = time.time()
        ids = []
        with self._write() as connection:
            for image in images:
                cursor = connection.execute(
                    "INSERT INTO images (path, thumbnail, caption, source, added_at, content_hash, vector)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        image.path,
                        image.thumbnail,
                        image.caption,
                        image.source,
                        now,
                        image.content_hash,
                        np.asarray(image.vector, dtype="<f4").tobytes(),
                    ),
                )
                ids.append(int(cursor.lastrowid))
            generation = _bump_generation(connection)
        return ids, generation

    def delete(self, ids: Sequence[int]) -> int:
        """Delete rows in one transaction; any unknown id refuses the whole call. Returns the generation."""
        with self._write() as connection:
            known = _select_ids(connection, ids)
            unknown = sorted(set(ids) - known)
            if unknown:
                raise SearchIndexError(f"unknown image id(s) {unknown[:20]}; nothing was removed")
            for start in range(0, len(ids), SQL_BATCH):
                chunk = list(ids[start : start + SQL_BATCH])
                connection.execute(f"DELETE FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            return _bump_generation(connection)

    def existing_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """{content hash: id} for the hashes already stored."""
        found: dict[str, int] = {}
        with self._guard() as connection:
            for start in range(0, len(hashes), SQL_BATCH):
                chunk = list(hashes[start : start + SQL_BATCH])
                query = f"SELECT content_hash, id FROM images WHERE content_hash IN ({','.join('?' * len(chunk))})"
                found.update(connection.execute(query, chunk).fetchall())
        return found

    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """Metadata for the ids that exist; missing ids are left out."""
        found: dict[int, ImageRow] = {}
        with self._guard() as connection:
            for start in range(0, len(ids), SQL_BATCH):
                chunk = [int(i) for i in ids[start : start + SQL_BATCH]]
                query = (
                    "SELECT id, path, thumbnail, caption, source, added_at FROM images"
                    f" WHERE id IN ({','.join('?' * len(chunk))})"
                )
                for row in connection.execute(query, chunk):
                    found[row[0]] = ImageRow(*row)
        return found

    def sync(self, known_ids: np.ndarray, dim: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """In one read transaction: (generation, ids to drop, ids to add, their (N, dim) vectors)."""
        with self._guard() as connection:
            connection.execute("BEGIN")
            try:
                generation = int(connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
                stored = np.fromiter(
                    (row[0] for row in connection.execute("SELECT id FROM images ORDER BY id")), dtype=np.int64
                )
                extra = np.setdiff1d(known_ids, stored)
                missing = np.setdiff1d(stored, known_ids)
                vectors = np.empty((len(missing), dim), dtype=np.float32)
                for start in range(0, len(missing), SQL_BATCH):
                    chunk = [int(i) for i in missing[start : start + SQL_BATCH]]
                    query = f"SELECT vector FROM images WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id"
                    for offset, (blob,) in enumerate(connection.execute(query, chunk)):
                        vectors[start + offset] = _blob_to_vector(blob, dim, self.path)
            finally:
                connection.execute("COMMIT")
        return generation, extra, missing, vectors

    def iter_sources(self, batch_size: int) -> Iterator[list[tuple[int, str | None, bytes]]]:
        """(id, path, thumbnail) of every row in id order, ``batch_size`` rows at a time."""
        last = -1
        while True:
            with self._guard() as connection:
                batch = connection.execute(
                    "SELECT id, path, thumbnail FROM images WHERE id > ? ORDER BY id LIMIT ?", (last, batch_size)
                ).fetchall()
            if not batch:
                return
            yield batch
            last = batch[-1][0]

    def replace_embeddings(self, identity: str, dim: int, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Store new vectors for every row and the new embedder, in one transaction. Returns the generation."""
        with self._write() as connection:
            n_rows = int(connection.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            if n_rows != len(ids):
                raise SearchIndexError(f"re-embedding covered {len(ids)} of {n_rows} images; nothing was changed")
            connection.executemany(
                "UPDATE images SET vector = ? WHERE id = ?",
                ((np.asarray(v, dtype="<f4").tobytes(), int(i)) for i, v in zip(ids, vectors, strict=True)),
            )
            connection.executemany(
                "UPDATE meta SET value = ? WHERE key = ?", [(identity, "identity"), (str(dim), "dim")]
            )
            return _bump_generation(connection)


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    try:
        connection = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        connection.execute("PRAGMA journal_mode=WAL")  # readers keep working while a writer commits
        connection.execute("PRAGMA synchronous=FULL")
        return connection
    except sqlite3.DatabaseError as e:
        raise SearchIndexError(f"{path} is not a readable SQLite database ({e})") from e


def _bump_generation(connection: sqlite3.Connection) -> int:
    connection.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    return int(connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def _select_ids(connection: sqlite3.Connection, ids: Sequence[int]) -> set[int]:
    known: set[int] = set()
    for start in range(0, len(ids), SQL_BATCH):
        chunk = list(ids[start : start + SQL_BATCH])
        query = f"SELECT id FROM images WHERE id IN ({','.join('?' * len(chunk))})"
        known.update(row[0] for row in connection.execute(query, chunk))
    return known


def _blob_to_vector(blob: bytes, dim: int, path: Path) -> np.ndarray:
    if len(blob) != 4 * dim:
        raise SearchIndexError(f"{path} holds a vector of {len(blob)} bytes, expected {4 * dim} (width {dim})")
    return np.frombuffer(blob, dtype="<f4")


class WriterLock:
    """An exclusive ``flock`` on ``writer.lock``: one writer per index directory at a time.

    The kernel drops the lock when its holder dies, so a killed writer never blocks the next one.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_cache(directory: Path, generation: int, identity: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``vectors.npz`` atomically: a temporary file in the same directory, fsync, ``os.replace``."""
    target = directory / CACHE_NAME
    for stale in directory.glob(f".{CACHE_NAME}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{CACHE_NAME}.", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        try:
            np.savez(handle, generation=np.array(generation, np.int64), identity=np.array(identity), **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def read_cache(directory: Path) -> tuple[int, str, dict[str, np.ndarray]] | None:
    """(generation, identity, arrays) from ``vectors.npz``, or None when there is none."""
    path = directory / CACHE_NAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # reading checks each member's CRC
        generation, identity = int(arrays.pop("generation")), str(arrays.pop("identity"))
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise SearchIndexError(
            f"{path} is corrupt ({type(e).__name__}: {e}); delete it and the index rebuilds it from {DB_NAME}"
        ) from e
    return generation, identity, arrays
