"""Builders the tests share: tiny random checkpoints, small corpora on disk, rendered scenes, a served app.

Not a test module (pytest collects test_*.py only). tests/conftest.py turns the
common cases into fixtures (``tiny_model_dir``, ``tiny_corpus``,
``training_corpora``, ``demo_world``, ``served_app``); tests call these
functions directly when they need another size or a fresh copy. A random
model's outputs are meaningless, so tests built on one check behaviour (types,
refusals, round trips, batching), never quality; the quality tests use the
shipped ``models/mmbm-tiny`` (the ``trained_model_dir`` fixture).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from mmbm.config import AudioConfig, ImageConfig, ModelConfig
from mmbm.demo.gallery import write_examples
from mmbm.model.checkpoint import save_checkpoint
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import VOCABULARY
from mmbm.shapesworld.corpus import generate_image_corpus, make_item
from mmbm.shapesworld.scene import Scene
from mmbm.shapesworld.shapes import ShapesConfig, render_scene
from mmbm.shapesworld.words import NUMBER_WORDS
from mmbm.tokenizer import number_to_words, train_tokenizer
from mmbm.training.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TRAINED_MODEL_DIR = REPO / "models" / "mmbm-tiny"
SAMPLE_RATE = 16_000
# Small enough that loading, captioning and transcribing take milliseconds on one thread.
SMALL = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, d_embed=16, max_text_len=40, max_audio_tokens=400)
SHAPES = ShapesConfig()  # the default corpus config: test-split scenes are the ones the trained model never saw
TRANSCRIPTS = ("a red circle", "two blue squares", "seven", "a green triangle above a star", "twelve", "one star")


def tone(seconds: float, frequency: float = 220.0, rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    """A sine wave, (seconds * rate,) float32."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----- models --------------------------------------------------------------------------


def make_checkpoint(
    directory: Path, texts: Sequence[str], vocab_size: int = 120, seed: int = 0, **overrides: Any
) -> Path:
    """A random-init tiny MMBM (SMALL widths, ``overrides`` on top) and a tokenizer trained on ``texts``."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = MMBM(config_for_tokenizer(ModelConfig.tiny(**SMALL, **overrides), tokenizer)).eval()
    return save_checkpoint(model, directory, tokenizer)


def make_small_checkpoint(directory: Path, captions: Sequence[str], seed: int = 0) -> Path:
    """32 px images and 32 mel bands; the tokenizer knows ``captions`` and the number words zero..twenty."""
    return make_checkpoint(
        directory, [*captions, *NUMBER_WORDS], 120, seed, image=ImageConfig(image_size=32), audio=AudioConfig(n_mels=32)
    )


def tiny_model_config(**overrides: object) -> ModelConfig:
    """d_model 32, one layer, 16 px images in 8 px patches, a 64-token vocabulary (the trainer's tests)."""
    values: dict[str, object] = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, patch_size=8, vocab_size=64,
                                     max_text_len=24, d_embed=16, image=ImageConfig(image_size=16))
    values.update(overrides)
    return ModelConfig.tiny(**values)


# ----- corpora -------------------------------------------------------------------------


def make_image_corpus(directory: Path, n_test: int = 6, n_compositional: int = 3) -> Path:
    """A ShapesWorld corpus with every split: 4 train, 1 val, ``n_test`` test and ``n_compositional`` scenes."""
    config = ShapesConfig(n_train=4, n_val=1, n_test=n_test, n_compositional=n_compositional, seed=3)
    generate_image_corpus(directory, config, progress=False)
    return directory


def make_training_image_corpus(folder: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """32 px scenes for the trainer: train and val splits only."""
    config = ShapesConfig(image_size=32, n_train=n_train, n_val=n_val, n_test=0, n_compositional=0,
                          n_heldout_pairs=0, supersample=1, seed=0)
    generate_image_corpus(folder, config, progress=False)
    return folder


def make_speech_corpus(folder: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """Tones whose pitch depends on the transcript, 0.6-1.0 s long, in the speech corpus layout.

    Follows the on-disk contract (clips/<id>.wav at 16 kHz PCM16, train/val.jsonl
    rows, corpus.json written last) with tones instead of voices, so no TTS engine
    is needed.
    """
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            text = TRANSCRIPTS[i % len(TRANSCRIPTS)]
            seconds = 0.6 + 0.1 * (i % 5)
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * (i % len(TRANSCRIPTS))) * t)
            clip_id = f"{split}-{i:03d}"
            soundfile.write(folder / "clips" / f"{clip_id}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": clip_id, "audio": f"clips/{clip_id}.wav", "text": text, "engine": "tone",
                         "voice": "sine", "kind": "caption", "duration": seconds})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[split] = n
    (folder / "corpus.json").write_text(json.dumps({"format": "mmbm-speech-1", "clips_per_split": counts}))
    return folder


def tiny_train_config(images: Path, speech: Path, out: Path, **overrides: object) -> TrainConfig:
    """A run of a few steps on the tiny corpora: fp32, no progress bar, no early stop."""
    values: dict[str, object] = dict(
        images=str(images), speech=str(speech), out=str(out), model=tiny_model_config(), max_steps=4,
        batch_size=4, speech_batch_size=4, warmup_steps=2, lr=3e-3, eval_every=100, checkpoint_every=100,
        n_val_images=4, n_val_clips=4, precision="fp32", device="cpu", progress=False, patience=100)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


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


# ----- the demo ------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoWorld:
    """A random model with its example scenes, and a gallery index over rendered test scenes."""

    model_dir: Path
    index_dir: Path
    images: list[Path]  # rendered test-split scenes, already in the index
    scenes: list[Scene]
    captions: list[list[str]]


def build_index(model_dir: Path, index_dir: Path, images: list[Path]) -> None:
    pipeline = Pipeline.load(model_dir, index_dir, device="cpu", create_index=True)
    try:
        pipeline.add_images(images)
    finally:
        pipeline.close()


def build_world(root: Path, n_images: int = 6) -> DemoWorld:
    """The demo's stand-in: a 64 px random model whose tokenizer knows the ShapesWorld words, examples and a gallery."""
    images, scenes, captions = render_test_scenes(root / "scenes", n_images)
    texts = [*(c for texts in captions for c in texts), " ".join(VOCABULARY), *(number_to_words(n) for n in range(100))]
    model_dir = make_checkpoint(root / "model", texts, vocab_size=160)
    write_examples(model_dir)  # as shipped beside models/mmbm-tiny
    build_index(model_dir, root / "gallery", images)
    return DemoWorld(model_dir, root / "gallery", images, scenes, captions)


@contextmanager
def serving(model_dir: Path, index_dir: Path | None, work_dir: Path) -> Iterator[tuple[Any, Any]]:
    """The app as ``python app.py`` builds it, on a free port: (gradio_client.Client, app.Demo)."""
    from gradio_client import Client

    import app  # gradio takes seconds to import: only the tests that serve the app pay for it

    demo = app.load_demo(model_dir, index_dir, work_dir, device="cpu")
    blocks = app.build_demo(demo)
    port = free_port()
    app.launch(blocks, demo, "127.0.0.1", port, prevent_thread_lock=True)
    try:
        yield Client(f"http://127.0.0.1:{port}", verbose=False), demo
    finally:
        blocks.close()
        demo.pipeline.close()
