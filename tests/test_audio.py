"""Tests for mmbm.audio: every input kind, resampling, every refusal, LogMel and saving."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from mmbm import audio as audio_module
from mmbm.audio import LogMel, check_not_silent, is_silent, load_audio, log_mel, rms_db, save_audio
from mmbm.config import AudioConfig
from mmbm.errors import AudioError
from tests.helpers import tone

RATE = 16_000


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * rate / audio.size)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", file_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format=file_format)
    return buffer.getvalue()


# ---- inputs that load -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("frequency", [440.0, 1_000.0, 3_000.0])
def test_resampling_keeps_frequency_duration_and_level(rate: int, frequency: float) -> None:
    audio = load_audio((rate, tone(1.5, frequency, rate, amplitude=0.5)))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 1.5 * RATE) <= 1
    assert abs(peak_frequency(audio, RATE) - frequency) <= 1.0  # FFT bins are 0.67 Hz wide
    # the anti-aliasing filter rolls off near Nyquist: 3 kHz from 8 kHz loses 0.13 dB
    assert rms_db(audio) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.25)
    assert np.abs(audio).max() <= 1.0


def test_resampling_to_another_configured_rate() -> None:
    config = AudioConfig(sample_rate=22_050, f_max=11_025.0)
    audio = load_audio((48_000, tone(1.0, 2_000.0, 48_000, amplitude=0.5)), config)
    assert abs(audio.size - 22_050) <= 1 and abs(peak_frequency(audio, 22_050) - 2_000.0) <= 1.5


@pytest.mark.parametrize(
    ("dtype", "to_samples"),
    [
        (np.int16, lambda x: np.round(x * 32_767)),
        (np.int32, lambda x: np.round(x * 2_147_483_647)),
        (np.uint8, lambda x: np.round(x * 127 + 128)),
        (np.float32, lambda x: x),
        (np.float64, lambda x: x),
    ],
)
def test_each_sample_format_gives_the_same_waveform(dtype: type, to_samples) -> None:
    reference = tone(0.5, 440.0, RATE, amplitude=0.5)
    audio = load_audio((RATE, to_samples(reference.astype(np.float64)).astype(dtype)))
    assert audio.dtype == np.float32
    assert np.abs(audio - reference).max() < 0.01  # uint8 has 1/128 steps


def test_uint8_midpoint_is_silence_and_extremes_are_full_scale() -> None:
    audio = load_audio((RATE, np.array([128, 0, 255] * 400, np.uint8)))
    assert audio[:3].tolist() == pytest.approx([0.0, -1.0, 127 / 128])


def test_channels_are_averaged_in_either_layout() -> None:
    left, right = tone(0.5, 440.0, RATE, amplitude=0.5), tone(0.5, 1_000.0, RATE, amplitude=0.25)
    expected = (left + right) / 2
    for samples in (np.stack([left, right], axis=1), np.stack([left, right], axis=0)):  # (N, 2) and (2, N)
        assert np.allclose(load_audio((RATE, samples)), expected, atol=1e-6)
    surround = np.repeat(left[:, None], 6, axis=1)  # (N, 6)
    assert np.allclose(load_audio((RATE, surround)), left, atol=1e-6)
    assert np.allclose(load_audio((RATE, left[None, :])), left)  # (1, N) is mono


def test_gradio_microphone_tuple_int16_stereo_at_48k() -> None:
    clip = np.round(tone(2.0, 440.0, 48_000, amplitude=0.5) * 32_767).astype(np.int16)
    audio = load_audio((np.int64(48_000), np.stack([clip, clip], axis=1)))
    assert abs(audio.size - 32_000) <= 1 and abs(peak_frequency(audio, RATE) - 440.0) <= 1.0


def test_files_by_path_str_and_bytes_and_formats(tmp_path: Path) -> None:
    stereo = np.stack([tone(1.0, 440.0, 44_100, amplitude=0.5), tone(1.0, 440.0, 44_100, amplitude=0.5)], axis=1)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, stereo, 44_100, subtype="PCM_16")
    flac = tmp_path / "clip.flac"
    soundfile.write(flac, stereo, 44_100)
    results = [load_audio(wav), load_audio(str(wav)), load_audio(wav.read_bytes()), load_audio(flac)]
    for audio in results:
        assert abs(audio.size - RATE) <= 1 and abs(peak_frequency(audio, RATE) - 440.0) <= 1.0
    assert np.allclose(results[0], results[3], atol=1e-4)


def test_float_samples_beyond_full_scale_are_clipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    loud = tone(0.5, 440.0, RATE, amplitude=2.0)
    with caplog.at_level(logging.WARNING, logger="mmbm.audio"):
        audio = load_audio((RATE, loud))
    assert audio.max() == 1.0 and audio.min() == -1.0
    assert "clipped" in caplog.text and "%" in caplog.text
    float_wav = wav_bytes(loud, RATE, subtype="FLOAT")
    assert np.abs(load_audio(float_wav)).max() == 1.0


# ---- refusals -----------------------------------------------------------------------------


def test_missing_file_and_directory_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"not found: .*nowhere\.wav"):
        load_audio(tmp_path / "nowhere.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize("data", [b"RIFF\x00\x00 definitely not a wave file" * 8, b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_non_audio_bytes_and_files_are_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(AudioError, match="Not audio.*Format not recognised"):
        load_audio(data)
    path = tmp_path / "fake.wav"
    path.write_bytes(data)
    with pytest.raises(AudioError, match=r"Not audio.*fake\.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="empty bytes"):
        load_audio(b"")


def test_truncated_files_are_refused_or_give_the_samples_present() -> None:
    clip = tone(1.0, 440.0, RATE, amplitude=0.5)
    flac = wav_bytes(clip, RATE, subtype="PCM_16", file_format="FLAC")
    with pytest.raises(AudioError, match="Corrupt audio.*could not be decoded.*lost sync"):
        load_audio(flac[: len(flac) // 2])
    wav = wav_bytes(clip, RATE)  # PCM WAV has no frames to lose sync with: the first half is audio
    assert load_audio(wav[: len(wav) // 2]).size == pytest.approx(RATE / 2, abs=20)


@pytest.mark.parametrize(
    "source",
    [
        (RATE, np.zeros(0, np.float32)),
        (RATE, np.zeros((0, 2), np.int16)),
        wav_bytes(np.zeros(0, np.float32), RATE),
    ],
)
def test_empty_audio_is_refused(source: object) -> None:
    with pytest.raises(AudioError, match="Empty audio.*zero samples"):
        load_audio(source)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "count"), [(np.nan, 4_000), (np.inf, 4_000), (-np.inf, 4_000)])
def test_non_finite_samples_are_refused_with_their_count(bad: float, count: int) -> None:
    everywhere = np.full(count, bad, np.float32)
    with pytest.raises(AudioError, match=f"{count} non-finite samples"):
        load_audio((RATE, everywhere))
    few = tone(0.5, 440.0, RATE, amplitude=0.5)
    few[[10, 20, 30]] = bad
    with pytest.raises(AudioError, match="3 non-finite samples"):
        load_audio((RATE, few))


def test_too_long_clip_is_refused_with_duration_and_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_clip = tone(61.0, 440.0, 8_000, amplitude=0.5)
    with pytest.raises(AudioError, match=r"too long.*61\.00 s.*limit of 60 s"):
        load_audio((8_000, long_clip))
    path = tmp_path / "long.wav"
    soundfile.write(path, long_clip, 8_000)
    decoded: list[object] = []
    read = soundfile.read
    monkeypatch.setattr(audio_module.soundfile, "read", lambda *a, **k: decoded.append(a) or read(*a, **k))
    with pytest.raises(AudioError, match=r"too long.*61\.00 s.*limit of 60 s"):
        load_audio(path)
    assert decoded == []  # refused from the header, before decoding
    assert load_audio(path, AudioConfig(max_seconds=62.0)).size == 61 * RATE
    assert len(decoded) == 1
    assert load_audio((8_000, long_clip[: 60 * 8_000])).size == 60 * RATE  # exactly the limit is fine


def test_too_short_clip_is_refused() -> None:
    with pytest.raises(AudioError, match=r"too short.*0\.010 s.*0\.05 s"):
        load_audio((RATE, tone(0.01, 440.0, RATE, amplitude=0.5)))


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (4_000, "Unsupported sample rate 4000 Hz"),
        (96_000, "Unsupported sample rate 96000 Hz"),
        (44_100.0, "must be an integer"),
        (True, "must be an integer"),
        ("16000", "must be an integer"),
    ],
)
def test_unsupported_sample_rates_are_refused(rate: object, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        load_audio((rate, tone(0.5, 440.0, 16_000, amplitude=0.5)))  # type: ignore[arg-type]


def test_unsupported_sample_rate_in_a_file_header_is_refused() -> None:
    with pytest.raises(AudioError, match="Unsupported sample rate 96000 Hz"):
        load_audio(wav_bytes(tone(0.5, 440.0, 96_000, amplitude=0.5), 96_000))


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((20, 20), np.float32), "Cannot tell the channel axis"),
        (np.zeros((2, 800, 2), np.float32), r"must be \(N,\), \(N, C\) or \(C, N\)"),
        (np.zeros(8_000, np.int64), "Unsupported audio dtype int64"),
        (np.zeros(8_000, np.complex64), "Unsupported audio dtype complex64"),
    ],
)
def test_bad_arrays_are_refused(samples: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        load_audio((RATE, samples))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (42, "Wrong input type for audio: int"),
        ([0.0, 0.1], "Wrong input type for audio: list"),
        (np.zeros(RATE, np.float32), "Wrong input type for audio: ndarray"),
        ((np.zeros(RATE, np.float32), RATE), r"must be \(sample_rate, numpy array\)"),
        ((RATE, [0.0] * RATE), r"must be \(sample_rate, numpy array\)"),
        ((RATE, np.zeros(RATE), "extra"), r"must be \(sample_rate, numpy array\)"),
    ],
)
def test_wrong_input_types_are_refused(source: object, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        load_audio(source)  # type: ignore[arg-type]


def test_silence_is_detected_but_not_refused_by_load_audio() -> None:
    rng = np.random.default_rng(0)
    quiet_noise = (rng.standard_normal(RATE) * 10 ** (-60 / 20)).astype(np.float32)  # about -60 dBFS
    silence = load_audio((RATE, np.zeros(RATE, np.int16)))
    assert is_silent(silence) and is_silent(quiet_noise) and is_silent(np.zeros(0, np.float32))
    speech_level = tone(0.5, 440.0, RATE, amplitude=0.05)  # about -29 dBFS
    assert not is_silent(speech_level)
    assert is_silent(speech_level, threshold_db=-20.0)
    check_not_silent(speech_level)
    for clip, level in ((silence, "-inf"), (quiet_noise, "-60")):
        with pytest.raises(AudioError, match=f"silent: its level is {level}"):
            check_not_silent(clip, AudioConfig())
    check_not_silent(quiet_noise, AudioConfig(silence_db=-70.0))


# ---- LogMel --------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [201, 1_600, 16_000, 16_079])
def test_log_mel_shape_range_and_finiteness(n_samples: int) -> None:
    config = AudioConfig()
    rng = np.random.default_rng(1)
    waveform = torch.from_numpy(rng.uniform(-0.3, 0.3, (2, n_samples)).astype(np.float32))
    features = LogMel(config)(waveform)
    assert features.shape == (2, config.n_mels, n_samples // config.hop_length + 1)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert features.min() >= -1.0 and features.max() == 1.0


def test_log_mel_of_silence_is_finite() -> None:
    assert torch.isfinite(LogMel(AudioConfig())(torch.zeros(1, 1_600))).all()


def test_log_mel_is_the_same_at_any_microphone_gain() -> None:
    rng = np.random.default_rng(2)
    clip = tone(1.0, 440.0, RATE, amplitude=0.5) + (0.01 * rng.standard_normal(RATE)).astype(np.float32)
    loud, quiet = log_mel(clip), log_mel(clip * 0.02)  # 34 dB apart
    assert torch.allclose(loud, quiet, atol=1e-3)


def test_log_mel_of_a_real_frame_is_unchanged_by_batch_padding() -> None:
    module = LogMel(AudioConfig())
    short, long = tone(0.5, 440.0, RATE, amplitude=0.5), tone(1.0, 1_000.0, RATE, amplitude=0.5)
    batch = torch.from_numpy(np.stack([np.pad(short, (0, long.size - short.size)), long]))
    padded = module(batch)[0]  # (n_mels, T_long)
    alone = module(torch.from_numpy(short)[None])[0]  # (n_mels, T_short)
    n_frames = alone.shape[1] - 2  # frames whose window overlaps the padding differ
    assert torch.allclose(padded[:, :n_frames], alone[:, :n_frames], atol=1e-5)


def test_log_mel_puts_a_higher_tone_in_a_higher_mel_band() -> None:
    bands = [int(log_mel(tone(0.5, f, RATE, amplitude=0.5)).mean(dim=1).argmax()) for f in (300.0, 1_000.0, 4_000.0)]
    assert bands[0] < bands[1] < bands[2]


def test_log_mel_convenience_matches_module_and_refuses_bad_input() -> None:
    config = AudioConfig(n_mels=40)
    clip = tone(0.3, 440.0, RATE, amplitude=0.5)
    assert log_mel(clip, config).shape == (40, clip.size // 160 + 1)
    assert torch.equal(log_mel(clip, config), LogMel(config)(torch.from_numpy(clip)[None])[0])
    with pytest.raises(AudioError, match=r"expects a \(N,\) numpy array"):
        log_mel(np.zeros((2, 1_600), np.float32), config)
    with pytest.raises(AudioError, match=r"expects a \(B, N\) waveform"):
        LogMel(config)(torch.zeros(1_600))
    with pytest.raises(AudioError, match="at least 201 samples"):
        LogMel(config)(torch.zeros(1, 200))


def test_log_mel_buffers_follow_to_and_autocast_keeps_float32() -> None:
    module = LogMel(AudioConfig())
    buffers = dict(module.named_buffers())
    assert any("window" in name for name in buffers) and any("fb" in name for name in buffers)
    waveform = torch.from_numpy(tone(0.5, 440.0, RATE, amplitude=0.5))[None]
    reference = module(waveform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = module(waveform)
    assert under_autocast.dtype == torch.float32 and torch.allclose(under_autocast, reference)
    assert torch.allclose(module(waveform.double()), reference)


# ---- saving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_save_audio_round_trips(tmp_path: Path, suffix: str) -> None:
    clip = tone(0.5, 440.0, 22_050, amplitude=0.5)
    path = save_audio(tmp_path / f"clip{suffix}", clip, 22_050)
    samples, rate = soundfile.read(path, dtype="float32")
    assert rate == 22_050 and np.abs(samples - clip).max() < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip{suffix}"]  # no temporary file left


def test_save_audio_clips_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    save_audio(path, tone(0.5, 440.0, RATE, amplitude=0.5), RATE)
    save_audio(path, tone(0.2, 440.0, RATE, amplitude=3.0), RATE)
    samples, _ = soundfile.read(path, dtype="float32")
    assert samples.size == 3_200 and np.abs(samples).max() == pytest.approx(1.0, abs=1e-4)


def test_save_audio_failure_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.wav"
    save_audio(path, tone(0.5, 440.0, RATE, amplitude=0.5), RATE)
    before = path.read_bytes()

    def fail_halfway(file: str, *args, **kwargs) -> None:
        Path(file).write_bytes(b"RIFF half")
        raise soundfile.LibsndfileError(1, "disk full")

    monkeypatch.setattr(audio_module.soundfile, "write", fail_halfway)
    with pytest.raises(AudioError, match=r"Cannot save audio to .*clip\.wav"):
        save_audio(path, tone(0.5, 1_000.0, RATE, amplitude=0.5), RATE)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]


@pytest.mark.parametrize(
    ("name", "samples", "rate", "message"),
    [
        ("clip.xyz", np.zeros(100, np.float32), RATE, "unknown audio format '.xyz'"),
        ("clip.wav", np.array([0.0, np.nan], np.float32), RATE, "non-finite"),
        ("clip.wav", np.zeros(0, np.float32), RATE, "non-empty"),
        ("clip.wav", np.zeros(100, np.float32), 1_000, "Unsupported sample rate 1000 Hz"),
        ("missing/clip.wav", np.zeros(100, np.float32), RATE, "does not exist"),
    ],
)
def test_save_audio_refusals(tmp_path: Path, name: str, samples: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        save_audio(tmp_path / name, samples, rate)
