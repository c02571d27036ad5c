"""Training works: each fusion's loss drops, and one shared model overfits scenes and speech.

The overfit run trains ONE model jointly on 32 ShapesWorld scenes (caption +
contrastive losses) and 32 espeak-ng clips (CTC loss) and must reach caption token
accuracy >= 95% and CTC CER <= 5% within a bounded number of CPU steps.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbm.audio import load_audio, log_mel
from mmbm.config import FUSIONS, ModelConfig
from mmbm.decode.ctc import transcribe_features
from mmbm.evaluate.metrics import error_rates
from mmbm.image import image_to_tensor
from mmbm.model.losses import caption_loss, contrastive_loss, ctc_loss, token_accuracy
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.shapesworld.captions import canonical_caption
from mmbm.shapesworld.shapes import ShapesConfig, render_scene, sample_scene
from mmbm.tokenizer import Tokenizer, normalize_text, number_to_words, train_tokenizer

torch.set_num_threads(1)

# A narrower, shallower tiny so the joint run stays within about a minute of one CPU core.
OVERFIT = dict(d_model=96, n_layers=3, n_heads=4, d_ff=384, d_embed=64)
MAX_STEPS = 300


def scenes(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """n rendered ShapesWorld scenes as (n, 3, 64, 64) pixels and their canonical captions."""
    rng = np.random.default_rng(seed)
    config = ModelConfig.tiny()
    drawn = [sample_scene(rng, ShapesConfig()) for _ in range(n)]
    pixels = torch.stack([image_to_tensor(render_scene(s, config.image.image_size), config.image) for s in drawn])
    return pixels, [canonical_caption(s) for s in drawn]


def padded_ids(texts: list[str], tokenizer: Tokenizer, add_special: bool) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer.encode(t, add_special=add_special) for t in texts]
    lengths = torch.tensor([len(e) for e in encoded])
    ids = torch.full((len(encoded), int(lengths.max())), tokenizer.pad_id, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e)
    return ids, lengths


def image_text_loss(model: MMBM, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(pixels, ids)
    loss = caption_loss(out.caption_logits, ids, model.config.pad_id)
    return loss + contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale), out.caption_logits


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_variant_trains_and_its_captions_use_the_image(fusion: str) -> None:
    pixels, captions = scenes(8, seed=1)
    tokenizer = train_tokenizer(captions, vocab_size=96)
    torch.manual_seed(0)
    model = MMBM(config_for_tokenizer(ModelConfig.tiny(fusion=fusion, d_model=64, n_layers=2, d_ff=256), tokenizer))
    ids, _ = padded_ids(captions, tokenizer, add_special=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def caption_fit(images: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            logits = model.caption_logits(images, ids)
        return float(caption_loss(logits, ids, tokenizer.pad_id)), token_accuracy(logits, ids, tokenizer.pad_id)

    first, _ = caption_fit(pixels)
    for _ in range(150):
        loss, _ = image_text_loss(model, pixels, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, accuracy = caption_fit(pixels)
    shuffled, _ = caption_fit(pixels.roll(1, dims=0))  # each caption paired with another scene
    assert last < 0.1 * first and accuracy >= 0.9, f"{fusion}: loss {first:.3f} -> {last:.3f}, accuracy {accuracy:.3f}"
    assert last < 0.5 * shuffled, (
        f"{fusion}: the wrong image fits as well ({shuffled:.3f}) as the right one ({last:.3f})"
    )


def speak(text: str, voice: str, path: Path) -> np.ndarray:
    """espeak-ng's rendering of ``text`` as 16 kHz float audio."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


def clips(texts: list[str], folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Speak each text (two voices alternating); (B, 80, T) log-mel and (B,) frame counts."""
    mels = [log_mel(speak(t, ("en-us", "en+f3")[i % 2], folder / f"{i}.wav")) for i, t in enumerate(texts)]
    lengths = torch.tensor([m.shape[1] for m in mels])
    features = torch.zeros(len(mels), mels[0].shape[0], int(lengths.max()))
    for row, m in enumerate(mels):
        features[row, :, : m.shape[1]] = m
    return features, lengths


@pytest.mark.slow
@pytest.mark.tts
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_one_shared_model_overfits_32_scenes_and_32_clips(tmp_path: Path) -> None:
    pixels, captions = scenes(32, seed=0)
    rng = np.random.default_rng(0)
    numbers = [number_to_words(int(n)) for n in rng.integers(0, 1000, size=16)]
    spoken = [normalize_text(t) for t in captions[:16] + numbers]
    features, feature_lengths = clips(spoken, tmp_path)
    tokenizer = train_tokenizer(captions + spoken, vocab_size=160)
    caption_ids, _ = padded_ids(captions, tokenizer, add_special=True)
    targets, target_lengths = padded_ids(spoken, tokenizer, add_special=False)

    torch.manual_seed(0)
    model = MMBM(config_for_tokenizer(ModelConfig.tiny(**OVERFIT), tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    accuracy, cer = 0.0, 1.0
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss, logits = image_text_loss(model, pixels, caption_ids)
        ctc = model.ctc_logits(features, feature_lengths)
        loss = loss + ctc_loss(ctc.log_probs, ctc.lengths, targets, target_lengths, tokenizer.blank_id)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = token_accuracy(model.caption_logits(pixels, caption_ids), caption_ids, tokenizer.pad_id)
            heard = [t.text for t in transcribe_features(model, features, feature_lengths, tokenizer)]
            cer = error_rates(spoken, heard).cer
            if accuracy >= 0.95 and cer <= 0.05:
                break
    assert accuracy >= 0.95, f"caption token accuracy {accuracy:.3f} after {step} steps"
    assert cer <= 0.05, f"CTC CER {cer:.3f} after {step} steps"
