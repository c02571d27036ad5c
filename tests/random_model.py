"""A tiny random-init MMBM checkpoint and a tiny ShapesWorld corpus, for tests of code that loads a model.

Not a test module (pytest collects test_*.py only); test_pipeline, test_evaluate
and test_gallery import it. Untrained outputs are meaningless: tests built on it
check behaviour (types, refusals, identity, batching), not quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmbm.config import AudioConfig, ImageConfig, ModelConfig
from mmbm.model.checkpoint import save_checkpoint
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.shapesworld.corpus import generate_image_corpus
from mmbm.shapesworld.shapes import ShapesConfig
from mmbm.tokenizer import number_to_words, train_tokenizer

SAMPLE_RATE = 16_000
NUMBER_WORDS = [number_to_words(n) for n in range(21)]
SMALL = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, d_embed=16, max_text_len=40, max_audio_tokens=400)


def tone(seconds: float, frequency: float = 220.0, rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def make_image_corpus(directory: Path, n_test: int = 6, n_compositional: int = 3) -> Path:
    config = ShapesConfig(n_train=4, n_val=1, n_test=n_test, n_compositional=n_compositional, seed=3)
    generate_image_corpus(directory, config, progress=False)
    return directory


def make_checkpoint(directory: Path, captions: Sequence[str], seed: int = 0) -> Path:
    """A random-init tiny model and a tokenizer trained on ``captions`` and the number words."""
    tokenizer = train_tokenizer([*captions, *NUMBER_WORDS], vocab_size=120)
    config = ModelConfig.tiny(**SMALL, image=ImageConfig(image_size=32), audio=AudioConfig(n_mels=32))
    torch.manual_seed(seed)
    save_checkpoint(MMBM(config_for_tokenizer(config, tokenizer)).eval(), directory, tokenizer)
    return directory
