"""What the demo's tests run against: a tiny random-init checkpoint, ShapesWorld scenes and an image index.

Shared by tests/test_app.py (gradio_client) and tests/test_browser.py (Chromium).
A random model's outputs are meaningless, so the tests that use it check the
app's behaviour (types, refusals, round trips), never quality. The quality tests
run against the trained ``models/mmbm-tiny`` through ``trained_model_dir``, the
one place that decides whether they skip.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from mmbm.config import ModelConfig
from mmbm.model.checkpoint import save_checkpoint
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import VOCABULARY
from mmbm.shapesworld.corpus import make_item
from mmbm.shapesworld.scene import Scene
from mmbm.shapesworld.shapes import ShapesConfig, render_scene
from mmbm.tokenizer import number_to_words, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TRAINED_MODEL_DIR = REPO / "models" / "mmbm-tiny"
# Small enough that loading, captioning and transcribing take milliseconds on one thread.
SMALL = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, d_embed=16, max_text_len=40, max_audio_tokens=400)
SHAPES = ShapesConfig()  # the default corpus config: test-split scenes are the ones the trained model never saw


@dataclass(frozen=True)
class DemoWorld:
    model_dir: Path
    index_dir: Path
    images: list[Path]  # rendered test-split scenes, already in the index
    scenes: list[Scene]
    captions: list[list[str]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def render_test_scenes(
    directory: Path, n: int, start: int = 0, size: int = 64
) -> tuple[list[Path], list[Scene], list[list[str]]]:
    """Scenes ``start .. start+n-1`` of the default corpus's test split, rendered as the corpus renders them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, scenes, captions = [], [], []
    for k in range(start, start + n):
        scene, texts = make_item(SHAPES, "test", k)
        path = directory / f"test-{k:07d}.png"
        render_scene(scene, size, SHAPES.supersample).save(path)
        paths.append(path)
        scenes.append(scene)
        captions.append(texts)
    return paths, scenes, captions


def make_random_checkpoint(directory: Path, texts: list[str], seed: int = 0) -> Path:
    """A random-init tiny model whose tokenizer knows the ShapesWorld words and the number words."""
    words = [*texts, " ".join(VOCABULARY), *(number_to_words(n) for n in range(100))]
    tokenizer = train_tokenizer(words, vocab_size=160)
    torch.manual_seed(seed)
    save_checkpoint(MMBM(config_for_tokenizer(ModelConfig.tiny(**SMALL), tokenizer)).eval(), directory, tokenizer)
    return directory


def build_world(root: Path, n_images: int = 6) -> DemoWorld:
    images, scenes, captions = render_test_scenes(root / "scenes", n_images)
    model_dir = make_random_checkpoint(root / "model", [c for texts in captions for c in texts])
    build_index(model_dir, root / "gallery", images)
    return DemoWorld(model_dir, root / "gallery", images, scenes, captions)


def build_index(model_dir: Path, index_dir: Path, images: list[Path]) -> None:
    pipeline = Pipeline.load(model_dir, index_dir, device="cpu", create_index=True)
    try:
        pipeline.add_images(images)
    finally:
        pipeline.close()


def require_trained_model() -> Path:
    """The shipped checkpoint for the quality tests (each test module's ``trained_model_dir`` fixture).

    It is committed, so a missing one is a failure, not a skip.
    """
    assert (TRAINED_MODEL_DIR / "model.safetensors").is_file(), f"shipped checkpoint missing: {TRAINED_MODEL_DIR}"
    return TRAINED_MODEL_DIR
