"""Corpus adapters on small COCO, Karpathy, LibriSpeech and JSONL files the tests write."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmbm.data.adapters import (
    AudioTextRecord,
    ImageTextRecord,
    load_audio_manifest,
    load_coco_captions,
    load_image_manifest,
    load_karpathy_split,
    load_librispeech,
)
from mmbm.errors import DataError

SAMPLE_RATE = 16_000


def write_png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def write_tone(path: Path, seconds: float = 0.3, frequency: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * frequency * t), SAMPLE_RATE)
    return path


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------ COCO official


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "train2017"
    for i in (1, 2, 3):
        write_png(root / f"{i:012d}.png")
    data = {
        "info": {},
        "images": [{"id": i, "file_name": f"{i:012d}.png", "width": 8, "height": 8} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A Red circle."},
            {"id": 11, "image_id": 2, "caption": "Two dogs on 3 sofas"},
            {"id": 12, "image_id": 1, "caption": "a circle that is red"},
            {"id": 13, "image_id": 3, "caption": "Nothing much!"},
            {"id": 14, "image_id": 99, "caption": "an orphan caption"},
        ],
    }
    return write_json(tmp_path / "captions_train2017.json", data), root


def test_coco_groups_captions_per_image_and_normalises(coco: tuple[Path, Path]) -> None:
    records = load_coco_captions(*coco)
    assert [r.id for r in records] == ["1", "2", "3"]
    assert records[0] == ImageTextRecord(coco[1] / "000000000001.png", ["a red circle", "a circle that is red"], "1")
    assert records[1].captions == ["two dogs on three sofas"]
    assert all(r.image_path.is_file() for r in records)


def test_coco_skips_missing_images_and_reports_the_count(
    coco: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    (coco[1] / "000000000002.png").unlink()
    with caplog.at_level(logging.WARNING, logger="mmbm.data.adapters"):
        records = load_coco_captions(*coco)
    assert [r.id for r in records] == ["1", "3"]
    assert "skipped 1 of 3" in caplog.text and "000000000002.png" in caplog.text
    with pytest.raises(DataError, match=r"1 of 3 media files are missing"):
        load_coco_captions(*coco, missing="error")


def test_coco_refuses_when_no_image_exists(coco: tuple[Path, Path]) -> None:
    for png in coco[1].iterdir():
        png.unlink()
    with pytest.raises(DataError, match="no usable records"):
        load_coco_captions(*coco)


def test_coco_errors_name_file_line_and_key(coco: tuple[Path, Path], tmp_path: Path) -> None:
    annotations, root = coco
    with pytest.raises(DataError, match="COCO captions file not found"):
        load_coco_captions(tmp_path / "nope.json", root)
    with pytest.raises(DataError, match="COCO image folder not found"):
        load_coco_captions(annotations, tmp_path / "no_folder")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"broken\.json:3: malformed JSON"):
        load_coco_captions(broken, root)
    no_annotations = write_json(tmp_path / "no_ann.json", {"images": []})
    with pytest.raises(DataError, match=r"no_ann\.json: missing key 'annotations'"):
        load_coco_captions(no_annotations, root)
    bad_row = write_json(
        tmp_path / "bad_row.json", {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}
    )
    with pytest.raises(DataError, match=r"annotations\[0\]: missing key 'caption'"):
        load_coco_captions(bad_row, root)
    no_captions = write_json(tmp_path / "empty.json", {"images": [{"id": 1, "file_name": "a.png"}], "annotations": []})
    with pytest.raises(DataError, match="no usable records"):
        load_coco_captions(no_captions, root)


# ------------------------------------------------------------ Karpathy split


@pytest.fixture
def karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    images = []
    for i, split in enumerate(["train", "val", "test", "restval", "train"]):
        folder = "val2014" if split != "train" else "train2014"
        write_png(root / folder / f"img{i}.png")
        sentences = [{"raw": f"Image {i} shows a Cat.", "tokens": ["image", str(i)]}, {"tokens": ["a", "dog", "sits"]}]
        images.append(
            {
                "filepath": folder,
                "filename": f"img{i}.png",
                "split": split,
                "sentences": sentences,
                "cocoid": 100 + i,
                "imgid": i,
            }
        )
    return write_json(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"}), root


def test_karpathy_selects_splits(karpathy: tuple[Path, Path]) -> None:
    split_file, root = karpathy
    val = load_karpathy_split(split_file, root, "val")
    assert [r.id for r in val] == ["101"]
    assert val[0].image_path == root / "val2014" / "img1.png"
    assert val[0].captions == ["image one shows a cat", "a dog sits"]
    train = load_karpathy_split(split_file, root, ("train", "restval"))
    assert [r.id for r in train] == ["100", "103", "104"]
    assert [r.id for r in load_karpathy_split(split_file, root, "test")] == ["102"]


def test_karpathy_errors(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    split_file, root = karpathy
    with pytest.raises(DataError, match="Karpathy split must be among"):
        load_karpathy_split(split_file, root, "dev")  # type: ignore[arg-type]
    only_train = write_json(tmp_path / "train_only.json", {"images": [json.loads(split_file.read_text())["images"][0]]})
    with pytest.raises(DataError, match=r"no images with captions in split\(s\) \['val'\]"):
        load_karpathy_split(only_train, root, "val")
    no_split = write_json(tmp_path / "nosplit.json", {"images": [{"filename": "x.png", "sentences": []}]})
    with pytest.raises(DataError, match=r"images\[0\]: missing key 'split'"):
        load_karpathy_split(no_split, root, "train")
    no_text = write_json(
        tmp_path / "notext.json", {"images": [{"filename": "x.png", "split": "val", "sentences": [{}]}]}
    )
    with pytest.raises(DataError, match=r"images\[0\]\.sentences\[0\]: missing key 'tokens' or 'raw'"):
        load_karpathy_split(no_text, root, "val")


# ------------------------------------------------------------ LibriSpeech


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for speaker, chapter, lines in (
        ("84", "121123", ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"]),
        ("174", "50561", ["FORGOTTEN TOO THE NAME OF GILLIAN THE LOVELY CAPTIVE"]),
    ):
        folder = root / speaker / chapter
        utterances = [f"{speaker}-{chapter}-{k:04d}" for k in range(len(lines))]
        for k, utterance in enumerate(utterances):
            write_tone(folder / f"{utterance}.flac", frequency=300.0 + 50 * k)
        text = "".join(f"{u} {line}\n" for u, line in zip(utterances, lines, strict=True))
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(text)
    return root


def test_librispeech_reads_speakers_transcripts_and_flac(librispeech: Path) -> None:
    records = load_librispeech(librispeech.parent)  # from a folder above the subset
    assert [r.id for r in records] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert records[1] == AudioTextRecord(
        librispeech / "84" / "121123" / "84-121123-0000.flac", "go do you hear", "84-121123-0000", "84"
    )
    assert {r.speaker for r in records} == {"84", "174"}
    samples, rate = soundfile.read(records[0].audio_path)
    assert rate == SAMPLE_RATE and samples.shape == (int(0.3 * SAMPLE_RATE),)


def test_librispeech_errors(librispeech: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (librispeech / "84" / "121123" / "84-121123-0001.flac").unlink()
    with caplog.at_level(logging.WARNING, logger="mmbm.data.adapters"):
        assert len(load_librispeech(librispeech)) == 2
    assert "skipped 1 of 3" in caplog.text
    with pytest.raises(DataError, match="No LibriSpeech transcript files"):
        load_librispeech(write_png(tmp_path / "no_transcripts" / "x.png").parent)
    with pytest.raises(DataError, match="LibriSpeech folder not found"):
        load_librispeech(tmp_path / "missing")
    transcript = librispeech / "174" / "50561" / "174-50561.trans.txt"
    transcript.write_text("174-50561-0000 FINE\n999-1-0001 WRONG PREFIX\n")
    with pytest.raises(DataError, match=r"174-50561\.trans\.txt:2: expected '174-50561-<utterance> TRANSCRIPT'"):
        load_librispeech(librispeech)


# ------------------------------------------------------------ JSONL manifests


def test_image_manifest_resolves_relative_paths_and_merges_rows(tmp_path: Path) -> None:
    write_png(tmp_path / "corpus" / "images" / "s0.png")
    write_png(tmp_path / "corpus" / "images" / "s1.png")
    absolute = write_png(tmp_path / "elsewhere" / "far.png")
    manifest = write_jsonl(
        tmp_path / "corpus" / "train.jsonl",
        [
            {"id": "s0", "image": "images/s0.png", "captions": ["a red circle", "a circle"], "scene": {"objects": []}},
            {"image": "images/s1.png", "text": "Two Squares"},
            {"image": "images/s1.png", "text": "some squares"},
            {"image": str(absolute), "text": "far away"},
        ],
    )
    records = load_image_manifest(manifest)
    assert [(r.id, r.captions) for r in records] == [
        ("s0", ["a red circle", "a circle"]),
        ("s1", ["two squares", "some squares"]),
        ("far", ["far away"]),
    ]
    assert records[0].image_path == tmp_path / "corpus" / "images" / "s0.png"
    assert records[2].image_path == absolute


def test_audio_manifest_reads_text_transcript_and_voice(tmp_path: Path) -> None:
    write_tone(tmp_path / "clips" / "c0.wav")
    write_tone(tmp_path / "clips" / "c1.wav")
    manifest = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {
                "id": "c0",
                "audio": "clips/c0.wav",
                "text": "seven three nine",
                "engine": "flite",
                "voice": "awb",
                "kind": "number",
                "duration": 0.3,
            },
            {"audio": "clips/c1.wav", "transcript": "Hello, World!", "speaker": "me"},
        ],
    )
    assert load_audio_manifest(manifest) == [
        AudioTextRecord(tmp_path / "clips" / "c0.wav", "seven three nine", "c0", "awb"),
        AudioTextRecord(tmp_path / "clips" / "c1.wav", "hello world", "c1", "me"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "a.png", "text": "ok"', r"rows\.jsonl:2: malformed JSON"),
        ('["image", "a.png"]', r"rows\.jsonl:2: expected a JSON object, got list"),
        ('{"text": "no image"}', r"rows\.jsonl:2: missing key 'image'"),
        ('{"image": "a.png"}', r"rows\.jsonl:2: missing key 'text' or 'captions'"),
        ('{"image": "a.png", "text": "?!"}', r"rows\.jsonl:2: no non-empty caption"),
        ('{"image": "a.png", "captions": "one string"}', r"rows\.jsonl:2: 'captions' must be a list"),
        ('{"image": 5, "text": "x"}', r"rows\.jsonl:2: media path must be a non-empty string"),
    ],
)
def test_image_manifest_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    write_png(tmp_path / "a.png")
    (tmp_path / "rows.jsonl").write_text('{"image": "a.png", "text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        load_image_manifest(tmp_path / "rows.jsonl")


def test_manifest_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="audio manifest not found"):
        load_audio_manifest(tmp_path / "absent.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"blank\.jsonl: manifest has no rows"):
        load_image_manifest(tmp_path / "blank.jsonl")
    write_jsonl(tmp_path / "speech.jsonl", [{"audio": "gone.wav", "text": "hi"}])
    with pytest.raises(DataError, match="no usable records"):
        load_audio_manifest(tmp_path / "speech.jsonl")
    write_jsonl(tmp_path / "notext.jsonl", [{"audio": "gone.wav"}])
    with pytest.raises(DataError, match=r"notext\.jsonl:1: missing key 'transcript' or 'text'"):
        load_audio_manifest(tmp_path / "notext.jsonl")
