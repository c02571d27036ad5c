"""Checkpoints: save -> load round trips, refusal of broken folders, pretrained stems offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmbm.config import ImageConfig, ModelConfig
from mmbm.errors import CheckpointError, ConfigError
from mmbm.model.checkpoint import load_checkpoint, load_config, load_tokenizer, save_checkpoint
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.tokenizer import Tokenizer, train_tokenizer

torch.set_num_threads(1)

SMALL = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, d_embed=16, max_audio_tokens=64)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(["a red circle above a blue square", "two green triangles"] * 3, vocab_size=60)


def small_model(tokenizer: Tokenizer, **overrides) -> MMBM:
    config = ModelConfig.tiny(**{**SMALL, "image": ImageConfig(image_size=32), **overrides})
    torch.manual_seed(0)
    return MMBM(config_for_tokenizer(config, tokenizer)).eval()


def inputs(tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    first, second = tokenizer.encode("a red circle above"), tokenizer.encode("two")
    ids = torch.tensor([first, second + [tokenizer.pad_id] * (len(first) - len(second))])
    return torch.randn(2, 3, 32, 32, generator=g), ids, torch.randn(2, 80, 40, generator=g), torch.tensor([40, 33])


def assert_same_outputs(a: MMBM, b: MMBM, tokenizer: Tokenizer) -> None:
    pixels, ids, features, lengths = inputs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(a.caption_logits(pixels, ids), b.caption_logits(pixels, ids), rtol=0, atol=0)
        torch.testing.assert_close(a.encode_image(pixels), b.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids), rtol=0, atol=0)
        a_ctc, b_ctc = a.ctc_logits(features, lengths), b.ctc_logits(features, lengths)
        torch.testing.assert_close(a_ctc.log_probs, b_ctc.log_probs, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", ["attention", "concat", "multiply"])
def test_save_then_load_gives_identical_outputs(tmp_path: Path, tokenizer: Tokenizer, fusion: str) -> None:
    model = small_model(tokenizer, fusion=fusion)
    with torch.no_grad():
        model.retrieval.logit_scale.fill_(3.0)  # a trained value, not the init
    save_checkpoint(model, tmp_path / "ckpt", tokenizer)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    assert loaded.retrieval.logit_scale.item() == 3.0
    assert_same_outputs(model, loaded, tokenizer)
    reloaded = load_tokenizer(tmp_path / "ckpt")
    assert reloaded.encode("a blue square") == tokenizer.encode("a blue square")


def test_tied_caption_layer_is_stored_once_and_stays_tied(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = small_model(tokenizer)
    save_checkpoint(model, tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "text_stem.token.weight" in names and not any("caption" in n for n in names)
    loaded = load_checkpoint(tmp_path)
    with torch.no_grad():
        loaded.text_stem.token.weight[5].add_(1.0)
    h = torch.zeros(1, 1, model.config.d_model)
    h[0, 0, 0] = 1.0
    with torch.no_grad():
        assert loaded.caption_head(h)[0, 0, 5].item() == pytest.approx(loaded.text_stem.token.weight[5, 0].item())


def test_a_compiled_model_saves_the_plain_module_weights(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = small_model(tokenizer)
    compiled = torch.compile(model)  # compilation is lazy: nothing is compiled until a forward
    save_checkpoint(compiled, tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert names == set(model.state_dict()) and not any(n.startswith("_orig_mod") for n in names)
    assert_same_outputs(model, load_checkpoint(tmp_path), tokenizer)


def test_weights_saved_with_a_wrapper_prefix_still_load(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = small_model(tokenizer)
    save_checkpoint(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file({f"_orig_mod.module.{k}": v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    assert_same_outputs(model, load_checkpoint(tmp_path), tokenizer)


def test_saving_over_a_checkpoint_keeps_other_files_and_leaves_no_temporaries(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    (tmp_path / "README.md").write_text("model card")
    save_checkpoint(small_model(tokenizer), tmp_path, tokenizer)
    save_checkpoint(small_model(tokenizer, fusion="concat"), tmp_path, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert load_config(tmp_path).fusion == "concat"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mmbm" and config["d_model"] == 32


@pytest.fixture()
def saved(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    return save_checkpoint(small_model(tokenizer), tmp_path / "ckpt", tokenizer)


def test_missing_folder_or_files_name_what_is_missing(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    (saved / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        load_tokenizer(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "config.json is not valid JSON"),
        ('{"model_type": "bert"}', "not an MMBM config"),
        ('{"model_type": "mmbm", "d_model": -4}', "invalid config: d_model: must be positive"),
        ('{"model_type": "mmbm", "colour": 3}', r"invalid config: config: unknown field\(s\) \['colour'\]"),
    ],
)
def test_a_broken_config_is_refused_by_name(saved: Path, text: str, message: str) -> None:
    (saved / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_truncated_weights_are_refused(saved: Path) -> None:
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or not a safetensors file"):
        load_checkpoint(saved)


def test_a_pickle_is_never_loaded(saved: Path) -> None:
    torch.save({"text_stem.token.weight": torch.zeros(3)}, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(saved)


def test_weights_that_do_not_fit_the_config_are_refused(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "d_ff": 96}))
    with pytest.raises(
        CheckpointError, match=r"does not match config.json: .*shape mismatch.*mlp.fc.weight \(64, 32\) != \(96, 32\)"
    ):
        load_checkpoint(saved)
    (saved / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor\(s\), e.g. \['backbone.blocks.2"):
        load_checkpoint(saved)
    (saved / "config.json").write_text(json.dumps({**config, "fusion": "concat"}))
    with pytest.raises(CheckpointError, match=r"missing 2 tensor\(s\), e.g. \['fusion.combine.bias'"):
        load_checkpoint(saved)
    (saved / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(saved / "model.safetensors"))
    save_file({**tensors, "extra.weight": torch.zeros(2)}, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 unexpected tensor\(s\), e.g. \['extra.weight'\]"):
        load_checkpoint(saved)


# ----- pretrained stems (transformers, offline) ---------------------------------------


@pytest.fixture()
def encoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """A tiny random ViT and BERT written to tmp_path, as a user's local download would be."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, BertConfig, ViTConfig

    torch.manual_seed(0)
    vit = ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
    )
    AutoModel.from_config(vit).save_pretrained(str(tmp_path / "vit"))
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
    )
    AutoModel.from_config(bert).save_pretrained(str(tmp_path / "bert"))
    return tmp_path / "vit", tmp_path / "bert"


def test_pretrained_stems_load_offline_run_and_round_trip(
    tmp_path: Path, tokenizer: Tokenizer, encoders: tuple[Path, Path]
) -> None:
    from safetensors.torch import load_file as read_hf
    from transformers import AutoModel

    vit, bert = encoders
    model = small_model(tokenizer, image_encoder=str(vit), text_encoder=str(bert))
    hf_bert = AutoModel.from_pretrained(str(bert))
    torch.testing.assert_close(model.text_stem.token.weight, hf_bert.get_input_embeddings().weight)
    vit_weights = read_hf(str(vit / "model.safetensors"))
    name = next(k for k in vit_weights if k.endswith("patch_embeddings.projection.weight"))
    torch.testing.assert_close(model.image_stem.encoder.state_dict()[name], vit_weights[name])
    assert model.n_image_tokens == 16  # the class token is dropped: a 4 x 4 patch grid
    pixels, ids, _, _ = inputs(tokenizer)
    out = model(pixels, ids)
    assert out.caption_logits.shape == (2, ids.shape[1], tokenizer.vocab_size)
    assert torch.isfinite(out.caption_logits).all() and torch.isfinite(out.image_embeds).all()
    save_checkpoint(model, tmp_path / "ckpt", tokenizer)
    assert (tmp_path / "ckpt" / "image_encoder" / "config.json").is_file()
    assert not (tmp_path / "ckpt" / "image_encoder" / "model.safetensors").exists()
    loaded = load_checkpoint(tmp_path / "ckpt")  # rebuilt from the saved configs alone
    assert_same_outputs(model, loaded, tokenizer)


def test_pretrained_stems_that_do_not_fit_are_refused(tmp_path: Path, tokenizer: Tokenizer, encoders) -> None:
    vit, bert = encoders
    with pytest.raises(
        ConfigError, match="image_encoder: .* has image_size=32, patch_size=8; the model needs image_size=64"
    ):
        MMBM(ModelConfig.tiny(**SMALL, image_encoder=str(vit)))
    with pytest.raises(ConfigError, match="vocabulary of 60 tokens but the model's vocab_size is 512"):
        MMBM(ModelConfig.tiny(**SMALL, image=ImageConfig(image_size=32), text_encoder=str(bert)))
    with pytest.raises(ConfigError, match="config.json not found"):
        MMBM(ModelConfig.tiny(**SMALL, image=ImageConfig(image_size=32), image_encoder=str(tmp_path / "none")))
