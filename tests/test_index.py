"""Tests for the image index (mmbm.index: image_index, store, vectors, types).

The model is replaced by ``ColourEmbedder``, a deterministic embedder (colour
histogram plus a coarse layout) that is real enough for "a resized copy of a
scene finds that scene first" and "'red' finds the red scene" to mean something.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmbm.demo.gallery import index_manifest
from mmbm.errors import DataError, ImageError, SearchIndexError, TextError
from mmbm.index.image_index import ImageIndex, IndexConfig, SearchConfig
from mmbm.index.vectors import VectorSet

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
N_BINS = 4  # colour levels per channel in the histogram


def _bin(rgb: np.ndarray) -> np.ndarray:
    levels = np.asarray(rgb) * N_BINS // 256
    return levels[..., 0] * N_BINS * N_BINS + levels[..., 1] * N_BINS + levels[..., 2]


class ColourEmbedder:
    """sqrt colour histogram (64) + 4x4 mean-colour layout (48), L2-normalised; text names colours."""

    dim = N_BINS**3 + 48

    def __init__(self, identity: str = "colour-histogram-v1", layout_weight: float = 0.5) -> None:
        self.identity = identity
        self.layout_weight = layout_weight

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            pixels = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BOX), dtype=np.int64)
            histogram = np.bincount(_bin(pixels).ravel(), minlength=N_BINS**3) / 256
            layout = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float64) / 255 - 0.5
            rows.append(np.concatenate([np.sqrt(histogram), self.layout_weight * layout.ravel()]))
        return _unit(np.array(rows))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            histogram = np.zeros(N_BINS**3)
            for word in text.lower().split():
                if word in PALETTE:
                    histogram[_bin(np.array(PALETTE[word]))] += 1
            rows.append(np.concatenate([np.sqrt(histogram if histogram.any() else histogram + 1), np.zeros(48)]))
        return _unit(np.array(rows))


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_scene(seed: int, background: str | None = None, size: int = 32) -> Image.Image:
    """A background colour with 1-3 rectangles or ellipses of other colours, from a seed."""
    rng = random.Random(seed)
    names = list(PALETTE)
    background = background or rng.choice(names)
    image = Image.new("RGB", (size, size), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randint(0, size - 10), rng.randint(0, size - 10)
        box = (x0, y0, x0 + rng.randint(4, 9), y0 + rng.randint(4, 9))
        colour = PALETTE[rng.choice([n for n in names if n != background])]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return image


def results(index: ImageIndex, queries: list, k: int = 5) -> list[list[tuple[int, float, str | None]]]:
    out = []
    for query in queries:
        hits = index.search_text(query, k) if isinstance(query, str) else index.search_image(query, k)
        out.append([(h.id, h.score, h.caption) for h in hits])
    return out


@pytest.fixture
def scenes() -> list[Image.Image]:
    return [make_scene(seed) for seed in range(40)]


@pytest.fixture
def index(tmp_path: Path, scenes: list[Image.Image]) -> ImageIndex:
    index = ImageIndex.create(tmp_path / "index", ColourEmbedder(), kind="flat")
    report = index.add_images(scenes, captions=[f"scene {i}" for i in range(40)], progress=False)
    assert len(report.added) == 40 and not report.skipped and not report.duplicates
    yield index
    index.close()


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 100), dim))
    points = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim))
    return _unit(points)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_vector_finds_itself_first(kind: str) -> None:
    vectors = clustered(3000, 32, seed=1)
    ids = np.arange(10, 3010, dtype=np.int64) * 3  # ids are labels, not row numbers
    vector_set = VectorSet(32, kind)
    vector_set.add(ids, vectors)
    vector_set.maintain()
    assert vector_set.active_kind == kind
    scores, labels = vector_set.search(vectors, 10)
    assert np.array_equal(labels[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # re-ranked scores are exact
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_exact(kind: str) -> None:
    data, queries = clustered(6000, 32, seed=2), clustered(200, 32, seed=3)
    ids = np.arange(6000, dtype=np.int64)
    exact, approximate = VectorSet(32, "flat"), VectorSet(32, kind)  # default settings
    for vector_set in (exact, approximate):
        vector_set.add(ids, data)
        vector_set.maintain()
    _, truth = exact.search(queries, 10)
    _, found = approximate.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert recall >= 0.95, recall


def test_vector_set_remove_padding_and_round_trip() -> None:
    vectors = clustered(500, 16, seed=4)
    vector_set = VectorSet(16, "hnsw")
    vector_set.add(np.arange(500), vectors)
    vector_set.maintain()
    vector_set.remove(np.arange(0, 500, 2))
    _, labels = vector_set.search(vectors[:50], 10)
    assert not np.isin(labels, np.arange(0, 500, 2)).any()
    assert np.array_equal(labels[1::2, 0], np.arange(1, 50, 2))
    restored = VectorSet.from_arrays(vector_set.to_arrays(), 16, "hnsw", SearchConfig(), "test")
    assert restored.active_kind == "hnsw"
    assert np.array_equal(restored.search(vectors, 7)[1], vector_set.search(vectors, 7)[1])
    small = VectorSet(16, "flat")
    small.add(np.array([5, 9]), vectors[:2])
    scores, labels = small.search(vectors[:1], 4)
    assert labels.tolist() == [[5, 9, -1, -1]] and np.isinf(scores[0, 2:]).all()


def test_image_query_returns_the_same_scene_first(index: ImageIndex, scenes: list[Image.Image]) -> None:
    for i in range(0, 40, 3):
        resized = scenes[i].resize((48, 48), Image.Resampling.BICUBIC)  # not the stored pixels
        hits = index.search_image(resized, k=3)
        assert hits[0].id == i + 1 and hits[0].caption == f"scene {i}"
        assert hits[0].score > hits[1].score


def test_text_query_finds_the_named_colour(tmp_path: Path) -> None:
    with ImageIndex.create(tmp_path / "i", ColourEmbedder()) as index:
        report = index.add_images([make_scene(s, background=c) for s, c in enumerate(PALETTE)], progress=False)
        for i, colour in enumerate(PALETTE):
            assert index.search_text(f"a {colour} picture", k=1)[0].id == report.added[i]


def test_add_remove_save_reload_keep_results_identical(index: ImageIndex, scenes: list[Image.Image]) -> None:
    queries = ["red", "blue green", scenes[3], scenes[17].resize((40, 40))]
    before = results(index, queries, k=8)
    directory = index.directory
    index.close()
    with ImageIndex.open(directory, ColourEmbedder()) as reopened:
        assert results(reopened, queries, k=8) == before
        removed = [before[0][0][0], before[2][0][0], 30]
        reopened.remove(removed)
        after = results(reopened, queries, k=8)
        assert not {hit[0] for row in after for hit in row} & set(removed)
        # what was ranked below a removed image moves up, in the same order
        assert [h for h in after[1] if h[0] not in removed][:5] == [h for h in before[1] if h[0] not in removed][:5]
        reopened.add_images([make_scene(500)], progress=False)
        after = results(reopened, queries, k=8)
    with ImageIndex.open(directory, ColourEmbedder()) as again:
        assert results(again, queries, k=8) == after
        assert again.verify() == 38


def test_duplicates_are_refused_and_never_repeated(
    index: ImageIndex, scenes: list[Image.Image], tmp_path: Path
) -> None:
    scenes[5].save(tmp_path / "copy.png")  # same pixels, different container
    report = index.add_images([tmp_path / "copy.png", make_scene(900), make_scene(900)], progress=False)
    assert report.duplicates == ((str(tmp_path / "copy.png"), 6), ("<image 2>", report.added[0]))
    assert len(report.added) == 1
    hits = index.search_image(scenes[5], k=41)
    assert len({h.id for h in hits}) == len(hits) == 41


def test_folder_with_broken_and_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        make_scene(100 + i).save(folder / f"scene{i}.png")
    make_scene(103).save(folder / "sub" / "nested.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "scene0.png").read_bytes()[:60])
    (folder / ".hidden.png").write_bytes(b"ignored")
    with ImageIndex.create(tmp_path / "index", ColourEmbedder()) as index:
        report = index.build_from_folder(folder, progress=False)
        assert len(report.added) == 4
        reasons = dict(report.skipped)
        assert set(reasons) == {str(folder / name) for name in ("notes.txt", "empty.png", "truncated.png")}
        assert all("image" in reason.lower() for reason in reasons.values())
        assert index.search_image(folder / "sub" / "nested.jpg", k=1)[0].path == str(folder / "sub" / "nested.jpg")
        with pytest.raises(DataError, match="not found"):
            index.build_from_folder(tmp_path / "nowhere")


def test_manifest_rows_with_captions(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for i in range(3):
        make_scene(200 + i).save(tmp_path / "images" / f"{i}.png")
    rows = [
        {"image": "images/0.png", "text": "A red square"},
        {"id": "s1", "image": "images/1.png", "captions": ["one blue circle", "a circle"], "scene": {}},
        {"image": str(tmp_path / "images" / "2.png"), "text": "third"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    with ImageIndex.create(tmp_path / "index", ColourEmbedder()) as index:
        report = index_manifest(index, manifest, progress=False)
        assert len(report.added) == 3
        assert index.search_image(tmp_path / "images" / "1.png", k=1)[0].caption == "one blue circle"
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
        with pytest.raises(DataError, match=r"bad\.jsonl:2"):
            index_manifest(index, bad, progress=False)
        assert index.stats().n_images == 3


def test_wrong_model_is_refused_unless_reembedding(tmp_path: Path) -> None:
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.png")
        make_scene(300 + i).save(files[-1])
    with ImageIndex.create(tmp_path / "index", ColourEmbedder()) as index:
        index.add_images(files, progress=False)
    files[0].unlink()  # its original is gone: re-embedding falls back to the thumbnail
    other = ColourEmbedder(identity="colour-histogram-v2", layout_weight=2.0)
    with pytest.raises(SearchIndexError, match="colour-histogram-v1.*colour-histogram-v2.*reembed=True"):
        ImageIndex.open(tmp_path / "index", other)
    with ImageIndex.open(tmp_path / "index", other, reembed=True) as index:
        assert index.stats().embedder_identity == "colour-histogram-v2" and index.verify() == 6
        for i in range(1, 6):
            hit = index.search_vector(other.embed_images([make_scene(300 + i)])[0], k=1)[0]
            assert hit.id == i + 1 and hit.score > 0.9999  # stored vectors are the new model's
        assert index.search_image(make_scene(300), k=1)[0].id == 1
    with pytest.raises(SearchIndexError, match="colour-histogram-v2"):
        ImageIndex.open(tmp_path / "index", ColourEmbedder())


def test_bad_queries_are_refused(index: ImageIndex) -> None:
    for text, message in [("", "empty"), ("   \n", "empty"), ("red " * 200, "800 characters"), (b"red", "string")]:
        with pytest.raises(TextError, match=message):
            index.search_text(text)
    for k in (0, -3, True, 1001, 2.5):
        with pytest.raises(SearchIndexError, match="k must be"):
            index.search_text("red", k=k)
    for vector, message in [(np.ones(3), "shape"), (np.full(112, np.nan), "non-finite"), (np.zeros(112), "all-zero")]:
        with pytest.raises(SearchIndexError, match=message):
            index.search_vector(vector)
    with pytest.raises(ImageError, match="Not an image"):
        index.search_image(b"GIF89a garbage")
    assert len(index.search_text("red", k=1000)) == 40  # k above the size returns everything


def test_unknown_id_removes_nothing(index: ImageIndex) -> None:
    with pytest.raises(SearchIndexError, match=r"unknown image id\(s\) \[999\]"):
        index.remove([3, 999])
    with pytest.raises(SearchIndexError, match="integers"):
        index.remove(["3"])
    assert index.stats().n_images == 40 and index.verify() == 40
    assert index.search_image(make_scene(2), k=1)[0].id == 3


def test_bad_embedder_output_adds_nothing(tmp_path: Path) -> None:
    class Broken(ColourEmbedder):
        def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
            return np.ones((len(images), 3), np.float32)

    with ImageIndex.create(tmp_path / "i", Broken()) as index:
        with pytest.raises(SearchIndexError, match=r"returned shape \(2, 3\)"):
            index.add_images([make_scene(1), make_scene(2)], progress=False)
        assert index.stats().n_images == 0


def test_corrupt_or_missing_index_files(index: ImageIndex, scenes: list[Image.Image], tmp_path: Path) -> None:
    directory = index.directory
    expected = results(index, ["red", scenes[4]])
    index.close()
    with pytest.raises(SearchIndexError, match="index.sqlite is missing"):
        ImageIndex.open(tmp_path / "nowhere", ColourEmbedder())
    with pytest.raises(SearchIndexError, match="already exists"):
        ImageIndex.create(directory, ColourEmbedder())
    cache = directory / "vectors.npz"
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2] + b"\0" * 100)
    with pytest.raises(SearchIndexError, match=r"vectors\.npz is corrupt.*delete it"):
        ImageIndex.open(directory, ColourEmbedder())
    cache.unlink()  # a missing cache is rebuilt from SQLite: nothing is lost
    with ImageIndex.open(directory, ColourEmbedder()) as reopened:
        assert results(reopened, ["red", scenes[4]]) == expected and reopened.verify() == 40
    database = directory / "index.sqlite"
    database.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SearchIndexError, match=r"index\.sqlite"):
        ImageIndex.open(directory, ColourEmbedder())


def test_states_a_crash_can_leave_are_repaired_on_open(
    index: ImageIndex, scenes: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = index.directory
    monkeypatch.setattr("mmbm.index.image_index.write_cache", lambda *args: None)  # "killed" before the cache write
    index.add_images([make_scene(700), make_scene(701)], progress=False)
    index.remove([1, 2])
    expected = results(index, ["red", scenes[7], make_scene(700)])
    index.close()
    monkeypatch.undo()
    (directory / ".vectors.npz.1234.tmp").write_bytes(b"half-written")  # killed mid cache write
    with ImageIndex.open(directory, ColourEmbedder()) as reopened:
        assert reopened.verify() == 40
        assert results(reopened, ["red", scenes[7], make_scene(700)]) == expected
    assert not list(directory.glob(".vectors.npz.*.tmp"))


def test_auto_kind_switches_to_approximate_at_the_configured_size(tmp_path: Path) -> None:
    config = IndexConfig(search=SearchConfig(approximate_from=60))
    images = [make_scene(seed) for seed in range(80)]
    with ImageIndex.create(tmp_path / "i", ColourEmbedder(), config=config) as index:
        index.add_images(images[:50], progress=False)
        assert index.stats().active_kind == "flat"
        index.add_images(images[50:], progress=False)
        assert index.stats().active_kind == "ivf"
    with ImageIndex.open(tmp_path / "i", ColourEmbedder(), config=config) as index:
        assert index.stats().active_kind == "ivf"
        assert [index.search_image(image, k=1)[0].id for image in images] == list(range(1, 81))


def test_readers_keep_working_while_a_writer_adds(index: ImageIndex) -> None:
    reader = ImageIndex.open(index.directory, ColourEmbedder())  # as a second process would
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for start in range(1000, 1030, 3):
                index.add_images([make_scene(s) for s in range(start, start + 3)], batch_size=1, progress=False)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    n_searches = 0
    while writer.is_alive() or n_searches < 5:
        assert len(reader.search_text("red", k=5)) == 5
        assert index.search_image(make_scene(1), k=1)[0].id == 2  # the writer's own object, mid-add
        n_searches += 1
    writer.join()
    assert not errors
    assert len(reader) == 40 and reader.refresh() and len(reader) == 70
    assert reader.verify() == index.verify() == 70
    reader.close()


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_index import ColourEmbedder, make_scene
from mmbm.index.image_index import ImageIndex
index = ImageIndex.open({directory!r}, ColourEmbedder())
print("ready", flush=True)
seed = {seed}
while True:
    report = index.add_images([make_scene(s) for s in range(seed, seed + 4)], batch_size=2, progress=False)
    index.remove(report.added[:1])  # only its own images: what was there before must survive
    seed += 4
"""


@pytest.mark.slow
def test_killing_a_writer_mid_add_loses_nothing(index: ImageIndex) -> None:
    directory = index.directory
    index.close()
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    known: set[int] = set(range(1, 41))
    for round_ in range(5):
        script = CHILD.format(tests=str(Path(__file__).parent), directory=str(directory), seed=10_000 * (round_ + 1))
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        with ImageIndex.open(directory, ColourEmbedder()) as reopened:
            n = reopened.verify()  # metadata and vectors agree
            with closing(sqlite3.connect(directory / "index.sqlite")) as connection:
                ids = {row[0] for row in connection.execute("SELECT id FROM images")}
                stored = connection.execute("SELECT id, vector FROM images ORDER BY random() LIMIT 5").fetchall()
            assert known <= ids and len(ids) == n  # nothing committed before is lost
            known = ids
            for image_id, blob in stored:  # each stored vector finds its own image
                assert reopened.search_vector(np.frombuffer(blob, np.float32), k=1)[0].id == image_id
    assert len(known) > 40  # the children did commit work before being killed
    with ImageIndex.open(directory, ColourEmbedder()) as reopened:  # and the index still takes writes
        assert len(reopened.add_images([make_scene(99_999)], progress=False).added) == 1
