"""Search speed and recall: FAISS index types against torch matmul + topk, on the same vectors.

Usage (from the repository root):
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.search --sizes 10000 100000 --out docs/search.md
    .venv/bin/python -m bench.search --quick             # CI: 5k vectors, few queries, prints only
    .venv/bin/python -m bench.search --embedder mmbm.pipeline:load_embedder ...   # adds end-to-end rows

For each size it draws structured unit vectors (a Gaussian mixture: real
embeddings cluster, and uniform random vectors make approximate search look
worse than it is), then measures on the same data in the same process: build
time, memory of the search structures, latency p50/p95 for one query and for
batches of 100, and recall@10 against exact search, for
  - faiss-default: IndexFlatIP with FAISS's own settings (all cores, BLAS from 1000 queries);
  - exact-scan: the index's exact search with BLAS switched off (what FAISS does below 1000 queries);
  - exact / ivf / hnsw: mmbm.index.vectors.VectorSet as the index uses it (ivf and hnsw re-rank exactly);
  - torch-1t / torch-2t: ``torch.topk(q @ X.T)`` with 1 and 2 threads.
A parameter sweep (n_probe, ef_search, n_rerank) follows for the approximate kinds.

``--embedder MODULE:FACTORY`` names a zero-argument callable returning an
``mmbm.index.types.Embedder`` (the real text encoder once the model exists); the bench
then times text encoding plus search, end to end, at every size. ``--out`` puts
the tables into the file between the markers ``<!-- bench:start -->`` and
``<!-- bench:end -->`` (appended when absent), keeping the prose around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

from mmbm.index.types import Embedder
from mmbm.index.vectors import SearchConfig, VectorSet

K = 10
BATCH = 100
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
RANK = 32  # directions the mixture's centres span
NOISE = 0.1  # per-coordinate noise around a centre
TIGHT_NOISE = 0.05  # a harder set for the sweep: near-ties that only deep re-ranking separates
TEXT_QUERIES = (
    "a small red circle to the left of a blue square",
    "two green triangles",
    "a yellow star above a purple heart",
    "three objects on a striped background",
)


def structured_vectors(n: int, dim: int, seed: int, noise: float = NOISE) -> np.ndarray:
    """(n, dim) unit vectors from a Gaussian mixture whose ``n // 100`` centres span a rank-32 subspace.

    Real embeddings cluster and use far fewer directions than their width; ``noise``
    (per coordinate) sets how tight the clusters are: 0.1 puts a query's tenth
    neighbour at cosine ~0.99, like near-duplicate scenes; uniform random vectors
    would have no neighbours worth finding.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(10, n // 100)
    basis = rng.standard_normal((RANK, dim), dtype=np.float32) / np.sqrt(RANK)
    centres = rng.standard_normal((n_clusters, RANK), dtype=np.float32) @ basis  # (C, dim)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks, so 1M vectors never need a float64 copy
        stop = min(n, start + 100_000)
        out[start:stop] = centres[rng.integers(0, n_clusters, stop - start)]
        out[start:stop] += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def data_and_queries(n: int, n_queries: int, dim: int, noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    """n vectors to index and n_queries held-out queries from the same mixture (same centres, fresh noise)."""
    pool = structured_vectors(n + n_queries, dim, seed=n, noise=noise)
    return pool[:n], pool[n:]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 95) * 1e3)


def time_queries(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, n_batches: int) -> dict[str, float]:
    search(queries[:1])
    search(queries[:BATCH])  # warm-up
    singles = []
    for i in range(len(queries)):
        start = time.perf_counter()
        search(queries[i : i + 1])
        singles.append(time.perf_counter() - start)
    batches = []
    for b in range(n_batches):
        block = np.roll(queries, -b * 7, axis=0)[:BATCH]
        start = time.perf_counter()
        search(block)
        batches.append(time.perf_counter() - start)
    (p50, p95), (b50, b95) = percentiles(singles), percentiles(batches)
    return {"p50": p50, "p95": p95, "batch_p50": b50, "batch_p95": b95}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_size(n: int, dim: int, n_queries: int, n_batches: int, kinds: list[str]) -> list[dict]:
    data, queries = data_and_queries(n, n_queries, dim)
    ids = np.arange(n, dtype=np.int64)
    rows = []
    exact = VectorSet(dim, "flat")
    exact.add(ids, data)
    truth = exact.search(queries, K)[1]
    for kind in kinds:
        row: dict = {"n": n, "method": kind}
        start = time.perf_counter()
        search, memory, label = _build(kind, data, ids, dim)
        row["build_s"] = time.perf_counter() - start
        row["memory_mb"] = memory() / 2**20
        row.update(time_queries(search, queries, n_batches))
        row["recall"] = recall_at_k(search(queries), truth)
        row["label"] = label
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _build(kind: str, data: np.ndarray, ids: np.ndarray, dim: int) -> tuple[Callable, Callable[[], int], str]:
    """(search function returning (B, K) ids, bytes of its structures (measured after timing), description)."""
    if kind == "faiss-default":
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = faiss.IndexFlatIP(dim)
        index.add(data)

        def search_default(q: np.ndarray) -> np.ndarray:
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            faiss.cvar.distance_compute_blas_threshold = 128_000  # FAISS 1.15's default
            return index.search(q, K)[1]

        return search_default, lambda: data.nbytes, f"IndexFlatIP, {os.cpu_count()} threads, FAISS defaults"
    if kind.startswith("torch"):
        threads = int(kind.removeprefix("torch-").removesuffix("t"))
        matrix = torch.from_numpy(data)

        def search_torch(q: np.ndarray) -> np.ndarray:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return torch.topk(torch.from_numpy(q) @ matrix.T, K, dim=1).indices.numpy()

        return search_torch, lambda: data.nbytes, f"torch.topk(q @ X.T), {threads} thread(s)"
    # exact-scan: the index's exact search with BLAS switched off, to show what the BLAS threshold buys
    config = SearchConfig(blas_min_queries=10**6) if kind == "exact-scan" else SearchConfig()
    vector_set = VectorSet(dim, "flat" if kind == "exact-scan" else kind, config)
    vector_set.add(ids, data)
    vector_set.maintain()

    def search_set(q: np.ndarray) -> np.ndarray:
        faiss.omp_set_num_threads(vector_set.config.n_threads)
        return vector_set.search(q, K)[1]

    detail = {
        "flat": f"faiss.knn, {config.n_threads} thread, BLAS from {config.blas_min_queries} queries",
        "exact-scan": f"faiss.knn, {config.n_threads} thread, per-query SIMD scan only (no BLAS)",
        "ivf": f"IVF sqrt(n) lists SQ8, n_probe {config.n_probe}, re-rank {config.n_rerank}",
        "hnsw": f"HNSW{config.hnsw_neighbors} SQ8, ef_search {config.ef_search}, re-rank {config.n_rerank}",
    }[kind]
    search_set.vector_set = vector_set  # type: ignore[attr-defined]  # kept for the sweep
    return search_set, vector_set.nbytes, detail


def sweep(n: int, dim: int, n_queries: int, kinds: list[str]) -> list[dict]:
    """Recall@10 and single-query p50 over n_probe / ef_search / n_rerank, on normal and tight clusters."""
    rows = []
    for noise in (NOISE, TIGHT_NOISE):
        data, queries = data_and_queries(n, n_queries, dim, noise)
        ids = np.arange(n, dtype=np.int64)
        exact = VectorSet(dim, "flat")
        exact.add(ids, data)
        truth = exact.search(queries, K)[1]
        for kind in [k for k in kinds if k in ("ivf", "hnsw")]:
            vector_set = VectorSet(dim, kind)
            vector_set.add(ids, data)
            vector_set.maintain()
            field = "n_probe" if kind == "ivf" else "ef_search"
            for value in (8, 32, 128) if kind == "ivf" else (16, 64, 256):
                for n_rerank in (16, 64, 256):
                    vector_set.config = dataclasses.replace(SearchConfig(), **{field: value, "n_rerank": n_rerank})
                    found = vector_set.search(queries, K)[1]
                    times = time_queries(lambda q, s=vector_set: s.search(q, K)[1], queries[:50], 1)
                    rows.append(
                        {
                            "n": n,
                            "noise": noise,
                            "kind": kind,
                            "value": value,
                            "n_rerank": n_rerank,
                            "recall": recall_at_k(found, truth),
                            "p50": times["p50"],
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def end_to_end(embedder: Embedder, n: int) -> dict:
    """Text encoding plus search over n vectors as the index searches them at that size, one query at a time."""
    vector_set = VectorSet(embedder.dim, "auto")
    vector_set.add(np.arange(n, dtype=np.int64), structured_vectors(n, embedder.dim, seed=n))
    vector_set.maintain()
    times = []
    for i in range(40):
        start = time.perf_counter()
        query = embedder.embed_text([TEXT_QUERIES[i % len(TEXT_QUERIES)]])
        vector_set.search(np.asarray(query, dtype=np.float32), K)
        times.append(time.perf_counter() - start)
    p50, p95 = percentiles(times[4:])  # the first calls warm up the model
    return {"n": n, "embedder": embedder.identity, "kind": vector_set.active_kind, "p50": p50, "p95": p95}


def _format_row(row: dict) -> str:
    return (
        f"| {row['n']:,} | {row['method']} | {row['build_s']:.2f} | {row['memory_mb']:.0f} | "
        f"{row['p50']:.2f} | {row['p95']:.2f} | {row['batch_p50']:.1f} | {row['batch_p95']:.1f} | {row['recall']:.3f} |"
    )


def render(rows: list[dict], sweeps: list[dict], e2e: list[dict], args: argparse.Namespace) -> str:
    lines = [
        START,
        f"Measured by `{args.command}` on {platform.machine()} with {os.cpu_count()} CPUs, "
        f"FAISS {faiss.__version__}, torch {torch.__version__}, load average {args.load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (the CPUs are shared); {args.queries} held-out queries of width {args.dim}, "
        f"batches of {BATCH}, k = {K}; peak RSS {peak_rss_mb():.0f} MB.",
        "",
        "| vectors | method | build s | memory MB | 1 query p50 ms | p95 ms | 100 queries p50 ms | p95 ms | recall@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_format_row(row) for row in rows),
        "",
        "Methods: " + "; ".join(sorted({f"**{r['method']}**: {r['label']}" for r in rows})) + ".",
        "",
        "Ratios (p50, one query / batch of 100): "
        + "; ".join(_ratios([r for r in rows if r["n"] == n]) for n in sorted({r["n"] for r in rows})),
    ]
    if sweeps:
        lines += [
            "",
            "| vectors | noise | kind | n_probe / ef_search | n_rerank | recall@10 | 1 query p50 ms |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s['n']:,} | {s['noise']} | {s['kind']} | {s['value']} | {s['n_rerank']} | {s['recall']:.3f} | "
            f"{s['p50']:.3f} |"
            for s in sweeps
        ]
    if e2e:
        lines += [
            "",
            "| vectors | embedder | search | text query end to end p50 ms | p95 ms |",
            "|---:|---|---|---:|---:|",
        ]
        lines += [f"| {r['n']:,} | {r['embedder']} | {r['kind']} | {r['p50']:.2f} | {r['p95']:.2f} |" for r in e2e]
    return "\n".join([*lines, END]) + "\n"


def _ratios(rows: list[dict]) -> str:
    by = {r["method"]: r for r in rows}
    if "exact" not in by:
        return ""
    parts = [
        f"{m} {by[m]['p50'] / by['exact']['p50']:.2g}x / {by[m]['batch_p50'] / by['exact']['batch_p50']:.2g}x"
        for m in by
        if m != "exact"
    ]
    return f"at {rows[0]['n']:,}, relative to exact: " + ", ".join(parts)


def write_report(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) + 1 :]
    else:
        text = text + ("\n" if text else "") + block
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_embedder(spec: str) -> Embedder:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=128, help="embedding width (the tiny model's d_embed)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10, help="timed batches of 100 queries per method")
    parser.add_argument(
        "--kinds", nargs="+", default=["faiss-default", "exact-scan", "exact", "ivf", "hnsw", "torch-1t", "torch-2t"]
    )
    parser.add_argument("--sweep", type=int, default=None, help="size at which to sweep approximate parameters")
    parser.add_argument("--embedder", default=None, help="MODULE:FACTORY returning an Embedder, for end-to-end rows")
    parser.add_argument("--quick", action="store_true", help="5k vectors, 50 queries, 3 batches (for CI)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to put the tables in")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.batches = [5_000], 50, 3
    args.command = "python -m bench.search " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k in ("sizes", "queries", "batches", "sweep") and v is not None
    )
    args.load_before = os.getloadavg()[0]
    kinds = ["flat" if k == "exact" else k for k in args.kinds]
    rows: list[dict] = []
    for n in args.sizes:
        rows += bench_size(n, args.dim, args.queries, args.batches, kinds)
    for row in rows:
        row["method"] = "exact" if row["method"] == "flat" else row["method"]
    sweeps = sweep(args.sweep, args.dim, args.queries, kinds) if args.sweep else []
    e2e = [end_to_end(load_embedder(args.embedder), n) for n in args.sizes] if args.embedder else []
    block = render(rows, sweeps, e2e, args)
    print(block)
    if args.out:
        write_report(args.out, block)


if __name__ == "__main__":
    main()
