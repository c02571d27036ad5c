"""Reading, checking, resampling and saving audio, and the log-mel front end.

Owns the audio boundary: ``load_audio`` accepts a file path, the encoded bytes of
a file, or a ``(sample_rate, array)`` tuple as Gradio's microphone gives it, refuses
anything broken with an ``AudioError`` that names the problem, and returns mono
float32 in [-1, 1] at ``AudioConfig.sample_rate``. ``LogMel`` turns waveforms into
the normalised log-mel features the audio stem reads. Files are read and written
with ``soundfile`` (``torchaudio.load`` needs torchcodec, absent here); resampling
and mel filterbanks come from torchaudio.

Imports only ``mmbm.config`` and ``mmbm.errors`` from the package; never gradio or
training code.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from mmbm.config import AudioConfig
from mmbm.errors import AudioError

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_CONFIG = AudioConfig()  # frozen, so sharing one default is safe
AudioSource = str | os.PathLike | bytes | bytearray | tuple[int, np.ndarray]

MIN_SAMPLE_RATE = 8_000  # Hz; telephone band, the lowest rate accepted
MAX_SAMPLE_RATE = 48_000  # Hz; what browsers record at, the highest rate accepted
MAX_CHANNELS = 8  # an axis this short (or shorter) can be a channel axis; 7.1 surround has 8
CLIP_WARN_FRACTION = 0.01  # clipping more than 1% of samples is logged as a warning
LOG_FLOOR = 1e-10  # power floor before log10: -100 dB
LOG_RANGE = 8.0  # log10 units (80 dB) of dynamic range kept below the loudest bin
# integer PCM full scale: int16 and int32 are signed, uint8 is offset by 128 (WAV 8-bit)
INT_FULL_SCALE: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.int16): (0.0, 32_768.0),
    np.dtype(np.int32): (0.0, 2_147_483_648.0),
    np.dtype(np.uint8): (128.0, 128.0),
}


def load_audio(source: AudioSource, config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> np.ndarray:
    """Read ``source`` and return (N,) mono float32 in [-1, 1] at ``config.sample_rate``.

    ``source`` is a path, a file's bytes (any format libsndfile reads: WAV, FLAC,
    OGG, MP3, ...), or ``(sample_rate, array)``. Arrays may be int16, int32, uint8
    (offset 128) or float32/float64; (N,) is mono, 2-D arrays are averaged over their
    channel axis: (N, C) as soundfile and Gradio give it, or (C, N) as torchaudio
    does when the first axis has at most 8 entries and is the shorter one. Float
    samples beyond [-1, 1] are clipped (logged). Silence is not refused here; see
    ``check_not_silent``. Raises ``AudioError`` naming the problem.
    """
    if isinstance(source, tuple):
        what = "the given array"
        sample_rate, samples = _unpack_tuple(source)
    elif isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise AudioError("Not audio: got empty bytes")
        sample_rate, samples = _read_file(io.BytesIO(bytes(source)), config, what="the given bytes")
        what = "the given bytes"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"Audio file not found: {str(path)!r}")
        if not path.is_file():
            raise AudioError(f"Not an audio file (it is a directory or special file): {str(path)!r}")
        what = repr(str(path))
        sample_rate, samples = _read_file(path, config, what=what)
    else:
        raise AudioError(
            f"Wrong input type for audio: {type(source).__name__}; "
            "expected a path, bytes or a (sample_rate, array) tuple"
        )
    mono = _to_mono_float(samples, what)
    _check_duration(mono.shape[0], sample_rate, config, what)
    return resample(mono, sample_rate, config.sample_rate)


def _unpack_tuple(source: tuple) -> tuple[int, np.ndarray]:
    if len(source) != 2 or not isinstance(source[1], np.ndarray):
        raise AudioError(
            "Audio tuple must be (sample_rate, numpy array) as Gradio gives it; "
            f"got a tuple of {[type(item).__name__ for item in source]}"
        )
    sample_rate, samples = source
    _check_sample_rate(sample_rate, "the given array")
    return int(sample_rate), samples


def _check_sample_rate(sample_rate: object, what: str) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral):
        raise AudioError(f"Unsupported sample rate {sample_rate!r} for {what}: must be an integer number of Hz")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"Unsupported sample rate {int(sample_rate)} Hz for {what}: "
            f"must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )


def _check_duration(n_samples: int, sample_rate: int, config: AudioConfig, what: str) -> None:
    if n_samples == 0:
        raise AudioError(f"Empty audio: {what} has zero samples")
    seconds = n_samples / sample_rate
    if seconds > config.max_seconds:
        raise AudioError(f"Audio too long: {what} lasts {seconds:.2f} s, over the limit of {config.max_seconds:g} s")
    if seconds < config.min_seconds:
        raise AudioError(
            f"Audio too short: {what} lasts {seconds:.3f} s, under the minimum of {config.min_seconds:g} s"
        )


def _read_file(file: Path | io.BytesIO, config: AudioConfig, what: str) -> tuple[int, np.ndarray]:
    """Check rate and duration from the header, then decode; returns (rate, (N,) float32 channel mean)."""
    try:
        info = soundfile.info(file)
    except soundfile.SoundFileError as e:
        raise AudioError(f"Not audio, or an unreadable audio file: {what} ({_reason(e)})") from e
    _check_sample_rate(info.samplerate, what)
    if info.frames > 0 and info.frames / info.samplerate > config.max_seconds:
        _check_duration(info.frames, info.samplerate, config, what)
    if isinstance(file, io.BytesIO):
        file.seek(0)
    try:
        samples, sample_rate = soundfile.read(file, dtype="float32", always_2d=True)  # (N, C)
    except soundfile.SoundFileError as e:
        raise AudioError(f"Corrupt audio: {what} could not be decoded ({_reason(e)})") from e
    return int(sample_rate), samples.mean(axis=1, dtype=np.float32)  # files are (N, C): average here


def _reason(error: Exception) -> str:
    # libsndfile's own words ("Format not recognised."), without the Python object's repr
    return str(getattr(error, "error_string", "") or error).strip()


def _channel_axis(shape: tuple[int, ...], what: str) -> int:
    """(N, C) unless C is implausible as a channel count and the first axis is not: then (C, N)."""
    n_rows, n_cols = shape
    if n_cols <= MAX_CHANNELS and n_cols <= n_rows:
        return 1  # (N, C): soundfile, Gradio, WAV interleaving
    if n_rows <= MAX_CHANNELS:
        return 0  # (C, N): torchaudio's layout
    raise AudioError(
        f"Cannot tell the channel axis of {what} with shape {shape}: neither axis has at most {MAX_CHANNELS} entries"
    )


def _to_mono_float(samples: np.ndarray, what: str) -> np.ndarray:
    """Integer PCM or float samples, (N,), (N, C) or (C, N) -> (N,) float32 in [-1, 1]."""
    if samples.ndim not in (1, 2):
        raise AudioError(f"Audio array must be (N,), (N, C) or (C, N); {what} has shape {samples.shape}")
    if samples.size == 0:
        raise AudioError(f"Empty audio: {what} has zero samples (shape {samples.shape})")
    channel_axis = _channel_axis(samples.shape, what) if samples.ndim == 2 else None
    if samples.dtype in INT_FULL_SCALE:
        offset, scale = INT_FULL_SCALE[samples.dtype]
        values = (samples.astype(np.float64) - offset) / scale
    elif samples.dtype in (np.float32, np.float64):
        n_bad = int(np.count_nonzero(~np.isfinite(samples)))
        if n_bad:
            raise AudioError(f"Audio has {n_bad} non-finite samples (NaN or inf) out of {samples.size} in {what}")
        values = samples.astype(np.float64)
    else:
        raise AudioError(
            f"Unsupported audio dtype {samples.dtype} in {what}; use int16, int32, uint8, float32 or float64"
        )
    if channel_axis is not None:
        values = values.mean(axis=channel_axis)
    n_clipped = int(np.count_nonzero(np.abs(values) > 1.0))
    if n_clipped:
        fraction = n_clipped / values.size
        level = logging.WARNING if fraction > CLIP_WARN_FRACTION else logging.DEBUG
        logger.log(
            level,
            "clipped %d of %d samples (%.2f%%) beyond [-1, 1] in %s",
            n_clipped,
            values.size,
            100 * fraction,
            what,
        )
    return np.clip(values, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    # building the sinc kernel costs as much as applying it; reuse one per rate pair
    return torchaudio.transforms.Resample(orig_rate, new_rate)


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample (N,) float32 audio with torchaudio's windowed-sinc filter; result clipped to [-1, 1].

    The output has ``ceil(N * new_rate / orig_rate)`` samples; the sinc filter can
    overshoot full scale slightly, hence the final clip.
    """
    if orig_rate == new_rate:
        return audio.astype(np.float32, copy=False)
    with torch.inference_mode():
        resampled = _resampler(orig_rate, new_rate)(torch.from_numpy(audio.astype(np.float32, copy=False)))
    return np.clip(resampled.numpy(), -1.0, 1.0)


def rms_db(audio: np.ndarray) -> float:
    """Root-mean-square level of (N,) audio in dB relative to full scale (1.0); -inf for digital silence."""
    if audio.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def is_silent(audio: np.ndarray, threshold_db: float = -50.0) -> bool:
    """True when the RMS level of (N,) audio is below ``threshold_db`` dB full scale (or it is empty)."""
    return rms_db(audio) < threshold_db


def check_not_silent(audio: np.ndarray, config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> None:
    """Raise ``AudioError`` when the clip is silent by ``config.silence_db`` (e.g. a muted microphone)."""
    level = rms_db(audio)
    if level < config.silence_db:
        shown = "-inf" if math.isinf(level) else f"{level:.1f}"
        raise AudioError(
            f"Audio is silent: its level is {shown} dB full scale, under the {config.silence_db:g} dB "
            "threshold; check that the microphone is on and not muted"
        )


class LogMel(torch.nn.Module):
    """Waveform (B, N) -> normalised log-mel (B, n_mels, N // hop_length + 1).

    Power mel spectrogram (torchaudio, Slaney mel scale and norm, centred Hann
    windows), then ``log10(max(x, 1e-10))``. Normalisation is relative to each
    clip's loudest bin: values below ``max - 8`` (80 dB down) are raised to it, then
    ``(x - max) / 4 + 1`` maps the kept range onto [-1, 1]. A microphone's gain
    adds a constant in the log domain, so subtracting the clip's own maximum makes
    the features the same at any gain (unlike Whisper's fixed ``(x + 4) / 4``), and
    unlike per-utterance mean/variance it is not moved by how much silence or batch
    padding surrounds the speech, nor does it blow up the noise of a quiet clip.
    Buffers (window, filterbank) move with ``.to(device)``; it runs in float32
    even under autocast.
    """

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.hop_length = config.hop_length
        self.min_samples = config.n_fft // 2 + 1  # reflect padding needs more samples than n_fft // 2
        self.spectrogram = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise AudioError(f"LogMel expects a (B, N) waveform; got shape {tuple(waveform.shape)}")
        if waveform.shape[1] < self.min_samples:
            raise AudioError(f"LogMel needs at least {self.min_samples} samples; got {waveform.shape[1]}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.spectrogram(waveform.float())  # (B, n_mels, T)
            log_power = torch.log10(power.clamp(min=LOG_FLOOR))
            peak = log_power.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
            log_power = torch.maximum(log_power, peak - LOG_RANGE)
            return (log_power - peak) / (LOG_RANGE / 2) + 1.0  # (B, n_mels, T) in [-1, 1]


@functools.lru_cache(maxsize=4)
def _log_mel_module(config: AudioConfig) -> LogMel:
    return LogMel(config)


def log_mel(audio: np.ndarray, config: AudioConfig = DEFAULT_AUDIO_CONFIG) -> torch.Tensor:
    """(N,) float audio at ``config.sample_rate`` -> (n_mels, N // hop_length + 1) float32 on the CPU."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        shape = getattr(audio, "shape", None)
        raise AudioError(f"log_mel expects a (N,) numpy array; got {type(audio).__name__} with shape {shape}")
    with torch.inference_mode():
        return _log_mel_module(config)(torch.from_numpy(audio.astype(np.float32))[None])[0]


def save_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write (N,) or (N, C) float audio to ``path`` atomically; the format follows the suffix.

    Samples are clipped to [-1, 1]; WAV is written as 16-bit PCM (soundfile's
    default). The data goes to a temporary file in the same folder, then
    ``os.replace`` puts it in place, so a reader never sees a half-written file.
    """
    path = Path(path)
    file_format = path.suffix.lstrip(".").upper()
    if file_format not in soundfile.available_formats():
        raise AudioError(f"Cannot save audio as {path.name!r}: unknown audio format {path.suffix!r}")
    _check_sample_rate(sample_rate, repr(str(path)))
    if not isinstance(audio, np.ndarray) or audio.ndim not in (1, 2) or audio.size == 0:
        raise AudioError(f"save_audio expects a non-empty (N,) or (N, C) array; got {getattr(audio, 'shape', audio)!r}")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"Cannot save audio to {str(path)!r}: it has non-finite samples (NaN or inf)")
    if not path.parent.is_dir():
        raise AudioError(f"Cannot save audio to {str(path)!r}: folder {str(path.parent)!r} does not exist")
    file_descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(file_descriptor)
    try:
        soundfile.write(temporary, np.clip(audio, -1.0, 1.0), int(sample_rate), format=file_format)
        os.replace(temporary, path)
    except (soundfile.SoundFileError, ValueError, OSError) as e:
        raise AudioError(f"Cannot save audio to {str(path)!r}: {e}") from e
    finally:
        Path(temporary).unlink(missing_ok=True)  # a no-op once os.replace has moved it
    return path
