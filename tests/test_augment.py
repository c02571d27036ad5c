"""Image and audio augmentation: each effect does what it says, seeded, finite, same dtype."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from mmbm.config import ImageConfig
from mmbm.data.augment import (
    AudioAugmentConfig,
    ImageAugmentConfig,
    add_noise,
    add_reverb,
    apply_gain,
    augment_image,
    augment_waveform,
    band_limit,
    change_speed,
    fast_fft_length,
    flip_caption,
    jitter_colors,
    shift_image,
    spec_augment,
    synthetic_impulse_response,
)
from mmbm.errors import AudioError, ConfigError
from tests.helpers import SAMPLE_RATE, tone

IMAGE_CONFIG = ImageConfig(image_size=16)
ALL_AUDIO = AudioAugmentConfig(p_speed=1.0, p_reverb=1.0, p_band_limit=1.0, p_noise=1.0, p_gain=1.0)


def peak_frequency(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(wave.size, 1.0 / SAMPLE_RATE)[np.argmax(spectrum)])


def random_pixels(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # normalised, mean=std=0.5


# ------------------------------------------------------------ images


def test_flip_caption_swaps_whole_words_only() -> None:
    caption = "a red circle left of a square and the leftmost star right of a leftover cone"
    flipped = flip_caption(caption)
    assert flipped == "a red circle right of a square and the rightmost star left of a leftover cone"
    assert flip_caption(flipped) == caption


def test_flip_mirrors_pixels_and_swaps_caption() -> None:
    pixels = random_pixels()
    config = ImageAugmentConfig(p_jitter=0.0, p_shift=0.0, p_flip=1.0)
    out = augment_image(pixels, "a circle left of a square", config, IMAGE_CONFIG, torch.Generator().manual_seed(0))
    assert out.flipped and out.caption == "a circle right of a square"
    torch.testing.assert_close(out.pixels, pixels.flip(-1))
    kept = augment_image(
        pixels,
        "a circle left of a square",
        ImageAugmentConfig(p_jitter=0.0, p_shift=0.0, p_flip=0.0),
        IMAGE_CONFIG,
        torch.Generator(),
    )
    assert not kept.flipped and kept.caption == "a circle left of a square"
    torch.testing.assert_close(kept.pixels, pixels)


@pytest.mark.parametrize("factors", [(1.25, 1.25, 1.25), (0.75, 0.75, 0.75), (1.25, 0.75, 1.25), (0.75, 1.25, 0.75)])
def test_jitter_keeps_colour_names(factors: tuple[float, float, float]) -> None:
    """Named colours keep their hue at the strongest allowed jitter, even where a channel would clip."""
    named = {
        "red": (0.9, 0.1, 0.1),
        "orange": (0.95, 0.55, 0.1),
        "yellow": (0.9, 0.85, 0.1),
        "green": (0.1, 0.7, 0.2),
        "cyan": (0.1, 0.75, 0.8),
        "blue": (0.15, 0.25, 0.9),
        "purple": (0.55, 0.15, 0.7),
        "pink": (0.95, 0.5, 0.7),
    }
    image = torch.tensor(list(named.values())).T.reshape(3, 1, len(named))  # one pixel per colour
    out = jitter_colors(image, *factors)
    for k, (name, rgb) in enumerate(named.items()):
        hue_in = colorsys.rgb_to_hsv(*rgb)[0] * 360
        hue_out = colorsys.rgb_to_hsv(*out[:, 0, k].tolist())[0] * 360
        assert abs((hue_out - hue_in + 180) % 360 - 180) < 0.5, (name, hue_in, hue_out)
    assert out.min() >= 0 and out.max() <= 1


def test_jitter_brightness_scales_pixels() -> None:
    image = torch.full((3, 2, 2), 0.4)
    torch.testing.assert_close(jitter_colors(image, 1.2, 1.0, 1.0), torch.full((3, 2, 2), 0.48))


def test_shift_moves_content_and_replicates_edges() -> None:
    image = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5)
    moved = shift_image(image, dx=2, dy=-1)  # right 2, up 1
    torch.testing.assert_close(moved[:, :4, 2:], image[:, 1:, :3])
    torch.testing.assert_close(moved[:, :4, 0], image[:, 1:, 0])  # left edge repeated
    torch.testing.assert_close(moved[:, 4, 2:], image[:, 4, :3])  # bottom edge repeated
    torch.testing.assert_close(shift_image(image, 0, 0), image)


def test_augment_image_is_seeded_finite_and_keeps_dtype() -> None:
    pixels = random_pixels()
    config = ImageAugmentConfig(p_jitter=1.0, p_shift=1.0, p_flip=0.5)
    runs = [
        augment_image(pixels, "x", config, IMAGE_CONFIG, torch.Generator().manual_seed(s)).pixels for s in (3, 3, 4)
    ]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert runs[0].dtype == torch.float32 and runs[0].shape == (3, 16, 16) and torch.isfinite(runs[0]).all()
    assert runs[0].min() >= -1 and runs[0].max() <= 1  # still within the normalised [0, 1] range


@pytest.mark.parametrize(("field", "value"), [("brightness", 0.5), ("p_flip", 1.5), ("max_shift", -0.1)])
def test_image_config_refuses_bad_values(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ImageAugmentConfig(**{field: value})


# ------------------------------------------------------------ audio


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [5.0, 17.5, 30.0])
def test_noise_has_the_requested_snr(color: str, snr_db: float) -> None:
    clean = tone(1.0, 440.0)
    noisy = add_noise(clean, snr_db, color, np.random.default_rng(0))  # type: ignore[arg-type]
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr_db) < 1.0
    assert noisy.dtype == np.float32


def test_pink_noise_has_more_low_than_high_frequency_energy() -> None:
    noise = add_noise(tone(1.0, 440.0), 0.0, "pink", np.random.default_rng(1)) - tone(1.0, 440.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequencies = np.fft.rfftfreq(noise.size, 1.0 / SAMPLE_RATE)
    low, high = (
        power[(frequencies > 100) & (frequencies < 200)].mean(),
        power[(frequencies > 4000) & (frequencies < 4100)].mean(),
    )
    assert low / high > 10  # 1/f power: about 30x between these bands


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_scales_duration_and_pitch(factor: float) -> None:
    wave = tone(1.0, 500.0)
    faster = change_speed(wave, factor)
    assert faster.size == round(wave.size / factor) and faster.dtype == np.float32
    assert abs(peak_frequency(faster) - 500.0 * factor) < 3.0


def test_band_limit_removes_energy_outside_the_band() -> None:
    noise = np.random.default_rng(2).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    limited = band_limit(noise, SAMPLE_RATE, lowpass_hz=3000.0, highpass_hz=300.0)
    power = np.abs(np.fft.rfft(limited.astype(np.float64))) ** 2
    before = np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2
    frequencies = np.fft.rfftfreq(noise.size, 1.0 / SAMPLE_RATE)
    outside = (frequencies > 3000) | (frequencies < 300)
    assert power[outside].sum() < 1e-6 * power.sum()
    inside = ~outside
    assert abs(power[inside].sum() / before[inside].sum() - 1.0) < 1e-3
    assert limited.dtype == np.float32


def test_band_limit_at_an_awkward_length_leaves_nothing_past_the_cutoff() -> None:
    """A length with a large prime factor is padded for speed; a windowed FFT finds no energy beyond the band."""
    noise = np.random.default_rng(3).standard_normal(14_953).astype(np.float32)
    limited = band_limit(noise, SAMPLE_RATE, lowpass_hz=3000.0, highpass_hz=300.0).astype(np.float64)
    assert limited.size == noise.size
    power = np.abs(np.fft.rfft(limited * np.hanning(limited.size))) ** 2
    frequencies = np.fft.rfftfreq(limited.size, 1.0 / SAMPLE_RATE)
    assert power[(frequencies > 3020) | (frequencies < 280)].sum() < 1e-6 * power.sum()


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 14_953, 16_001])
def test_fast_fft_length_is_the_next_5_smooth_number(n: int) -> None:
    def smooth(m: int) -> bool:
        for q in (2, 3, 5):
            while m % q == 0:
                m //= q
        return m == 1

    length = fast_fft_length(n)
    assert length >= n and smooth(length) and not any(smooth(k) for k in range(n, length))


def test_gain_scales_level_in_decibels() -> None:
    wave = tone(1.0, 440.0, amplitude=0.1)
    louder = apply_gain(wave, 6.0)
    ratio_db = 20 * np.log10(np.sqrt(np.mean(louder.astype(np.float64) ** 2) / np.mean(wave.astype(np.float64) ** 2)))
    assert abs(ratio_db - 6.0) < 1e-3 and louder.dtype == np.float32


def test_impulse_response_decays_and_has_the_requested_direct_ratio() -> None:
    ir = synthetic_impulse_response(SAMPLE_RATE, rt60=0.4, direct_ratio_db=6.0, rng=np.random.default_rng(3))
    assert ir.size == round(0.4 * SAMPLE_RATE) and ir[0] == 1.0
    tail = ir[1:]
    assert abs(10 * np.log10(1.0 / np.sum(tail**2)) - 6.0) < 1e-6
    tenth = tail.size // 10
    assert np.sum(tail[:tenth] ** 2) > 1000 * np.sum(tail[-tenth:] ** 2)  # ~54 dB down over 90% of rt60


def test_reverb_keeps_length_and_level_and_smears_in_time() -> None:
    click = np.zeros(SAMPLE_RATE, dtype=np.float32)
    click[1000] = 0.5
    ir = synthetic_impulse_response(SAMPLE_RATE, 0.3, 0.0, np.random.default_rng(4))
    wet = add_reverb(click, ir)
    assert wet.shape == click.shape and wet.dtype == np.float32
    assert abs(np.sqrt(np.mean(wet**2)) - np.sqrt(np.mean(click**2))) < 1e-6
    assert np.count_nonzero(np.abs(wet[1001:]) > 1e-4) > 1000  # energy after the click
    assert np.abs(wet[:1000]).max() < 1e-6  # and none before it (FFT rounding only)


def test_reverb_is_the_convolution_rescaled() -> None:
    rng = np.random.default_rng(5)
    wave = rng.standard_normal(3001).astype(np.float32)
    ir = synthetic_impulse_response(SAMPLE_RATE, 0.05, 3.0, rng)
    direct = np.convolve(wave.astype(np.float64), ir)[: wave.size]
    direct *= np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(direct**2))
    np.testing.assert_allclose(add_reverb(wave, ir), direct, atol=1e-5)


def test_augment_waveform_is_seeded_finite_float32_and_bounded() -> None:
    wave = tone(2.0, 440.0)
    first = augment_waveform(wave, SAMPLE_RATE, ALL_AUDIO, np.random.default_rng(7))
    again = augment_waveform(wave, SAMPLE_RATE, ALL_AUDIO, np.random.default_rng(7))
    other = augment_waveform(wave, SAMPLE_RATE, ALL_AUDIO, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)
    assert first.dtype == np.float32 and np.all(np.isfinite(first)) and np.abs(first).max() <= 1.0
    assert 0.9 * wave.size <= first.size * 1.0 <= wave.size / 0.9 + 1
    nothing = AudioAugmentConfig(p_speed=0, p_reverb=0, p_band_limit=0, p_noise=0, p_gain=0)
    unchanged = augment_waveform(wave, SAMPLE_RATE, nothing, np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, wave)
    assert unchanged is not wave


def test_augment_waveform_refuses_bad_input() -> None:
    with pytest.raises(AudioError, match="1-D float waveform"):
        augment_waveform(np.zeros((2, 100), np.float32), SAMPLE_RATE, ALL_AUDIO, np.random.default_rng(0))
    with pytest.raises(AudioError, match="finite"):
        augment_waveform(np.array([0.1, np.nan], np.float32), SAMPLE_RATE, ALL_AUDIO, np.random.default_rng(0))


@pytest.mark.parametrize("mask_value", ["mean", "zero"])
def test_spec_augment_masks_bands_with_the_chosen_value(mask_value: str) -> None:
    features = torch.rand(80, 200, generator=torch.Generator().manual_seed(0)) + 1.0  # no cell is 0 or the mean
    config = AudioAugmentConfig(
        n_freq_masks=1, max_freq_mask=20, n_time_masks=1, max_time_mask=30, mask_value=mask_value
    )  # type: ignore[arg-type]
    fill = float(features.mean()) if mask_value == "mean" else 0.0
    masked_rows, masked_cols = 0, 0
    for seed in range(20):
        out = spec_augment(features, config, torch.Generator().manual_seed(seed))
        masked = out == fill
        rows, cols = masked.all(dim=1), masked.all(dim=0)
        assert torch.equal(masked, rows[:, None] | cols[None, :])  # only whole bands change
        torch.testing.assert_close(out[~masked], features[~masked])
        assert rows.sum() <= 20 and cols.sum() <= 30
        masked_rows, masked_cols = masked_rows + int(rows.sum()), masked_cols + int(cols.sum())
    assert masked_rows > 0 and masked_cols > 0
    assert torch.equal(
        spec_augment(features, config, torch.Generator().manual_seed(5)),
        spec_augment(features, config, torch.Generator().manual_seed(5)),
    )


def test_spec_augment_time_masks_respect_the_fraction_cap() -> None:
    features = torch.rand(20, 50) + 1.0  # a short clip: 0.2 * 50 = at most 10 frames per mask
    config = AudioAugmentConfig(n_freq_masks=0, n_time_masks=1, max_time_mask=100, mask_value="zero")
    widths = [
        int((spec_augment(features, config, torch.Generator().manual_seed(s)) == 0).all(dim=0).sum()) for s in range(50)
    ]
    assert max(widths) <= 10 and max(widths) >= 5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"speed_range": (1.1, 0.9)}, "speed_range"),
        ({"noise_colors": ("blue",)}, "noise_colors"),
        ({"p_noise": -0.1}, "p_noise"),
        ({"highpass_hz_range": (0.0, 4000.0)}, "highpass_hz_range"),
        ({"mask_value": "max"}, "mask_value"),
    ],
)
def test_audio_config_refuses_bad_values(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        AudioAugmentConfig(**overrides)
