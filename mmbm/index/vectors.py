"""In-memory nearest-neighbour search over L2-normalised vectors, for the image index.

Owns the search side of the image index (``mmbm.index``): a ``VectorSet`` holds every vector in one
float32 matrix beside its image ids (kept sorted), answers exact inner-product
queries with FAISS's brute-force ``knn`` over that matrix, and, for large
collections, an approximate index over 8-bit scalar-quantised codes: an inverted
file (IVF, as in Jégou et al., "Product quantization for nearest neighbor search",
2011) or an HNSW graph (arXiv:1603.09320). The approximate index only proposes
``n_rerank`` candidates; their scores are recomputed exactly from the float32
matrix, so reported scores are always exact cosine similarities. Library: FAISS
(arXiv:2401.08281).

Two process-wide FAISS settings are made here, both measured on the project's
2-core CPU (bench/search.py, docs/search.md): FAISS runs single-threaded
(``n_threads``), and brute-force search switches from per-query SIMD scans to BLAS
at ``blas_min_queries`` queries (FAISS's default switches only at 1000 queries of
width 128).

Imports numpy, faiss and ``mmbm.errors``; never SQLite, Pillow, torch or the model.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from mmbm.errors import ConfigError, SearchIndexError

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "ivf", "hnsw")
SearchKind = Literal["flat", "ivf", "hnsw"]
IVF_TRAIN_PER_LIST = 64  # k-means training sample per list; FAISS warns below 39
IVF_RETRAIN_GROWTH = 4  # retrain the IVF lists once the collection has grown 4x since training
MAX_REMOVED_FRACTION = 0.2  # rebuild the approximate index when 20% of its entries are removed ids


@dataclass(frozen=True)
class SearchConfig:
    """How vectors are searched. Defaults come from bench/search.py (docs/search.md)."""

    approximate_from: int = 200_000  # kind="auto" uses exact search below this many vectors
    approximate_kind: Literal["ivf", "hnsw"] = "ivf"  # what kind="auto" switches to
    n_lists: int = 0  # IVF lists; 0 picks round(sqrt(n)) when the lists are trained
    n_probe: int = 32  # IVF lists visited per query
    hnsw_neighbors: int = 32  # HNSW graph degree (M)
    ef_construction: int = 40
    ef_search: int = 64
    n_rerank: int = 256  # approximate candidates re-scored exactly; at least k are always fetched
    n_threads: int = 1  # FAISS OpenMP threads (process-wide)
    blas_min_queries: int = 16  # brute-force batches of at least this many queries use BLAS
    seed: int = 0  # for the IVF training sample

    def __post_init__(self) -> None:
        positive = ("approximate_from", "n_probe", "hnsw_neighbors", "ef_construction", "ef_search", "n_rerank")
        for name in (*positive, "n_threads", "blas_min_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.n_lists < 0:
            raise ConfigError(f"n_lists: must be 0 (automatic) or positive, got {self.n_lists}")
        if self.approximate_kind not in ("ivf", "hnsw"):
            raise ConfigError(f"approximate_kind: must be 'ivf' or 'hnsw', got {self.approximate_kind!r}")


def check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise ConfigError(f"kind: must be one of {INDEX_KINDS}, got {kind!r}")


class VectorSet:
    """Image ids (sorted, unique) and their unit vectors, searchable by inner product.

    Readers never see a half-applied change: rows are appended past the length a
    reader captured, and removals build new arrays. The approximate index is
    guarded by a lock because FAISS indexes are not safe to search while adding.
    """

    def __init__(self, dim: int, kind: IndexKind = "flat", config: SearchConfig = SearchConfig()) -> None:
        check_kind(kind)
        if dim < 1:
            raise ConfigError(f"dim: must be positive, got {dim}")
        self.dim = dim
        self.kind = kind
        self.config = config
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._n = 0
        self._ann: faiss.Index | None = None
        self._ann_kind: SearchKind | None = None
        self._ann_trained_n = 0
        self._ann_removed = np.empty(0, dtype=np.int64)  # ids still inside the approximate index
        self._selector: tuple[faiss.IDSelector, ...] = ()  # excludes _ann_removed; () when none
        self._lock = threading.RLock()
        faiss.omp_set_num_threads(config.n_threads)

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        """(n,) int64, ascending; a read-only view."""
        view = self._ids[: self._n]
        view.flags.writeable = False
        return view

    @property
    def vectors(self) -> np.ndarray:
        """(n, dim) float32, row i belongs to ``ids[i]``; a read-only view."""
        view = self._vectors[: self._n]
        view.flags.writeable = False
        return view

    @property
    def active_kind(self) -> SearchKind:
        return self._ann_kind if self._ann is not None and self._ann_kind is not None else "flat"

    def nbytes(self) -> int:
        """Bytes held: id and vector arrays (with their spare capacity) plus the approximate index."""
        with self._lock:
            ann = 0 if self._ann is None else faiss.serialize_index(self._ann).nbytes
            return self._ids.nbytes + self._vectors.nbytes + ann

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N,) new ids with their (N, dim) unit vectors."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise SearchIndexError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if len(ids) == 0:
            return
        with self._lock:
            n = self._n
            if np.all(np.diff(ids) > 0) and (n == 0 or ids[0] > self._ids[n - 1]):
                self._append(ids, vectors)  # the usual case: new ids are larger than every stored one
            else:  # out-of-order ids (e.g. syncing with the metadata store): merge into new arrays
                if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids[:n]).any():
                    raise SearchIndexError("ids to add must be new and unique")
                merged_ids = np.concatenate([self._ids[:n], ids])
                order = np.argsort(merged_ids, kind="stable")
                self._ids = merged_ids[order]
                self._vectors = np.concatenate([self._vectors[:n], vectors])[order]
                self._n = len(merged_ids)
            if self._ann is not None:
                self._ann.add_with_ids(vectors, ids)

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n, m = self._n, len(ids)
        if n + m > len(self._ids):  # grow by doubling; readers keep the old arrays they hold
            capacity = max(16, n + m, 2 * n)  # one big add gets exactly its size
            new_ids = np.empty(capacity, dtype=np.int64)
            new_vectors = np.empty((capacity, self.dim), dtype=np.float32)
            new_ids[:n], new_vectors[:n] = self._ids[:n], self._vectors[:n]
            self._ids, self._vectors = new_ids, new_vectors
        self._ids[n : n + m] = ids
        self._vectors[n : n + m] = vectors
        self._n = n + m

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids; ids that are not present are ignored."""
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            keep = ~np.isin(self._ids[: self._n], ids)
            self._ids = self._ids[: self._n][keep].copy()
            self._vectors = self._vectors[: self._n][keep].copy()
            self._n = len(self._ids)
            if self._ann is not None:
                self._set_removed(np.union1d(self._ann_removed, ids))

    def _set_removed(self, removed: np.ndarray) -> None:
        """Record ids removed from the vectors but still inside the approximate index; call with the lock held."""
        self._ann_removed = removed.astype(np.int64)
        if len(removed) == 0:
            self._selector = ()
            return
        inner = faiss.IDSelectorBatch(self._ann_removed)  # built once here, not per query
        self._selector = (inner, faiss.IDSelectorNot(inner))  # keep both alive: the outer one points at the inner

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product for (B, dim) unit queries.

        Returns scores (B, k) float32 and ids (B, k) int64, best first; when fewer
        than ``k`` vectors exist the tail is padded with score -inf and id -1.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise SearchIndexError(f"queries must have shape (B, {self.dim}), got {queries.shape}")
        if k < 1:
            raise SearchIndexError(f"k must be at least 1, got {k}")
        with self._lock:
            ids, vectors = self._ids[: self._n], self._vectors[: self._n]
            candidates = None if self._ann is None else self._ann_candidates(queries, k)
        if candidates is None:
            scores, labels = self._exact(queries, ids, vectors, min(k, len(ids)))
        else:
            scores, labels = _rerank(queries, candidates, ids, vectors, k)
        return _pad(scores, labels, k)

    def _exact(
        self, queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if k == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        # below this many queries FAISS's per-query scan beats BLAS (bench/search.py)
        faiss.cvar.distance_compute_blas_threshold = self.config.blas_min_queries * self.dim
        scores, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)

    def _ann_candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(B, R) candidate ids from the approximate index; call with the lock held."""
        assert self._ann is not None
        n_candidates = max(k, self.config.n_rerank)
        selector = self._selector[-1] if self._selector else None
        if self._ann_kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.config.n_probe, sel=selector)
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, n_candidates), sel=selector)
        _, candidates = self._ann.search(queries, n_candidates, params=params)
        return candidates

    def wanted_kind(self) -> SearchKind:
        if self.kind == "auto":
            return self.config.approximate_kind if self._n >= self.config.approximate_from else "flat"
        return "flat" if self.kind == "flat" or self._n == 0 else self.kind

    def maintain(self) -> bool:
        """Build, retrain, compact or drop the approximate index as the size asks; True if changed.

        Called by the single writer after each add or remove. Building happens outside
        the lock so searches keep running on the previous structures meanwhile.
        """
        wanted = self.wanted_kind()
        with self._lock:
            ann, n = self._ann, self._n
            ids, vectors = self._ids[:n], self._vectors[:n]
            removed = len(self._ann_removed)
        if wanted == "flat":
            if ann is None:
                return False
            with self._lock:
                self._ann, self._ann_kind = None, None
                self._set_removed(np.empty(0, np.int64))
            return True
        stale = (
            ann is None
            or self._ann_kind != wanted
            or (wanted == "ivf" and n > IVF_RETRAIN_GROWTH * self._ann_trained_n)
            or removed > MAX_REMOVED_FRACTION * max(1, ann.ntotal)
        )
        if not stale:
            return False
        logger.info("building a %s index over %d vectors", wanted, n)
        built = self._build_ann(wanted, ids, vectors)
        with self._lock:
            if self._n != n or not np.array_equal(self._ids[:n], ids):
                raise SearchIndexError("the vector set changed while its approximate index was being built")
            self._ann, self._ann_kind, self._ann_trained_n = built, wanted, n
            self._set_removed(np.empty(0, np.int64))
        return True

    def _build_ann(self, kind: SearchKind, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        n = len(ids)
        if kind == "ivf":
            # sqrt(n) lists, but never fewer than 39 training points per list (FAISS's minimum)
            n_lists = self.config.n_lists or max(1, min(round(math.sqrt(n)), n // 39))
            index = faiss.index_factory(self.dim, f"IVF{n_lists},SQ8", faiss.METRIC_INNER_PRODUCT)
        else:
            spec = f"IDMap2,HNSW{self.config.hnsw_neighbors}_SQ8"
            index = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index.index).hnsw.efConstruction = self.config.ef_construction
            n_lists = 1
        rng = np.random.default_rng(self.config.seed)
        n_train = min(n, IVF_TRAIN_PER_LIST * n_lists if kind == "ivf" else 100_000)
        sample = vectors if n_train == n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(np.ascontiguousarray(sample))
        index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(ids))
        return index

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to restore this set without rebuilding, as named arrays."""
        with self._lock:
            ann = self._ann
            return {
                "ids": self._ids[: self._n].copy(),
                "vectors": self._vectors[: self._n].copy(),
                "ann": np.empty(0, np.uint8) if ann is None else faiss.serialize_index(ann),
                "ann_kind": np.array(self._ann_kind or ""),
                "ann_trained_n": np.array(self._ann_trained_n, dtype=np.int64),
                "ann_removed": self._ann_removed.copy(),
            }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], dim: int, kind: IndexKind, config: SearchConfig, source: str
    ) -> VectorSet:
        """Inverse of ``to_arrays``; ``source`` names the file in error messages."""
        missing = sorted({"ids", "vectors", "ann", "ann_kind", "ann_trained_n", "ann_removed"} - set(arrays))
        if missing:
            raise SearchIndexError(f"{source} is missing arrays {missing}")
        ids, vectors = arrays["ids"], arrays["vectors"]
        if ids.ndim != 1 or ids.dtype != np.int64 or vectors.dtype != np.float32 or vectors.shape != (len(ids), dim):
            raise SearchIndexError(
                f"{source} holds ids {ids.dtype}{ids.shape} and vectors {vectors.dtype}{vectors.shape}; "
                f"expected int64 (n,) and float32 (n, {dim})"
            )
        if len(ids) > 1 and not np.all(np.diff(ids) > 0):
            raise SearchIndexError(f"{source} holds ids that are not strictly increasing")
        result = cls(dim, kind, config)
        result._ids, result._vectors, result._n = ids.copy(), vectors.copy(), len(ids)
        ann_kind = str(arrays["ann_kind"])
        if arrays["ann"].size:
            if ann_kind not in ("ivf", "hnsw"):
                raise SearchIndexError(f"{source} names an unknown approximate index kind {ann_kind!r}")
            try:
                result._ann = faiss.deserialize_index(np.ascontiguousarray(arrays["ann"]))
            except RuntimeError as e:
                raise SearchIndexError(f"{source} holds an unreadable FAISS index ({e})") from e
            if result._ann.d != dim:
                raise SearchIndexError(f"{source} holds a FAISS index of width {result._ann.d}, expected {dim}")
            result._ann_kind = ann_kind  # type: ignore[assignment]
            result._ann_trained_n = int(arrays["ann_trained_n"])
            result._set_removed(arrays["ann_removed"])
        return result


def _rerank(
    queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for (B, R) candidate ids; ids missing from ``ids`` score -inf."""
    if len(ids) == 0:
        return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
    rows = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)  # (B, R)
    valid = (candidates >= 0) & (ids[rows] == candidates)
    scores = np.matmul(vectors[rows], queries[:, :, None])[:, :, 0]  # (B, R, d) @ (B, d, 1): exact inner products
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, k)
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(candidates, order, axis=1), -1)
    return top_scores, top_ids


def _pad(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
    missing = k - scores.shape[1]
    if missing > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        labels = np.pad(labels, ((0, 0), (0, missing)), constant_values=-1)
    return scores, labels.astype(np.int64)
