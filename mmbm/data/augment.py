"""Training-time augmentation of images (with their captions) and of speech.

Owns the augmentation settings (``ImageAugmentConfig``, ``AudioAugmentConfig``,
frozen and validated) and the effects themselves. Every random draw comes from
a generator the caller passes in (``torch.Generator`` for images and
SpecAugment, ``numpy.random.Generator`` for waveforms), so results are
reproducible per item and safe in DataLoader workers; nothing here touches the
global RNGs. torchaudio's FrequencyMasking/TimeMasking draw from the global
torch RNG, so SpecAugment's masks are drawn here from the passed generator.

Images: colour jitter keeps colour *names* true, because ShapesWorld captions
name colours: brightness, contrast and saturation move at most ±25 % (default
±10 %) and hue is never shifted: scaling and blending towards grey keep the hue
angle, and colours pushed out of [0, 1] are brought back the same way rather than
clipped per channel (which would turn orange towards yellow). Shifts move the picture a few
pixels with edge replication, so relations between objects stay true. A
horizontal flip always swaps "left" and "right" in the caption (``flip_caption``).

Speech: speed 0.9–1.1 (``np.interp`` resampling, tempo and pitch together),
reverb from a synthetic exponentially decaying impulse response, FFT band
limiting, additive white or pink noise at 5–30 dB SNR, gain, and SpecAugment
(arXiv:1904.08779) on log-mel features.

Imports ``mmbm.config`` and ``mmbm.errors`` only; never model or training code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchaudio.functional as AF

from mmbm.config import ImageConfig, require
from mmbm.errors import AudioError

NoiseColor = Literal["white", "pink"]
MaskValue = Literal["mean", "zero"]
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for the grey a jitter blends towards
LN_1000 = math.log(1000.0)  # RT60: amplitude falls by 60 dB = a factor of 1000
_FLIPPED_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SIDE_WORD = re.compile(r"\b(" + "|".join(_FLIPPED_WORDS) + r")\b")


def _check_probability(name: str, value: float) -> None:
    require(0.0 <= value <= 1.0, name, f"must be a probability in [0, 1], got {value}")


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    require(
        len(value) == 2 and low <= value[0] <= value[1] <= high,
        name,
        f"must be (min, max) with {low} <= min <= max <= {high}, got {value}",
    )


@dataclass(frozen=True)
class ImageAugmentConfig:
    """Probabilities and strengths of image augmentation; each jitter factor is drawn from [1-x, 1+x]."""

    p_jitter: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    p_shift: float = 0.5
    max_shift: float = 0.0625  # fraction of the side: 4 px at 64 px
    p_flip: float = 0.5  # the caption's left/right are swapped with the pixels

    def __post_init__(self) -> None:
        for name in ("p_jitter", "p_shift", "p_flip"):
            _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            require(0.0 <= value <= 0.25, name, f"must be in [0, 0.25] so colour names stay true, got {value}")
        require(0.0 <= self.max_shift <= 0.25, "max_shift", f"must be in [0, 0.25], got {self.max_shift}")


@dataclass(frozen=True)
class AudioAugmentConfig:
    """Probabilities and ranges of the waveform chain and of SpecAugment."""

    p_speed: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    p_reverb: float = 0.3
    rt60_range: tuple[float, float] = (0.1, 0.5)  # seconds for the tail to fall by 60 dB
    direct_ratio_db_range: tuple[float, float] = (0.0, 12.0)  # direct-path energy over tail energy
    p_band_limit: float = 0.3
    lowpass_hz_range: tuple[float, float] = (3_000.0, 7_000.0)  # energy above is removed
    highpass_hz_range: tuple[float, float] = (0.0, 300.0)  # energy below is removed
    p_noise: float = 0.5
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    noise_colors: tuple[NoiseColor, ...] = ("white", "pink")
    p_gain: float = 0.5
    gain_db_range: tuple[float, float] = (-10.0, 6.0)
    p_specaugment: float = 1.0
    n_freq_masks: int = 2
    max_freq_mask: int = 15  # mel bins (F in the SpecAugment paper)
    n_time_masks: int = 2
    max_time_mask: int = 40  # frames of 10 ms (T)
    max_time_fraction: float = 0.2  # a time mask never covers more than this share of the clip (p)
    mask_value: MaskValue = "mean"

    def __post_init__(self) -> None:
        for name in ("p_speed", "p_reverb", "p_band_limit", "p_noise", "p_gain", "p_specaugment"):
            _check_probability(name, getattr(self, name))
        _check_range("speed_range", self.speed_range, 0.5, 2.0)
        _check_range("rt60_range", self.rt60_range, 0.01, 2.0)
        _check_range("direct_ratio_db_range", self.direct_ratio_db_range, -20.0, 40.0)
        _check_range("lowpass_hz_range", self.lowpass_hz_range, 500.0, 48_000.0)
        _check_range("highpass_hz_range", self.highpass_hz_range, 0.0, 2_000.0)
        require(
            self.highpass_hz_range[1] < self.lowpass_hz_range[0],
            "highpass_hz_range",
            f"its max must be below lowpass_hz_range's min, got {self.highpass_hz_range} and {self.lowpass_hz_range}",
        )
        _check_range("snr_db_range", self.snr_db_range, -10.0, 100.0)
        require(
            len(self.noise_colors) > 0 and all(c in ("white", "pink") for c in self.noise_colors),
            "noise_colors",
            f"must be a non-empty tuple of 'white'/'pink', got {self.noise_colors}",
        )
        _check_range("gain_db_range", self.gain_db_range, -40.0, 20.0)
        for name in ("n_freq_masks", "max_freq_mask", "n_time_masks", "max_time_mask"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(
            0.0 <= self.max_time_fraction <= 1.0,
            "max_time_fraction",
            f"must be in [0, 1], got {self.max_time_fraction}",
        )
        require(
            self.mask_value in ("mean", "zero"), "mask_value", f"must be 'mean' or 'zero', got {self.mask_value!r}"
        )


@dataclass(frozen=True)
class AugmentedImage:
    pixels: torch.Tensor  # (3, S, S) normalised like image_to_tensor's output
    caption: str
    flipped: bool


# ---------------------------------------------------------------- images


def flip_caption(caption: str) -> str:
    """Swap the words left/right (and leftmost/rightmost) so the caption matches a mirrored image."""
    return _SIDE_WORD.sub(lambda m: _FLIPPED_WORDS[m.group(1)], caption)


def jitter_colors(pixels: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Scale brightness, contrast and saturation of (3, H, W) pixels in [0, 1] by the given factors; hue is kept."""
    grey_weights = torch.tensor(LUMA, dtype=pixels.dtype).view(3, 1, 1)
    out = pixels * brightness
    grey_level = (out * grey_weights).sum(dim=0).mean()  # one scalar: contrast blends towards mean grey
    out = grey_level + contrast * (out - grey_level)
    grey = (out * grey_weights).sum(dim=0, keepdim=True)  # (1, H, W): saturation blends towards per-pixel grey
    out = grey + saturation * (out - grey)
    return _into_gamut(out, grey_weights)


def _into_gamut(rgb: torch.Tensor, grey_weights: torch.Tensor) -> torch.Tensor:
    """Bring (3, H, W) colours into [0, 1] without turning their hue, unlike a per-channel clamp.

    A pixel below 0 is blended towards its own grey until its lowest channel is 0;
    one above 1 is then scaled down until its highest is 1. Both keep the ratios
    of channel differences, hence the hue.
    """
    grey = (rgb * grey_weights).sum(dim=0, keepdim=True).clamp(0.0, 1.0)  # (1, H, W)
    low = rgb.amin(dim=0, keepdim=True)
    blend = torch.where(low < 0, grey / (grey - low).clamp(min=1e-12), torch.ones_like(low))
    rgb = grey + (rgb - grey) * blend
    rgb = rgb / rgb.amax(dim=0, keepdim=True).clamp(min=1.0)
    return rgb.clamp(0.0, 1.0)  # only rounding remains to clamp


def shift_image(pixels: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move (C, H, W) pixels ``dx`` right and ``dy`` down; uncovered borders repeat the edge pixels."""
    _, height, width = pixels.shape
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    padded = torch.nn.functional.pad(pixels[None], pad, mode="replicate")[0]
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top : top + height, left : left + width]


def augment_image(
    pixels: torch.Tensor,
    caption: str,
    config: ImageAugmentConfig,
    image_config: ImageConfig,
    generator: torch.Generator,
) -> AugmentedImage:
    """Jitter, shift and maybe mirror normalised (3, S, S) pixels; a mirror also flips the caption."""
    mean = torch.tensor(image_config.mean, dtype=pixels.dtype).view(3, 1, 1)
    std = torch.tensor(image_config.std, dtype=pixels.dtype).view(3, 1, 1)
    out = pixels * std + mean  # back to [0, 1]
    draws = torch.rand(8, generator=generator).tolist()  # always 8, so each decision has its own draw
    if draws[0] < config.p_jitter:
        strengths = (config.brightness, config.contrast, config.saturation)
        factors = [1.0 + strength * (2.0 * u - 1.0) for strength, u in zip(strengths, draws[1:4], strict=True)]
        out = jitter_colors(out, *factors)
    max_pixels = int(round(config.max_shift * pixels.shape[-1]))
    if draws[4] < config.p_shift and max_pixels > 0:
        dx, dy = (min(int(u * (2 * max_pixels + 1)), 2 * max_pixels) - max_pixels for u in draws[5:7])
        out = shift_image(out, dx, dy)
    flipped = draws[7] < config.p_flip
    if flipped:
        out = out.flip(-1)
        caption = flip_caption(caption)
    return AugmentedImage(pixels=((out - mean) / std).contiguous(), caption=caption, flipped=flipped)


# ---------------------------------------------------------------- audio


def _check_wave(wave: np.ndarray) -> None:
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise AudioError(f"augmentation expects a 1-D float waveform, got {getattr(wave, 'shape', type(wave))}")
    if wave.size == 0 or not np.all(np.isfinite(wave)):
        raise AudioError("augmentation needs a non-empty waveform with finite samples")


def fast_fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of such lengths are fast, while a prime length is ~15x slower.

    (Measured with numpy: 16001 samples 3.5 ms, 16000 samples 0.2 ms.)
    """
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 * (1 << max(0, (-(-n // power35) - 1).bit_length()))
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (tempo and pitch): length becomes ``round(N / factor)``."""
    n_out = max(1, int(round(wave.size / factor)))
    positions = np.minimum(np.arange(n_out) * factor, wave.size - 1)
    return np.interp(positions, np.arange(wave.size), wave).astype(wave.dtype)


def add_noise(wave: np.ndarray, snr_db: float, color: NoiseColor, rng: np.random.Generator) -> np.ndarray:
    """Add white or pink (1/f power) noise scaled so signal power / noise power is exactly ``snr_db``."""
    if color == "pink":
        n_fft = fast_fft_length(wave.size)  # shape a slightly longer noise, then keep wave.size samples
        spectrum = np.fft.rfft(rng.standard_normal(n_fft))
        scale = np.zeros(spectrum.size)
        scale[1:] = 1.0 / np.sqrt(np.arange(1, spectrum.size))  # power ~ 1/f; no DC offset
        noise = np.fft.irfft(spectrum * scale, n=n_fft)[: wave.size]
    else:
        noise = rng.standard_normal(wave.size)
    signal_power = float(np.mean(wave.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise**2))
    if signal_power == 0.0 or noise_power == 0.0:
        return wave.copy()
    noise *= math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + noise).astype(wave.dtype)


def synthetic_impulse_response(
    sample_rate: int, rt60: float, direct_ratio_db: float, rng: np.random.Generator
) -> np.ndarray:
    """A room-like impulse response: a unit direct path then noise decaying by 60 dB over ``rt60`` seconds.

    The tail's energy is ``direct_ratio_db`` below the direct path's. Shape (round(rt60 * sample_rate),).
    """
    n = max(2, int(round(rt60 * sample_rate)))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-LN_1000 * t / rt60)
    tail[0] = 0.0
    tail *= math.sqrt(10.0 ** (-direct_ratio_db / 10.0) / float(np.sum(tail**2)))
    tail[0] = 1.0
    return tail


def add_reverb(wave: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Convolve with ``impulse_response`` (torchaudio fftconvolve), keep the length and the RMS level."""
    # fftconvolve transforms len(x) + len(h) - 1 points; zero-padding x so that is a power of two
    # makes it 4-6x faster (measured: 1 s clip, 0.5 s response, 6.8 ms -> 1.1 ms) and changes nothing
    n_fft = 1 << (wave.size + impulse_response.size - 2).bit_length()
    padded = np.zeros(n_fft - impulse_response.size + 1, dtype=np.float32)
    padded[: wave.size] = wave
    wet = AF.fftconvolve(torch.from_numpy(padded), torch.from_numpy(impulse_response.astype(np.float32)))
    wet = wet[: wave.size].numpy()
    rms_in, rms_out = float(np.sqrt(np.mean(wave**2))), float(np.sqrt(np.mean(wet**2)))
    if rms_out > 0.0:
        wet *= rms_in / rms_out
    return wet.astype(wave.dtype)


def band_limit(wave: np.ndarray, sample_rate: int, lowpass_hz: float | None, highpass_hz: float | None) -> np.ndarray:
    """Remove the energy above ``lowpass_hz`` and below ``highpass_hz`` (FFT brick wall).

    The clip is zero-padded to ``fast_fft_length`` (15x faster for awkward lengths).
    Measured on white noise of random lengths with a Hann-windowed FFT, what is
    left from 20 Hz beyond a cutoff is below -79 dB of the clip's energy; when the
    length is already fast, nothing at all is left out of band.
    """
    n_fft = fast_fft_length(wave.size)
    spectrum = np.fft.rfft(wave.astype(np.float64), n=n_fft)
    frequencies = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    if lowpass_hz is not None:
        spectrum[frequencies > lowpass_hz] = 0.0
    if highpass_hz is not None:
        spectrum[frequencies < highpass_hz] = 0.0
    return np.fft.irfft(spectrum, n=n_fft)[: wave.size].astype(wave.dtype)


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale amplitude by ``gain_db`` decibels (no clipping: features are computed from floats)."""
    return (wave * 10.0 ** (gain_db / 20.0)).astype(wave.dtype)


def augment_waveform(
    wave: np.ndarray, sample_rate: int, config: AudioAugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Speed, reverb, band limit, noise and gain, each with its probability; (N',) of ``wave``'s dtype.

    The order follows the signal path: the talker (speed), the room (reverb),
    the channel (band limit), the environment (noise), the recording level (gain).
    The result is clipped to [-1, 1] as a recorder would (and as ``load_audio``
    promises), which is where gain shows: a log-mel normalised to each clip's
    peak does not change with a pure gain.
    """
    _check_wave(wave)
    draws = rng.random(5)
    out = wave
    if draws[0] < config.p_speed:
        out = change_speed(out, float(rng.uniform(*config.speed_range)))
    if draws[1] < config.p_reverb:
        rt60 = float(rng.uniform(*config.rt60_range))
        ratio = float(rng.uniform(*config.direct_ratio_db_range))
        out = add_reverb(out, synthetic_impulse_response(sample_rate, rt60, ratio, rng))
    if draws[2] < config.p_band_limit:
        lowpass = min(float(rng.uniform(*config.lowpass_hz_range)), sample_rate / 2)
        out = band_limit(out, sample_rate, lowpass, float(rng.uniform(*config.highpass_hz_range)))
    if draws[3] < config.p_noise:
        color = config.noise_colors[int(rng.integers(len(config.noise_colors)))]
        out = add_noise(out, float(rng.uniform(*config.snr_db_range)), color, rng)
    if draws[4] < config.p_gain:
        out = apply_gain(out, float(rng.uniform(*config.gain_db_range)))
    return np.clip(out, -1.0, 1.0)  # always a new array


def spec_augment(features: torch.Tensor, config: AudioAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment frequency and time masks (arXiv:1904.08779) on (n_mels, T) features; returns a new tensor.

    Masked cells take the clip's mean (``mask_value="mean"``) or zero.
    """
    if features.ndim != 2:
        raise AudioError(f"spec_augment expects (n_mels, T) features, got shape {tuple(features.shape)}")
    out = features.clone()
    if float(torch.rand(1, generator=generator)) >= config.p_specaugment:
        return out
    value = float(features.mean()) if config.mask_value == "mean" else 0.0
    n_mels, n_frames = features.shape
    max_time = min(config.max_time_mask, int(config.max_time_fraction * n_frames))
    for axis, n_masks, max_width in (
        (0, config.n_freq_masks, min(config.max_freq_mask, n_mels)),
        (1, config.n_time_masks, max_time),
    ):
        size = features.shape[axis]
        for _ in range(n_masks):
            width = int(torch.randint(0, max_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
            if axis == 0:
                out[start : start + width, :] = value
            else:
                out[:, start : start + width] = value
    return out
