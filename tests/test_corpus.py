"""The image corpus on disk: layout, splits, determinism, caching, resuming and refusals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

import mmbm.shapesworld.corpus as corpus_module
from mmbm.errors import ConfigError, DataError
from mmbm.shapesworld.captions import judge
from mmbm.shapesworld.corpus import (
    SPLITS,
    add_shapes_arguments,
    generate_image_corpus,
    load_corpus_info,
    load_image_manifest,
    make_item,
    render_sample_grid,
    run_shapes_command,
)
from mmbm.shapesworld.shapes import ShapesConfig, heldout_pairs
from mmbm.tokenizer import normalize_text

SMALL = ShapesConfig(image_size=32, n_train=12, n_val=3, n_test=3, n_compositional=4, seed=5)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: data for name, (data, _) in _snapshot(folder).items()}


def test_corpus_layout_manifest_rows_and_record(tmp_path: Path) -> None:
    summary = generate_image_corpus(tmp_path / "shapes", SMALL, progress=False)
    out = tmp_path / "shapes"
    assert summary.counts == {"train": 12, "val": 3, "test": 3, "compositional": 4}
    assert (summary.n_rendered, summary.n_reused) == (22, 0) and summary.images_per_second > 0
    record = json.loads((out / "corpus.json").read_text())
    assert record["config"] == SMALL.to_dict() and record["counts"] == summary.counts
    assert [tuple(p) for p in record["heldout_pairs"]] == list(heldout_pairs(5, 8))
    assert record["bytes_on_disk"] == summary.bytes_on_disk > 0
    for split in SPLITS:
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == summary.counts[split]
        for row in rows:
            assert set(row) == {"id", "image", "captions", "scene"}
            assert row["image"] == f"images/{row['id']}.png"
            with Image.open(out / row["image"]) as image:
                assert image.size == (32, 32) and image.mode == "RGB"
            assert len(row["captions"]) >= 5 and all(normalize_text(c) == c for c in row["captions"])
    records = load_image_manifest(out, "val")
    assert [r.id for r in records] == ["val-0000000", "val-0000001", "val-0000002"]
    for r in records:
        assert r.image.is_file() and all(judge(c, r.scene).faithful for c in r.captions)
        assert (r.scene, list(r.captions)) == make_item(SMALL, "val", int(r.id.split("-")[1]))
    info = load_corpus_info(out)
    assert info.config == SMALL and info.heldout_pairs == heldout_pairs(5, 8)


def test_held_out_pairs_never_leak_and_compositional_scenes_show_them(tmp_path: Path) -> None:
    config = ShapesConfig(image_size=32, n_train=300, n_val=50, n_test=50, n_compositional=60, seed=9)
    generate_image_corpus(tmp_path, config, progress=False)
    held = set(load_corpus_info(tmp_path).heldout_pairs)
    seen = set()
    for split in ("train", "val", "test"):
        for record in load_image_manifest(tmp_path, split):
            pairs = {o.pair for o in record.scene.objects}
            assert not pairs & held, (record.id, pairs & held)
            seen |= pairs
    compositional = load_image_manifest(tmp_path, "compositional")
    assert all({o.pair for o in r.scene.objects} & held for r in compositional)
    # Every shape and colour of a held-out pair is still seen in training, in other pairs.
    assert {s for s, _ in held} <= {s for s, _ in seen} and {c for _, c in held} <= {c for _, c in seen}


def test_same_config_gives_identical_corpora_whatever_the_worker_count(tmp_path: Path) -> None:
    generate_image_corpus(tmp_path / "one", SMALL, progress=False, workers=1)
    generate_image_corpus(tmp_path / "two", SMALL, progress=False, workers=2)
    assert _contents(tmp_path / "one") == _contents(tmp_path / "two")
    solid_only = ShapesConfig(**{**SMALL.to_dict(), "backgrounds": ("solid",)})
    generate_image_corpus(tmp_path / "other", solid_only, progress=False)
    assert (tmp_path / "one" / "train.jsonl").read_bytes() != (tmp_path / "other" / "train.jsonl").read_bytes()


def test_second_run_with_the_same_config_does_no_work(tmp_path: Path) -> None:
    generate_image_corpus(tmp_path, SMALL, progress=False)
    before = _snapshot(tmp_path)
    summary = generate_image_corpus(tmp_path, SMALL, progress=False)
    assert (summary.n_rendered, summary.n_reused) == (0, 22)
    assert _snapshot(tmp_path) == before  # not a byte or a modification time changed


def test_interrupted_run_resumes_keeping_valid_images(tmp_path: Path) -> None:
    generate_image_corpus(tmp_path, SMALL, progress=False)
    complete = _contents(tmp_path)
    (tmp_path / "corpus.json").unlink()
    for name in ("train-0000003", "val-0000001", "compositional-0000002"):
        (tmp_path / "images" / f"{name}.png").unlink()
    corrupt = tmp_path / "images" / "test-0000000.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    (tmp_path / "images" / ".train-0000004.123.png").write_bytes(b"half")  # a stopped write
    with pytest.raises(DataError, match="corpus.json is missing"):
        load_image_manifest(tmp_path, "train")
    summary = generate_image_corpus(tmp_path, SMALL, progress=False)
    assert (summary.n_rendered, summary.n_reused) == (4, 18)
    assert _contents(tmp_path) == complete


def test_a_stopped_run_is_never_reported_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_render = corpus_module.render_scene
    calls = []

    def render_then_stop(*args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(corpus_module, "render_scene", render_then_stop)
    with pytest.raises(KeyboardInterrupt):
        generate_image_corpus(tmp_path, SMALL, progress=False)
    assert not (tmp_path / "corpus.json").exists() and not (tmp_path / "train.jsonl").exists()
    with pytest.raises(DataError, match="not a complete ShapesWorld corpus"):
        load_corpus_info(tmp_path)
    monkeypatch.setattr(corpus_module, "render_scene", real_render)
    summary = generate_image_corpus(tmp_path, SMALL, progress=False)
    assert (summary.n_rendered, summary.n_reused) == (15, 7)


def test_enlarging_keeps_images_and_other_scene_settings_need_overwrite(tmp_path: Path) -> None:
    generate_image_corpus(tmp_path, SMALL, progress=False)
    bigger = ShapesConfig(
        **{**SMALL.to_dict(), "n_train": 20, "n_captions": 6, "backgrounds": ("solid", "gradient", "noise")}
    )
    summary = generate_image_corpus(tmp_path, bigger, progress=False)
    assert (summary.n_rendered, summary.n_reused) == (8, 22)
    assert all(len(r.captions) == 6 for r in load_image_manifest(tmp_path, "train"))
    before = _snapshot(tmp_path)
    reseeded = ShapesConfig(**{**SMALL.to_dict(), "seed": 6})
    with pytest.raises(DataError, match=r"different seed, image size or scene settings; pass overwrite=True"):
        generate_image_corpus(tmp_path, reseeded, progress=False)
    assert _snapshot(tmp_path) == before  # refused before touching anything
    summary = generate_image_corpus(tmp_path, reseeded, progress=False, overwrite=True)
    assert summary.n_rendered == 22 and len(list((tmp_path / "images").glob("*.png"))) == 22
    assert load_corpus_info(tmp_path).config.seed == 6


def test_bad_output_folder_and_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write the image corpus to"):
        generate_image_corpus(blocker / "shapes", SMALL, progress=False)
    with pytest.raises(DataError, match="cannot write the image corpus to"):
        generate_image_corpus(blocker, SMALL, progress=False)
    with pytest.raises(ConfigError, match="^workers:"):
        generate_image_corpus(tmp_path / "w", SMALL, progress=False, workers=0)
    with pytest.raises(ConfigError, match="^config: expected a ShapesConfig"):
        generate_image_corpus(tmp_path / "c", {"n_train": 3}, progress=False)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_loader_refuses_unknown_splits_missing_images_and_bad_rows(tmp_path: Path) -> None:
    generate_image_corpus(tmp_path, SMALL, progress=False)
    with pytest.raises(
        DataError, match=r"unknown split 'dev'; this corpus has \['compositional', 'test', 'train', 'val'\]"
    ):
        load_image_manifest(tmp_path, "dev")
    (tmp_path / "images" / "test-0000001.png").unlink()
    with pytest.raises(DataError, match="line 2: image .*test-0000001.png' is missing"):
        load_image_manifest(tmp_path, "test")
    lines = (tmp_path / "val.jsonl").read_text().splitlines()
    (tmp_path / "val.jsonl").write_text("\n".join([lines[0], '{"id": "x"}', lines[2]]) + "\n")
    with pytest.raises(DataError, match="val.jsonl' line 2"):
        load_image_manifest(tmp_path, "val")


def test_sample_grid_is_a_png_with_one_cell_per_scene(tmp_path: Path) -> None:
    items = [make_item(SMALL, "test", k) for k in range(3)]
    path = render_sample_grid([s for s, _ in items], [c for _, c in items], tmp_path / "docs" / "grid.png", columns=2)
    with Image.open(path) as grid:
        assert grid.width == 2 * 220 and grid.height > 2 * 128
    with pytest.raises(DataError, match="one caption list per scene"):
        render_sample_grid([items[0][0]], [], tmp_path / "x.png")


def test_cli_flags_build_the_config_and_refuse_bad_values_before_work(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_shapes_arguments(parser)
    flags = [
        "--out",
        str(tmp_path / "cli"),
        "--image-size",
        "32",
        "--n-train",
        "4",
        "--n-val",
        "1",
        "--n-test",
        "1",
        "--n-compositional",
        "2",
        "--seed",
        "3",
        "--backgrounds",
        "solid,noise",
        "--no-progress",
    ]
    summary = run_shapes_command(parser.parse_args(flags))
    info = load_corpus_info(tmp_path / "cli")
    assert summary.counts == info.counts == {"train": 4, "val": 1, "test": 1, "compositional": 2}
    assert info.config.backgrounds == ("solid", "noise") and info.config.seed == 3
    bad = ["--out", str(tmp_path / "bad"), "--captions", "3", "--no-progress"]
    with pytest.raises(ConfigError, match="^n_captions: must be in"):
        run_shapes_command(parser.parse_args(bad))
    assert not (tmp_path / "bad").exists()
