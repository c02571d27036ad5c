"""The MMBM model: shapes and finiteness on every path, masks, sharing, losses, devices."""

from __future__ import annotations

import math

import pytest
import torch

from bench.parameters import parameter_counts, shared_fraction
from mmbm.config import FUSIONS, ImageConfig, ModelConfig
from mmbm.device import autocast, select_device
from mmbm.errors import AudioError, ConfigError, ImageError, TextError
from mmbm.model.losses import caption_loss, contrastive_loss, ctc_loss, token_accuracy
from mmbm.model.model import MMBM

torch.set_num_threads(1)

SMALL = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=40, d_embed=16, max_audio_tokens=64)


def small_config(**overrides) -> ModelConfig:
    return ModelConfig.tiny(**{**SMALL, "image": ImageConfig(image_size=32), **overrides})


def make_model(config: ModelConfig, seed: int = 0) -> MMBM:
    torch.manual_seed(seed)
    return MMBM(config).eval()


def caption_batch(config: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images and two right-padded captions: bos w w w eos / bos w eos pad pad."""
    g = torch.Generator().manual_seed(seed)
    S = config.image.image_size
    pixels = torch.randn(2, 3, S, S, generator=g)
    words = torch.randint(5, config.vocab_size, (2, 3), generator=g)
    ids = torch.tensor([[1, *words[0].tolist(), 2], [1, int(words[1, 0]), 2, 0, 0]])
    return pixels, ids


@pytest.mark.parametrize("fusion", FUSIONS)
def test_tiny_preset_every_path_has_right_shapes_and_finite_values(fusion: str) -> None:
    config = ModelConfig.tiny(fusion=fusion)
    model = make_model(config)
    pixels, ids = caption_batch(config)
    out = model(pixels, ids)
    assert out.caption_logits.shape == (2, 5, config.vocab_size)
    for embeds in (out.image_embeds, out.text_embeds, model.encode_image(pixels), model.encode_text(ids)):
        assert embeds.shape == (2, config.d_embed)
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    assert model.encode_image(pixels, normalize=False).norm(dim=-1).sub(1).abs().max() > 1e-3
    assert out.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    features = torch.randn(2, config.audio.n_mels, 101)
    ctc = model.ctc_logits(features, torch.tensor([101, 50]))
    assert ctc.log_probs.shape == (2, 13, config.vocab_size)
    assert ctc.lengths.tolist() == [13, 7]  # ceil(T / 8)
    torch.testing.assert_close(ctc.log_probs.exp().sum(-1), torch.ones(2, 13))
    for tensor in (out.caption_logits, out.image_embeds, out.text_embeds, ctc.log_probs):
        assert torch.isfinite(tensor).all()


def test_all_losses_backpropagate_finite_gradients_into_the_shared_backbone() -> None:
    config = small_config()
    model = make_model(config).train()
    pixels, ids = caption_batch(config)
    out = model(pixels, ids)
    ctc = model.ctc_logits(torch.randn(2, config.audio.n_mels, 40), torch.tensor([40, 30]))
    targets = torch.tensor([[7, 8, 9], [10, 11, 0]])
    loss = (
        caption_loss(out.caption_logits, ids, config.pad_id)
        + contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        + ctc_loss(ctc.log_probs, ctc.lengths, targets, torch.tensor([3, 2]), config.blank_id)
    )
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("preset", ["tiny", "base"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_at_least_80_percent_of_parameters_are_shared_between_tasks(preset: str, fusion: str) -> None:
    with torch.device("meta"):  # base has ~48M parameters: count them without allocating
        model = MMBM(getattr(ModelConfig, preset)(fusion=fusion))
    counts = parameter_counts(model)
    assert counts["caption_output"] == 0  # tied to the text embedding
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert shared_fraction(model) >= 0.80


def test_tiny_weights_fit_the_30_mb_budget() -> None:
    with torch.device("meta"):
        model = MMBM(ModelConfig.tiny(fusion="concat"))  # the largest fusion
    assert sum(p.numel() for p in model.parameters()) * 4 <= 30e6


@pytest.mark.parametrize("fusion", FUSIONS)
def test_image_rows_of_the_caption_pass_equal_the_unimodal_image_encoding(fusion: str) -> None:
    config = small_config(fusion=fusion)
    model = make_model(config)
    pixels, ids = caption_batch(config)
    caption = model.caption_forward(pixels, ids)
    torch.testing.assert_close(caption.image_hidden, model.encode_image_tokens(pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(pixels, ids).image_embeds, model.encode_image(pixels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_caption_logits_are_causal_and_depend_on_the_image(fusion: str) -> None:
    config = small_config(fusion=fusion)
    model = make_model(config)
    pixels, ids = caption_batch(config)
    logits = model.caption_logits(pixels, ids)
    changed = ids.clone()
    changed[0, 3] = 6 if ids[0, 3] != 6 else 7
    later = model.caption_logits(pixels, changed)
    torch.testing.assert_close(later[0, :3], logits[0, :3])  # positions before the change are untouched
    assert (later[0, 3:] - logits[0, 3:]).abs().max() > 1e-4
    other_image = model.caption_logits(pixels.flip(0), ids)
    assert (other_image[0] - logits[0]).abs().max() > 1e-4


def test_padding_does_not_change_text_embeddings_or_caption_logits() -> None:
    config = small_config()
    model = make_model(config)
    pixels, ids = caption_batch(config)
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode_text(padded), model.encode_text(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.caption_logits(pixels, padded)[:, :5], model.caption_logits(pixels, ids))
    alone = model.encode_text(ids[1:, :3])  # the short caption on its own, no padding
    torch.testing.assert_close(model.encode_text(ids)[1:], alone, atol=1e-5, rtol=1e-5)


def test_text_embedding_is_bidirectional() -> None:
    config = small_config()
    model = make_model(config)
    _, ids = caption_batch(config)
    hidden = model.backbone(model.text_stem(ids[:1])).hidden
    changed = ids[:1].clone()
    changed[0, 3] = 6 if ids[0, 3] != 6 else 7
    assert (model.backbone(model.text_stem(changed)).hidden[0, 0] - hidden[0, 0]).abs().max() > 1e-4


def test_a_clip_gives_the_same_ctc_output_alone_and_in_a_padded_batch() -> None:
    config = small_config()
    model = make_model(config)
    # 21 frames: odd before every convolution, so each would read padding if it were not zeroed
    long, short = torch.randn(config.audio.n_mels, 61), torch.randn(config.audio.n_mels, 21)
    batch = torch.zeros(2, config.audio.n_mels, 61)
    batch[0], batch[1, :, :21] = long, short
    batch[1, :, 21:] = 5.0  # garbage in the padding must not leak in
    out = model.ctc_logits(batch, torch.tensor([61, 21]))
    alone = model.ctc_logits(short[None], torch.tensor([21]))
    assert out.lengths.tolist() == [8, 3]  # ceil(T / 8)
    torch.testing.assert_close(out.log_probs[1, :3], alone.log_probs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_steps_give_the_same_logits_as_the_full_forward(fusion: str) -> None:
    config = small_config(fusion=fusion)
    model = make_model(config)
    pixels, ids = caption_batch(config)
    full = model.caption_logits(pixels[:1], ids[:1])  # (1, 5, V)
    state = model.start_caption(pixels[:1])
    stepped = [model.caption_step(state, ids[:1, i : i + 1]).logits for i in range(2)]
    stepped.append(model.caption_step(state, ids[:1, 2:]).logits)  # several tokens in one step
    torch.testing.assert_close(torch.cat(stepped, dim=1), full, atol=1e-5, rtol=1e-5)


def test_explicit_attention_weights_match_the_fused_kernel() -> None:
    config = small_config()
    model = make_model(config)
    pixels, ids = caption_batch(config)
    plain = model.caption_forward(pixels, ids)
    weighed = model.caption_forward(pixels, ids, need_weights=True)
    torch.testing.assert_close(weighed.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert weighed.attention is not None and plain.attention is None
    assert weighed.attention.shape == (2, config.n_layers, 5, model.n_image_tokens)
    total = weighed.attention.sum(-1)  # text also attends to text, so at most 1
    assert bool((total > 0).all()) and bool((total <= 1 + 1e-5).all())
    with pytest.raises(ConfigError, match="fusion='attention'"):
        make_model(small_config(fusion="concat")).caption_forward(pixels, ids, need_weights=True)


def test_bad_inputs_are_refused_with_the_right_error() -> None:
    config = small_config()
    model = make_model(config)
    pixels, ids = caption_batch(config)
    with pytest.raises(ImageError, match=r"\(B, 3, 32, 32\)"):
        model.encode_image(torch.randn(2, 3, 64, 64))
    with pytest.raises(TextError, match="right-padded"):
        model.encode_text(torch.tensor([[1, 0, 5, 2]]))
    with pytest.raises(TextError, match="longer than max_text_len=40"):
        model.encode_text(torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(TextError, match=r"in \[0, 40\)"):
        model.encode_text(torch.tensor([[1, 40, 2]]))
    with pytest.raises(AudioError, match=r"\(B, 80, T\)"):
        model.ctc_logits(torch.randn(1, 40, 30), torch.tensor([30]))
    with pytest.raises(AudioError, match="feature_lengths"):
        model.ctc_logits(torch.randn(1, 80, 30), torch.tensor([31]))
    with pytest.raises(AudioError, match="max_audio_tokens=64"):
        model.ctc_logits(torch.randn(1, 80, 600), torch.tensor([600]))


def test_caption_loss_ignores_padding_and_label_smoothing_raises_a_confident_loss() -> None:
    ids = torch.tensor([[1, 5, 6, 2, 0, 0]])
    logits = torch.full((1, 6, 8), -20.0)
    for position, target in enumerate([5, 6, 2]):
        logits[0, position, target] = 20.0
    logits[0, 3:, 3] = 20.0  # confident nonsense where the targets are padding
    assert float(caption_loss(logits, ids, pad_id=0)) < 1e-6
    assert token_accuracy(logits, ids, pad_id=0) == 1.0
    assert float(caption_loss(logits, ids, pad_id=0, label_smoothing=0.1)) > 1.0
    logits[0, 1, 6], logits[0, 1, 4] = -20.0, 20.0
    assert token_accuracy(logits, ids, pad_id=0) == pytest.approx(2 / 3)


def test_contrastive_loss_is_small_for_matched_pairs_and_symmetric() -> None:
    embeds = torch.nn.functional.normalize(torch.eye(4, 8), dim=-1)
    assert float(contrastive_loss(embeds, embeds, torch.tensor(100.0))) < 1e-6
    shuffled = embeds[[1, 0, 2, 3]]
    loss = contrastive_loss(embeds, shuffled, torch.tensor(100.0))
    assert float(loss) == pytest.approx(float(contrastive_loss(shuffled, embeds, torch.tensor(100.0))))
    assert float(loss) > 10.0


def test_ctc_loss_is_zero_not_infinite_when_the_clip_is_too_short() -> None:
    log_probs = torch.randn(1, 2, 10).log_softmax(-1)
    too_long = ctc_loss(log_probs, torch.tensor([2]), torch.tensor([[5, 6, 7]]), torch.tensor([3]), blank_id=4)
    assert float(too_long) == 0.0
    fits = ctc_loss(log_probs, torch.tensor([2]), torch.tensor([[5]]), torch.tensor([1]), blank_id=4)
    assert math.isfinite(float(fits)) and float(fits) > 0


def test_device_selection_and_cpu_bf16_autocast() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError, match="device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
    config = small_config()
    model = make_model(config)
    pixels, ids = caption_batch(config)
    with autocast(torch.device("cpu"), cpu_bf16=True):
        out = model(pixels, ids)
    assert out.caption_logits.dtype == torch.bfloat16 and torch.isfinite(out.caption_logits.float()).all()
    torch.testing.assert_close(out.image_embeds.float(), model.encode_image(pixels), atol=0.05, rtol=0.05)
