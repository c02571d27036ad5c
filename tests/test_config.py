"""Config presets, validation naming the field, and the dict round trip a checkpoint relies on."""

import dataclasses

import pytest

from mmbm.config import AudioConfig, ImageConfig, ModelConfig
from mmbm.errors import ConfigError


def test_presets_are_consistent() -> None:
    tiny, base = ModelConfig.tiny(), ModelConfig.base()
    assert tiny.image.image_size == 64 and base.image.image_size == 224
    assert tiny.n_image_tokens == (64 // tiny.patch_size) ** 2
    assert base.d_model > tiny.d_model
    assert ModelConfig.preset("tiny") == tiny


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ModelConfig(d_model=100, n_heads=3), "n_heads"),
        (lambda: ModelConfig(fusion="sum"), "fusion"),  # type: ignore[arg-type]
        (lambda: ModelConfig(dropout=1.0), "dropout"),
        (lambda: ModelConfig(patch_size=7), "patch_size"),
        (lambda: ModelConfig(image_stem="vit"), "image_stem"),  # type: ignore[arg-type]
        (lambda: ModelConfig(patch_size=6, image=ImageConfig(image_size=60)), "image_stem"),  # conv needs 2^k
        (lambda: ModelConfig(audio_subsampling=3), "audio_subsampling"),
        (lambda: ImageConfig(image_size=4), "image_size"),
        (lambda: ImageConfig(background=(0, 0, 300)), "background"),
        (lambda: AudioConfig(sample_rate=4000), "sample_rate"),
        (lambda: AudioConfig(f_max=9000.0), "f_max"),
        (lambda: AudioConfig(max_seconds=0.0), "max_seconds"),
        (lambda: ModelConfig.preset("huge"), "preset"),
    ],
)
def test_validation_names_the_field(build, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        build()


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig.tiny().d_model = 8  # type: ignore[misc]


def test_dict_round_trip_and_unknown_keys() -> None:
    base = ModelConfig.base()
    assert ModelConfig.from_dict(base.to_dict()) == base
    values = base.to_dict()
    values["width"] = 3
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict(values)
    values = base.to_dict()
    values["audio"]["hop"] = 1
    with pytest.raises(ConfigError, match="audio: unknown field"):
        ModelConfig.from_dict(values)
