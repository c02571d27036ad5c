"""Small corpora on disk for the trainer's tests: a few ShapesWorld scenes and sine-tone "speech".

Not a test module (pytest collects test_*.py only); tests/test_train.py and
tests/test_distributed.py import it. The image corpus comes from the real
generator (mmbm.shapesworld.corpus); the speech corpus follows the on-disk contract
(clips/<id>.wav at 16 kHz PCM16, train/val.jsonl rows, corpus.json written
last) with tones instead of voices, so no TTS engine is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from mmbm.config import ImageConfig, ModelConfig
from mmbm.shapesworld.corpus import generate_image_corpus
from mmbm.shapesworld.shapes import ShapesConfig
from mmbm.training.train_config import TrainConfig

SAMPLE_RATE = 16_000
TRANSCRIPTS = ("a red circle", "two blue squares", "seven", "a green triangle above a star", "twelve", "one star")


def make_image_corpus(folder: Path, n_train: int = 8, n_val: int = 4) -> Path:
    config = ShapesConfig(image_size=32, n_train=n_train, n_val=n_val, n_test=0, n_compositional=0,
                          n_heldout_pairs=0, supersample=1, seed=0)
    generate_image_corpus(folder, config, progress=False)
    return folder


def make_speech_corpus(folder: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """Tones whose pitch depends on the transcript, 0.6-1.0 s long, in the speech corpus layout."""
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


def tiny_model_config(**overrides: object) -> ModelConfig:
    """d_model 32, one layer, 16 px images in 8 px patches, a 64-token vocabulary."""
    values: dict[str, object] = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, patch_size=8, vocab_size=64,
                                     max_text_len=24, d_embed=16, image=ImageConfig(image_size=16))
    values.update(overrides)
    return ModelConfig.tiny(**values)


def tiny_train_config(images: Path, speech: Path, out: Path, **overrides: object) -> TrainConfig:
    """A run of a few steps on the tiny corpora: fp32, no progress bar, no early stop."""
    values: dict[str, object] = dict(
        images=str(images), speech=str(speech), out=str(out), model=tiny_model_config(), max_steps=4,
        batch_size=4, speech_batch_size=4, warmup_steps=2, lr=3e-3, eval_every=100, checkpoint_every=100,
        n_val_images=4, n_val_clips=4, precision="fp32", device="cpu", progress=False, patience=100)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]
