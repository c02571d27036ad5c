"""Fixtures shared by the test modules: the shipped model, a tiny random model, tiny corpora and a running app.

- ``trained_model_dir``: the shipped models/mmbm-tiny, for the quality tests (it
  is committed, so a missing one is a failure, not a skip);
- ``tiny_corpus``: a ShapesWorld image corpus with every split (12 test and 3
  compositional scenes), and ``tiny_model_dir``: a random-init tiny checkpoint
  (32 px, 32 mel bands) whose tokenizer learnt that corpus's captions and the
  number words;
- ``training_corpora``: (images, speech) for the trainer, tones instead of voices;
- ``demo_world``: the demo's stand-in (a random model with example scenes and a
  gallery over rendered test scenes), and ``served_app``: the app serving it on a
  free port with a gradio_client connected.
Session fixtures are built once and only read; a test that changes files copies
them first. The builders themselves are in tests/helpers.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmbm.shapesworld.corpus import load_image_manifest
from tests.helpers import (
    TRAINED_MODEL_DIR,
    DemoWorld,
    build_world,
    make_image_corpus,
    make_small_checkpoint,
    make_speech_corpus,
    make_training_image_corpus,
    serving,
)

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="mmbm-gradio-tests-"))  # read when gradio is imported


@pytest.fixture(scope="session")
def trained_model_dir() -> Path:
    assert (TRAINED_MODEL_DIR / "model.safetensors").is_file(), f"shipped checkpoint missing: {TRAINED_MODEL_DIR}"
    return TRAINED_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_corpus(tmp_path_factory.mktemp("tiny-corpus") / "shapes", n_test=12, n_compositional=3)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    records = load_image_manifest(tiny_corpus, "train") + load_image_manifest(tiny_corpus, "test")
    return make_small_checkpoint(tmp_path_factory.mktemp("tiny-model") / "model", [c for r in records for c in r.captions])


@pytest.fixture(scope="session")
def training_corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training-corpora")
    return make_training_image_corpus(root / "shapes"), make_speech_corpus(root / "speech")


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    return build_world(tmp_path_factory.mktemp("demo"), n_images=6)


@pytest.fixture(scope="module")
def served_app(demo_world: DemoWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """(gradio_client.Client, app.Demo) for the app serving ``demo_world`` (images people add go to a copy)."""
    with serving(demo_world.model_dir, demo_world.index_dir, tmp_path_factory.mktemp("work")) as pair:
        yield pair
