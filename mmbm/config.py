"""Frozen configuration dataclasses and the ``tiny`` and ``base`` presets.

Owns every number that shapes inputs and the model: image size and limits, audio
sample rate, log-mel parameters and limits, and the model's widths and depths.
Each dataclass validates itself in ``__post_init__`` and raises ``ConfigError``
(a ``ValueError``) naming the field. A checkpoint stores ``ModelConfig.to_dict()``
beside its weights, so loading needs nothing else. Imports nothing from the
package except ``errors``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mmbm.errors import ConfigError

Fusion = Literal["attention", "concat", "multiply"]
FUSIONS: tuple[str, ...] = ("attention", "concat", "multiply")
Resize = Literal["pad", "crop", "squash"]
ImageStemKind = Literal["patch", "conv"]
IMAGE_STEMS: tuple[str, ...] = ("patch", "conv")
RESIZES: tuple[str, ...] = ("pad", "crop", "squash")

SAMPLE_RATE = 16_000  # Hz; every clip is resampled to this on load
N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop at 16 kHz -> 100 log-mel frames per second


def require(condition: bool, name: str, message: str) -> None:
    """Raise ``ConfigError("<name>: <message>")`` unless ``condition``; every config's validator uses it."""
    if not condition:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class ImageConfig:
    """How images are read and turned into pixels.

    ``max_pixels`` guards against decompression bombs: an image whose width x
    height exceeds it is refused before it is decoded.
    """

    image_size: int = 64  # square side in pixels fed to the model
    max_pixels: int = 50_000_000  # about 7000 x 7000; Pillow warns at 89M
    background: tuple[int, int, int] = (255, 255, 255)  # RGBA/LA composited on this
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # how a non-square image becomes square: "pad" keeps every object and its shape
    # (letterbox on ``background``), "crop" keeps the centre, "squash" stretches
    resize: Resize = "pad"

    def __post_init__(self) -> None:
        require(8 <= self.image_size <= 1024, "image_size", f"must be in [8, 1024], got {self.image_size}")
        require(self.max_pixels >= 1, "max_pixels", f"must be positive, got {self.max_pixels}")
        require(
            len(self.background) == 3 and all(0 <= c <= 255 for c in self.background),
            "background",
            f"must be three ints in [0, 255], got {self.background}",
        )
        require(len(self.mean) == 3, "mean", "must have three values")
        require(len(self.std) == 3 and all(s > 0 for s in self.std), "std", "must be three positive values")
        require(self.resize in RESIZES, "resize", f"must be one of {RESIZES}, got {self.resize!r}")


@dataclass(frozen=True)
class AudioConfig:
    """How audio is read and turned into log-mel features (torchaudio)."""

    sample_rate: int = SAMPLE_RATE
    n_mels: int = 80
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    f_min: float = 0.0
    f_max: float = 8_000.0  # Nyquist at 16 kHz
    max_seconds: float = 60.0  # longer input is refused with AudioError
    min_seconds: float = 0.05  # shorter input is refused (fewer than 5 frames)
    silence_db: float = -50.0  # RMS in dB below full scale under which a clip counts as silent

    def __post_init__(self) -> None:
        require(8_000 <= self.sample_rate <= 48_000, "sample_rate", f"must be in [8000, 48000], got {self.sample_rate}")
        require(8 <= self.n_mels <= 256, "n_mels", f"must be in [8, 256], got {self.n_mels}")
        require(self.n_fft >= 16, "n_fft", f"must be at least 16, got {self.n_fft}")
        require(0 < self.hop_length <= self.n_fft, "hop_length", f"must be in (0, n_fft], got {self.hop_length}")
        require(
            0 <= self.f_min < self.f_max <= self.sample_rate / 2,
            "f_max",
            f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={self.f_max}",
        )
        require(self.max_seconds > 0, "max_seconds", f"must be positive, got {self.max_seconds}")
        require(
            0 < self.min_seconds < self.max_seconds,
            "min_seconds",
            f"must be in (0, max_seconds), got {self.min_seconds}",
        )
        require(-120.0 <= self.silence_db < 0.0, "silence_db", f"must be in [-120, 0), got {self.silence_db}")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class ModelConfig:
    """The shared backbone, its stems and its three heads.

    ``vocab_size`` is the tokenizer's; ``d_embed`` is the width of the
    retrieval space; ``fusion`` picks how the captioner combines image and text.
    """

    d_model: int = 192
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 768
    dropout: float = 0.0
    patch_size: int = 8
    image_stem: ImageStemKind = "conv"  # "patch": one strided conv; "conv": log2(patch_size) 3x3 stride-2 convs
    vocab_size: int = 512
    max_text_len: int = 40  # tokens, including bos/eos
    max_audio_tokens: int = 1_600  # after 8x subsampling: 128 s of audio at 12.5 tokens/s
    audio_subsampling: int = 8  # audio frames per audio token: 2, 4, 8 or 16 (one stride-2 conv each halving)
    d_embed: int = 128
    fusion: Fusion = "attention"
    # Special token ids; they must match the tokenizer (mmbm.tokenizer puts pad, bos,
    # eos, unk, blank at 0..4). blank_id is the CTC blank.
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    blank_id: int = 4
    # Optional local folders of transformers encoders that replace a stem (mmbm.model.pretrained).
    image_encoder: str | None = None
    text_encoder: str | None = None
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def __post_init__(self) -> None:
        require(self.d_model > 0, "d_model", f"must be positive, got {self.d_model}")
        require(self.n_heads > 0, "n_heads", f"must be positive, got {self.n_heads}")
        require(
            self.d_model % self.n_heads == 0,
            "n_heads",
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
        require(self.n_layers > 0, "n_layers", f"must be positive, got {self.n_layers}")
        require(self.d_ff > 0, "d_ff", f"must be positive, got {self.d_ff}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.patch_size > 0, "patch_size", f"must be positive, got {self.patch_size}")
        require(
            self.image.image_size % self.patch_size == 0,
            "patch_size",
            f"image_size ({self.image.image_size}) must be divisible by patch_size ({self.patch_size})",
        )
        require(self.vocab_size >= 8, "vocab_size", f"must be at least 8, got {self.vocab_size}")
        require(self.max_text_len >= 4, "max_text_len", f"must be at least 4, got {self.max_text_len}")
        require(self.image_stem in IMAGE_STEMS, "image_stem", f"must be one of {IMAGE_STEMS}, got {self.image_stem!r}")
        require(self.image_stem != "conv" or (self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0
                                              and self.d_model % (self.patch_size // 2) == 0),
                "image_stem", f"'conv' needs a power-of-two patch_size >= 2 with d_model divisible by patch_size/2, "
                f"got patch_size={self.patch_size}, d_model={self.d_model}")
        require(self.audio_subsampling in (2, 4, 8, 16), "audio_subsampling",
                f"must be 2, 4, 8 or 16, got {self.audio_subsampling}")
        require(self.max_audio_tokens > 0, "max_audio_tokens", f"must be positive, got {self.max_audio_tokens}")
        require(self.d_embed > 0, "d_embed", f"must be positive, got {self.d_embed}")
        require(self.fusion in FUSIONS, "fusion", f"must be one of {FUSIONS}, got {self.fusion!r}")
        special = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id, "blank_id": self.blank_id}
        for name, value in special.items():
            require(0 <= value < self.vocab_size, name, f"must be in [0, vocab_size={self.vocab_size}), got {value}")
        require(len(set(special.values())) == len(special), "blank_id", f"special ids must differ, got {special}")

    @property
    def n_image_tokens(self) -> int:
        return (self.image.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """The CPU preset shipped in models/mmbm-tiny (64 px images, 8 px patches)."""
        return cls(**overrides)

    @classmethod
    def base(cls, **overrides: Any) -> ModelConfig:
        """The GPU preset (224 px images, 16 px patches, ViT-B-like width)."""
        values: dict[str, Any] = dict(
            d_model=512,
            n_layers=12,
            n_heads=8,
            d_ff=2048,
            dropout=0.1,
            patch_size=16,
            vocab_size=8_000,
            max_text_len=64,
            d_embed=256,
            image=ImageConfig(image_size=224),
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        if name == "tiny":
            return cls.tiny()
        if name == "base":
            return cls.base()
        raise ConfigError(f"preset: unknown preset {name!r}; choose 'tiny' or 'base'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from ``to_dict()`` output; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {unknown}")
        values = dict(values)
        if isinstance(values.get("image"), dict):
            values["image"] = _from_dict(ImageConfig, values["image"], "image")
        if isinstance(values.get("audio"), dict):
            values["audio"] = _from_dict(AudioConfig, values["audio"], "audio")
        return cls(**values)


def _from_dict(kind: type, values: dict[str, Any], prefix: str) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{prefix}: unknown field(s) {unknown}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**converted)
