"""Readers that turn caption and speech corpora on disk into uniform records.

Owns the corpus boundary: MS-COCO caption JSON (the official
``captions_*.json`` files and Karpathy's ``dataset_coco.json`` split file),
LibriSpeech folders, and JSONL manifests (the generic
``{"image"|"audio": path, "text": ...}`` rows and ShapesWorld's rows with
``"captions"`` lists). Each reader returns a list of ``ImageTextRecord`` or
``AudioTextRecord`` with absolute paths and normalised text, and refuses bad
input with a ``DataError`` that names the file (and the line, for JSON and
JSONL). A record whose media file is missing is skipped with a warning that
gives the count (``missing="error"`` refuses instead); a reader that finds
nothing raises.

Reads files only; decodes no image or audio. Imports ``mmbm.errors`` and
``mmbm.tokenizer.normalize_text``; never model, training or ShapesWorld code.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from mmbm.errors import DataError
from mmbm.tokenizer import normalize_text

logger = logging.getLogger(__name__)

KarpathySplit = Literal["train", "val", "test", "restval"]
KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")
OnMissing = Literal["skip", "error"]
PathLike = str | os.PathLike[str]
Record = TypeVar("Record", "ImageTextRecord", "AudioTextRecord")


@dataclass(frozen=True)
class ImageTextRecord:
    """One image and every caption written for it (normalised, non-empty).

    ``caption_targets``, when known, is the one caption a captioner should learn
    for the image as drawn and for its mirror image (ShapesWorld's complete,
    left-to-right canonical caption); real corpora leave it None.
    """

    image_path: Path
    captions: list[str]
    id: str
    caption_targets: tuple[str, str] | None = None


@dataclass(frozen=True)
class AudioTextRecord:
    """One clip and its normalised transcript; ``speaker`` is the speaker or voice when known."""

    audio_path: Path
    text: str
    id: str
    speaker: str | None = None


def load_coco_captions(
    annotations: PathLike, image_root: PathLike, *, normalize: bool = True, missing: OnMissing = "skip"
) -> list[ImageTextRecord]:
    """Records from an official COCO captions file (``captions_train2017.json`` layout).

    Images are ``image_root / file_name``; captions are grouped per image in the
    order the file lists them. Images without a caption are left out.
    """
    path = _existing_file(annotations, "COCO captions file")
    root = _existing_dir(image_root, "COCO image folder")
    data = _read_json(path)
    images = _require_list(data, "images", path)
    annotation_rows = _require_list(data, "annotations", path)
    file_names: dict[int | str, str] = {}
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        image_id = _require_key(image, "id", where)
        if not isinstance(image_id, int | str):
            raise DataError(f"{where}: 'id' must be an integer or string, got {type(image_id).__name__}")
        file_names[image_id] = str(_require_key(image, "file_name", where))
    captions: dict[int | str, list[str]] = {key: [] for key in file_names}
    n_orphans = 0
    for i, row in enumerate(annotation_rows):
        where = f"{path}: annotations[{i}]"
        image_id = _require_key(row, "image_id", where)
        text = _clean_text(_require_key(row, "caption", where), where, normalize)
        if not isinstance(image_id, int | str) or image_id not in captions:
            n_orphans += 1
        elif text:
            captions[image_id].append(text)
    if n_orphans:
        logger.warning("%s: %d annotation(s) refer to an image id not listed in images; ignored", path, n_orphans)
    candidates = [
        ImageTextRecord(image_path=root / file_names[key], captions=texts, id=str(key))
        for key, texts in captions.items()
        if texts
    ]
    return _keep_existing(candidates, lambda r: r.image_path, str(path), missing)


def load_karpathy_split(
    split_file: PathLike,
    image_root: PathLike,
    splits: KarpathySplit | Sequence[KarpathySplit] = "train",
    *,
    normalize: bool = True,
    missing: OnMissing = "skip",
) -> list[ImageTextRecord]:
    """Records of the chosen split(s) of a Karpathy split file (``dataset_coco.json`` layout).

    Images are ``image_root / filepath / filename`` (``filepath`` may be absent,
    as in the Flickr files); captions are each sentence's ``raw`` text, or its
    ``tokens`` joined when ``raw`` is absent. Pass ``("train", "restval")`` for
    the usual training set.
    """
    wanted = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in wanted if s not in KARPATHY_SPLITS]
    if not wanted or unknown:
        raise DataError(f"Karpathy split must be among {KARPATHY_SPLITS}; got {list(wanted)}")
    path = _existing_file(split_file, "Karpathy split file")
    root = _existing_dir(image_root, "COCO image folder")
    images = _require_list(_read_json(path), "images", path)
    candidates: list[ImageTextRecord] = []
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        if _require_key(image, "split", where) not in wanted:
            continue
        file_name = str(_require_key(image, "filename", where))
        texts = []
        sentences = _require_key(image, "sentences", where)
        if not isinstance(sentences, list):
            raise DataError(f"{where}: 'sentences' must be a list, got {type(sentences).__name__}")
        for j, sentence in enumerate(sentences):
            sentence_where = f"{where}.sentences[{j}]"
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None:
                tokens = _require_key(sentence, "tokens", sentence_where, alternatives=("raw",))
                if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                    raise DataError(f"{sentence_where}: 'tokens' must be a list of strings")
                raw = " ".join(tokens)
            text = _clean_text(raw, sentence_where, normalize)
            if text:
                texts.append(text)
        if not texts:
            continue
        image_id = image.get("cocoid", image.get("imgid", Path(file_name).stem))
        candidates.append(
            ImageTextRecord(
                image_path=root / str(image.get("filepath", "")) / file_name, captions=texts, id=str(image_id)
            )
        )
    if not candidates:
        raise DataError(f"{path}: no images with captions in split(s) {list(wanted)}")
    return _keep_existing(candidates, lambda r: r.image_path, str(path), missing)


def load_librispeech(
    root: PathLike, *, audio_ext: str = ".flac", normalize: bool = True, missing: OnMissing = "skip"
) -> list[AudioTextRecord]:
    """Records from a LibriSpeech-style tree: ``<spk>/<chapter>/<spk>-<chapter>.trans.txt``.

    ``root`` is a subset folder (``dev-clean``) or any folder above it; every
    transcript file below it is read, in sorted order. Each line is
    ``<spk>-<chapter>-<utt> TRANSCRIPT``; the clip is ``<spk>-<chapter>-<utt><audio_ext>``
    beside the transcript file, and the speaker is ``<spk>``.
    """
    folder = _existing_dir(root, "LibriSpeech folder")
    transcripts = sorted(folder.rglob("*.trans.txt"))
    if not transcripts:
        raise DataError(f"No LibriSpeech transcript files (*.trans.txt) under {folder}")
    candidates: list[AudioTextRecord] = []
    for transcript in transcripts:
        prefix = transcript.name.removesuffix(".trans.txt") + "-"
        for line_no, line in enumerate(_read_lines(transcript), start=1):
            if not line.strip():
                continue
            where = f"{transcript}:{line_no}"
            utterance, _, raw = line.strip().partition(" ")
            if not utterance.startswith(prefix) or not raw.strip():
                raise DataError(f"{where}: expected '{prefix}<utterance> TRANSCRIPT', got {line.strip()[:80]!r}")
            text = _clean_text(raw, where, normalize)
            if not text:
                raise DataError(f"{where}: transcript of {utterance} is empty after normalisation")
            speaker = utterance.split("-", 1)[0]
            candidates.append(AudioTextRecord(transcript.parent / f"{utterance}{audio_ext}", text, utterance, speaker))
    return _keep_existing(candidates, lambda r: r.audio_path, str(folder), missing)


def load_image_manifest(
    manifest: PathLike, *, normalize: bool = True, missing: OnMissing = "skip"
) -> list[ImageTextRecord]:
    """Records from a JSONL manifest of ``{"image": path, "text": str}`` or ``{"image", "captions": [...]}`` rows.

    Relative paths resolve against the manifest's folder. Rows naming the same
    image are merged into one record (COCO-style one-row-per-caption files);
    ``id`` is the row's ``"id"`` or else the image file's stem. ShapesWorld
    manifests (``captions`` lists, ``scene``) read as they are.
    """
    path = _existing_file(manifest, "image manifest")
    by_image: dict[Path, ImageTextRecord] = {}
    for where, row in _read_jsonl(path):
        image_path = _resolve(_require_key(row, "image", where), path, where)
        if "captions" in row:
            texts = row["captions"]
            if not isinstance(texts, list):
                raise DataError(f"{where}: 'captions' must be a list of strings, got {type(texts).__name__}")
        else:
            texts = [_require_key(row, "text", where, alternatives=("captions",))]
        captions = [c for c in (_clean_text(t, where, normalize) for t in texts) if c]
        if not captions:
            raise DataError(f"{where}: no non-empty caption")
        record = by_image.get(image_path)
        if record is None:
            by_image[image_path] = ImageTextRecord(image_path, captions, str(row.get("id", image_path.stem)))
        else:
            record.captions.extend(captions)
    return _keep_existing(list(by_image.values()), lambda r: r.image_path, str(path), missing)


def load_audio_manifest(
    manifest: PathLike, *, normalize: bool = True, missing: OnMissing = "skip"
) -> list[AudioTextRecord]:
    """Records from a JSONL manifest of ``{"audio": path, "text"|"transcript": str}`` rows.

    Relative paths resolve against the manifest's folder; ``id`` is the row's
    ``"id"`` or the clip's stem; ``speaker`` is the row's ``"speaker"`` or
    ``"voice"`` (ShapesWorld speech manifests) when present.
    """
    path = _existing_file(manifest, "audio manifest")
    candidates: list[AudioTextRecord] = []
    for where, row in _read_jsonl(path):
        audio_path = _resolve(_require_key(row, "audio", where), path, where)
        raw = row["text"] if "text" in row else _require_key(row, "transcript", where, alternatives=("text",))
        text = _clean_text(raw, where, normalize)
        if not text:
            raise DataError(f"{where}: transcript is empty")
        speaker = row.get("speaker", row.get("voice"))
        candidates.append(
            AudioTextRecord(
                audio_path, text, str(row.get("id", audio_path.stem)), None if speaker is None else str(speaker)
            )
        )
    return _keep_existing(candidates, lambda r: r.audio_path, str(path), missing)


def _existing_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_file():
        raise DataError(f"{what} is not a file: {path}")
    return path


def _existing_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} not found (or not a folder): {path}")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON at column {e.colno}: {e.msg}") from e


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(``file:line`` label, row) for each non-blank line; every row must be a JSON object."""
    rows = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON at column {e.colno}: {e.msg}") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: manifest has no rows")
    return rows


def _require_list(data: Any, key: str, path: Path) -> list[Any]:
    value = _require_key(data, key, str(path))
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _require_key(row: Any, key: str, where: str, alternatives: tuple[str, ...] = ()) -> Any:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if key not in row:
        names = " or ".join(repr(k) for k in (key, *alternatives))
        raise DataError(f"{where}: missing key {names}")
    return row[key]


def _clean_text(text: Any, where: str, normalize: bool) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: text must be a string, got {type(text).__name__}")
    return normalize_text(text) if normalize else " ".join(text.split())


def _resolve(value: Any, manifest: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: media path must be a non-empty string, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else manifest.parent / path


def _keep_existing(
    records: list[Record], path_of: Callable[[Record], Path], source: str, missing: OnMissing
) -> list[Record]:
    """Drop records whose media file is absent, saying how many; refuse when none is left."""
    if missing not in ("skip", "error"):
        raise DataError(f"missing must be 'skip' or 'error', got {missing!r}")
    kept = [r for r in records if path_of(r).is_file()]
    n_missing = len(records) - len(kept)
    if n_missing:
        examples = ", ".join(str(path_of(r)) for r in records if not path_of(r).is_file())[:300]
        if missing == "error":
            raise DataError(f"{source}: {n_missing} of {len(records)} media files are missing: {examples}")
        logger.warning(
            "%s: skipped %d of %d records whose media file is missing (%s)", source, n_missing, len(records), examples
        )
    if not kept:
        raise DataError(f"{source}: no usable records (of {len(records)} listed, none has its media file)")
    return kept
