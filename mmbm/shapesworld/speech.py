"""The ShapesWorld speech corpus: spoken captions and number phrases from offline TTS voices.

Owns ``SpeechConfig``, the plan of which voice speaks which text in which split
(``plan_speech_corpus``), and ``generate_speech_corpus``, which synthesises the
plan in a thread pool (the engines are subprocesses or ONNX sessions, both of
which release the GIL), resamples to 16 kHz mono, trims silence, writes PCM16
WAV clips atomically, then the JSONL manifests and, last, ``corpus.json``. A
folder without ``corpus.json`` is incomplete; re-running resumes it, keeping
every valid clip already on disk, and a complete folder made from the same plan
is returned as it is. Layout (see the corpus contract): ``clips/<id>.wav``;
``train|val|test.jsonl`` spoken by seen voices, texts split by a hash so no
sentence is in two splits (the 21 words zero..twenty are the exception: they
are the whole vocabulary of single numbers); ``heldout.jsonl`` spoken only by
the held-out voice family, on test texts. Engines live in ``mmbm.shapesworld.tts``.
Imports ``mmbm.audio``, ``mmbm.tokenizer`` and ``mmbm.errors``; never the model,
the trainer, gradio or the image corpus modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
from tqdm import tqdm

from mmbm.audio import is_silent, resample, save_audio
from mmbm.config import SAMPLE_RATE, require
from mmbm.errors import DataError, MMBMError
from mmbm.files import write_text_atomic
from mmbm.shapesworld.tts import ENGINE_NAMES, FAMILIES, TTSEngine, Voice, build_catalogue, make_engine
from mmbm.shapesworld.words import DIGIT_WORDS, NUMBER_WORDS
from mmbm.tokenizer import normalize_text

logger = logging.getLogger(__name__)

SEEN_SPLITS = ("train", "val", "test")
SPLITS = (*SEEN_SPLITS, "heldout")
TEXT_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # 80/10/10 of 10 hash buckets
FRAME_SECONDS = 0.01  # trimming looks at 10 ms frames
TRIM_DB = 40.0  # frames quieter than the loudest by more than this are silence
PAD_SECONDS = 0.05  # silence kept on each side after trimming
PEAK = 0.89  # clips are scaled to -1 dBFS peak, leaving headroom for gain augmentation
CORPUS_FORMAT = "mmbm-speech-1"
Kind = Literal["caption", "number"]


@dataclass(frozen=True)
class SpeechConfig:
    """What the speech corpus holds; a change in any field gives a different corpus.

    ``engine_shares`` is the fraction of seen-voice clips each engine speaks,
    renormalised over the engines that are enabled and installed (kokoro runs at
    ~1.5x real time on one core, so keep its share small). ``number_share`` is the
    fraction of clips that are number phrases rather than captions.
    """

    seed: int = 0
    n_train: int = 4000
    n_val: int = 300
    n_test: int = 300
    n_heldout: int = 300
    engines: tuple[str, ...] = ENGINE_NAMES
    engine_shares: tuple[tuple[str, float], ...] = (
        ("espeak", 0.35), ("flite", 0.2), ("festival", 0.1), ("piper", 0.25), ("kokoro", 0.1),
    )
    heldout_family: str = "ked"  # festival's Ked: a recorded person that no other engine speaks with
    number_share: float = 0.4
    n_workers: int = 2

    def __post_init__(self) -> None:
        for split in SPLITS:
            count = getattr(self, f"n_{split}")
            require(isinstance(count, int) and 0 <= count <= 1_000_000, f"n_{split}",
                     f"must be an int in [0, 1000000], got {count!r}")
        require(self.n_train + self.n_val + self.n_test > 0, "n_train", "train, val and test hold no clips")
        require(len(set(self.engines)) == len(self.engines) > 0, "engines", f"need some, no repeats: {self.engines}")
        for engine in self.engines:
            require(engine in ENGINE_NAMES, "engines", f"unknown TTS engine {engine!r}; known: {', '.join(ENGINE_NAMES)}")
        for engine, share in self.engine_shares:
            require(engine in ENGINE_NAMES and 0 < share <= 1, "engine_shares", f"bad share {engine!r}: {share}")
        missing = set(self.engines) - dict(self.engine_shares).keys()
        require(not missing, "engine_shares", f"no share given for enabled engine(s) {', '.join(sorted(missing))}")
        family = self.heldout_family
        require(family in FAMILIES, "heldout_family", f"unknown voice family {family!r}; known: {', '.join(FAMILIES)}")
        families = {v.family for v in build_catalogue(self.seed, self.engines)}
        require(family in families or not self.n_heldout, "heldout_family",
                 f"no enabled engine speaks as {family!r} (engines: {', '.join(self.engines)})")
        require(bool(families - {family}), "heldout_family", f"holding out {family!r} leaves no seen voice")
        require(0.0 <= self.number_share <= 1.0, "number_share", f"must be in [0, 1], got {self.number_share}")
        require(1 <= self.n_workers <= 64, "n_workers", f"must be in [1, 64], got {self.n_workers}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as stored in corpus.json


@dataclass(frozen=True)
class PlannedClip:
    """One clip of the corpus: who says what, for which split."""

    id: str
    split: str
    text: str  # normalised transcript, exactly what the voice is asked to say
    kind: Kind
    voice: Voice

    def row(self, duration: float) -> dict[str, Any]:
        """The manifest row of the corpus contract."""
        return {"id": self.id, "audio": f"clips/{self.id}.wav", "text": self.text, "engine": self.voice.engine,
                "voice": self.voice.name, "kind": self.kind, "duration": round(duration, 3)}


@dataclass(frozen=True)
class SpeechCorpusSummary:
    """What a corpus folder holds, and what this call had to do to make it."""

    out_dir: Path
    clips_per_split: dict[str, int]
    seconds_per_split: dict[str, float]
    clips_per_engine: dict[str, int]
    n_synthesized: int  # clips made by this call (0 when the corpus was already complete)
    n_reused: int  # valid clips found on disk and kept
    skipped_engines: tuple[str, ...]  # enabled but not installed on this machine

    @property
    def seconds_of_audio(self) -> float:
        return sum(self.seconds_per_split.values())


def text_split(text: str) -> str:
    """The seen split a text belongs to, from a hash of the text (stable across runs and machines)."""
    bucket = int(hashlib.sha1(text.encode()).hexdigest(), 16) % 10
    return next(split for split, buckets in TEXT_SPLIT_BUCKETS.items() if bucket in buckets)


def clip_id(voice: Voice, text: str) -> str:
    """Content id: the same voice saying the same text is the same clip, on any machine."""
    digest = hashlib.sha1(f"{voice.engine}|{voice.name}|{text}".encode()).hexdigest()[:12]
    return f"{voice.engine}-{digest}"


def trim_silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N,) audio cut to the frames within TRIM_DB of the loudest, with PAD_SECONDS of margin on each side.

    Where the engine left less margin than that (espeak starts speaking at
    sample 0) the margin is filled with zeros, so no engine is told apart by it.
    """
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    n_frames = len(audio) // frame
    if n_frames == 0:
        return audio
    energy = np.sqrt(np.mean(np.square(audio[: n_frames * frame].reshape(n_frames, frame)), axis=1))  # (n_frames,)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-TRIM_DB / 20))
    pad = round(PAD_SECONDS * sample_rate)
    start, end = loud[0] * frame - pad, (loud[-1] + 1) * frame + pad
    kept = audio[max(0, start) : min(len(audio), end)]
    return np.pad(kept, (max(0, -start), max(0, end - len(audio))))


def _number_text(rng: random.Random, split: str) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(DIGIT_WORDS)  # real recordings (FSDD) are single digits
    if roll < 0.6:
        return rng.choice(NUMBER_WORDS)
    while True:  # digit strings, e.g. "seven three nine", kept to their own split
        text = " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(2, 5)))
        if text_split(text) == split:
            return text


def _quotas(n: int, shares: dict[str, float]) -> list[str]:
    """n labels in proportion to shares (largest remainder), in a fixed order."""
    total = sum(shares.values())
    exact = {key: n * share / total for key, share in shares.items()}
    counts = {key: math.floor(value) for key, value in exact.items()}
    for key in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[key] += 1
    return [key for key in shares for _ in range(counts[key])]


def plan_speech_corpus(captions: Sequence[str], config: SpeechConfig, engines: Sequence[str]) -> list[PlannedClip]:
    """Every clip of the corpus, deterministic in (captions, config, engines); raises DataError when it cannot be met.

    ``engines`` are the enabled engines that are installed here. Seen splits use
    every catalogue voice outside ``config.heldout_family``; heldout uses only it.
    """
    pools: dict[str, list[str]] = {split: [] for split in SEEN_SPLITS}
    for text in sorted({normalize_text(c) for c in captions} - {""}):
        pools[text_split(text)].append(text)
    catalogue = build_catalogue(config.seed, tuple(engines))
    seen = [v for v in catalogue if v.family != config.heldout_family]
    heldout = [v for v in catalogue if v.family == config.heldout_family]
    if not seen:
        raise DataError(f"no seen voice is installed (engines here: {', '.join(engines) or 'none'})")
    if config.n_heldout and not heldout:
        raise DataError(f"the held-out family {config.heldout_family!r} needs an engine that is not installed here")
    by_engine = {e: [v for v in seen if v.engine == e] for e in engines}
    shares = {e: s for e, s in config.engine_shares if by_engine.get(e)}
    used: set[str] = set()
    plan: list[PlannedClip] = []
    for split in SPLITS:
        n = getattr(config, f"n_{split}")
        text_pool = pools["test" if split == "heldout" else split]
        n_number = round(n * config.number_share)
        if n > n_number and not text_pool:
            raise DataError(f"{split} needs {n - n_number} caption clips but no caption falls in its text split; "
                            f"give more distinct captions (got {len(captions)}) or raise number_share")
        rng = random.Random(f"mmbm-speech:{config.seed}:{split}")
        kinds: list[Kind] = ["number"] * n_number + ["caption"] * (n - n_number)
        voice_engines = _quotas(n, {"heldout": 1.0} if split == "heldout" else shares)
        rng.shuffle(kinds)
        rng.shuffle(voice_engines)
        for kind, engine in zip(kinds, voice_engines, strict=True):
            voices = heldout if split == "heldout" else by_engine[engine]
            for _ in range(1000):  # redraw on a repeat, so no clip is in two splits or twice in one
                voice = rng.choice(voices)
                text = _number_text(rng, "test" if split == "heldout" else split) if kind == "number" else rng.choice(text_pool)
                if clip_id(voice, text) not in used:
                    break
            else:
                raise DataError(f"cannot find {n} distinct (voice, text) pairs for {split}; ask for fewer clips")
            used.add(clip_id(voice, text))
            plan.append(PlannedClip(clip_id(voice, text), split, text, kind, voice))
    return plan


def _existing_duration(path: Path) -> float | None:
    """Seconds of a finished, valid clip at ``path`` (16 kHz mono PCM16), else None."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError):
        return None
    ok = info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0 and info.subtype == "PCM_16"
    return info.frames / SAMPLE_RATE if ok else None


def synthesize_clip(engine: TTSEngine, clip: PlannedClip, path: Path) -> float:
    """Speak one planned clip, resample to 16 kHz, trim, scale to PEAK and write it atomically; returns seconds."""
    audio, sample_rate = engine.synthesize(clip.text, clip.voice)
    audio = trim_silence(resample(audio, sample_rate, SAMPLE_RATE), SAMPLE_RATE)
    if is_silent(audio):
        raise DataError(f"{clip.voice.engine} voice {clip.voice.name} made silence for {clip.text!r}")
    save_audio(path, audio * (PEAK / float(np.abs(audio).max())), SAMPLE_RATE)
    return len(audio) / SAMPLE_RATE


def _prepare_folder(out_dir: Path) -> Path:
    clips = out_dir / "clips"
    try:
        clips.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=clips):
            pass
    except OSError as e:
        raise DataError(f"cannot write the speech corpus to {str(out_dir)!r}: {e}") from e
    for stale in clips.glob(".*.wav"):  # temporary files of a run that was stopped
        stale.unlink(missing_ok=True)
    return clips


def _usable_engines(config: SpeechConfig) -> tuple[dict[str, TTSEngine], tuple[str, ...]]:
    engines, skipped = {}, []
    for name in config.engines:
        engine = make_engine(name)
        if engine.available():
            engines[name] = engine
        else:
            skipped.append(name)
            logger.warning("TTS engine %s is not installed; skipping its voices (install: %s)", name, engine.install_hint)
    return engines, tuple(skipped)


def _summary(out_dir: Path, record: dict[str, Any], n_synthesized: int, n_reused: int) -> SpeechCorpusSummary:
    return SpeechCorpusSummary(out_dir, record["clips_per_split"], record["seconds_per_split"],
                               record["clips_per_engine"], n_synthesized, n_reused, tuple(record["skipped_engines"]))


def _synthesize_all(engines: dict[str, TTSEngine], todo: list[PlannedClip], clips: Path,
                    durations: dict[str, float], config: SpeechConfig, progress: bool) -> list[str]:
    """Make every clip in ``todo`` with ``config.n_workers`` threads; returns one message per failed clip."""
    failures: list[str] = []
    pool = ThreadPoolExecutor(max_workers=config.n_workers, thread_name_prefix="tts")
    bar = tqdm(total=len(todo), unit="clip", desc="speech", disable=not progress, dynamic_ncols=True)
    try:
        pending: dict[Future[float], PlannedClip] = {
            pool.submit(synthesize_clip, engines[c.voice.engine], c, clips / f"{c.id}.wav"): c for c in todo
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                clip = pending.pop(future)
                try:
                    durations[clip.id] = future.result()
                except MMBMError as e:
                    failures.append(f"{clip.id} ({clip.voice.engine} {clip.voice.name}, {clip.text!r}): {e}")
                    logger.warning("clip failed: %s", failures[-1])
                bar.update(1)
                bar.set_postfix(audio=f"{sum(durations.values()) / 60:.1f}min", failed=len(failures))
    finally:  # on Ctrl-C, drop the queue; finished clips are on disk for the next run
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return failures


def generate_speech_corpus(out_dir: str | os.PathLike, captions: Sequence[str], config: SpeechConfig = SpeechConfig(),
                           progress: bool = True) -> SpeechCorpusSummary:
    """Write the speech corpus to ``out_dir``, resuming what is there; returns what it holds.

    Errors (DataError/ConfigError) for an unwritable folder, missing engines for
    the held-out family or too few captions come before any synthesis. If some
    clips fail, the good ones stay on disk, no manifest or corpus.json is
    written, and DataError lists the failures; re-running retries only those.
    """
    out = Path(out_dir)
    engines, skipped = _usable_engines(config)
    plan = plan_speech_corpus(captions, config, tuple(engines))
    clips = _prepare_folder(out)
    plan_hash = hashlib.sha256(json.dumps([(c.id, c.split, c.text, c.kind) for c in plan]).encode()).hexdigest()
    record_path = out / "corpus.json"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if record.get("plan_sha256") == plan_hash and all((clips / f"{c.id}.wav").is_file() for c in plan):
            logger.info("speech corpus in %s is complete and matches the config; nothing to do", out)
            return _summary(out, record, 0, len(plan))
        record_path.unlink()  # from here on the folder is incomplete until corpus.json is written again
    durations: dict[str, float] = {}
    for clip in plan:
        duration = _existing_duration(clips / f"{clip.id}.wav")
        if duration is not None:
            durations[clip.id] = duration
    todo = [c for c in plan if c.id not in durations]
    n_reused = len(durations)
    logger.info("speech corpus: %d clips planned, %d on disk, %d to make", len(plan), n_reused, len(todo))
    failures = _synthesize_all(engines, todo, clips, durations, config, progress)
    if failures:
        raise DataError(f"{len(failures)} of {len(todo)} clips failed; re-run to retry them. First: {failures[0]}")
    for split in SPLITS:
        rows = [json.dumps(c.row(durations[c.id])) + "\n" for c in plan if c.split == split]
        write_text_atomic(out / f"{split}.jsonl", "".join(rows))
    voice_counts = Counter(f"{c.voice.engine}:{c.voice.name}" for c in plan)
    record = {
        "format": CORPUS_FORMAT,
        "config": config.to_dict(),
        "plan_sha256": plan_hash,
        "heldout_family": config.heldout_family,
        "engines_used": sorted({c.voice.engine for c in plan}),
        "skipped_engines": list(skipped),
        "clips_per_split": {s: sum(c.split == s for c in plan) for s in SPLITS},
        "seconds_per_split": {s: round(sum(durations[c.id] for c in plan if c.split == s), 2) for s in SPLITS},
        "clips_per_engine": dict(sorted(Counter(c.voice.engine for c in plan).items())),
        "clips_per_voice": dict(sorted(voice_counts.items())),
        "seconds_of_audio": round(sum(durations.values()), 2),
    }
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")  # last: its presence means complete
    return _summary(out, record, len(todo), n_reused)


def read_captions(path: str | os.PathLike) -> list[str]:
    """Captions to speak: a ShapesWorld image corpus folder (train.jsonl only) or a text file, one a line.

    Only the image corpus' training captions are spoken, so the text side never
    hears a colour-shape pair held out for the compositional test.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "corpus.json").is_file():
            raise DataError(f"{str(path)!r} is not a complete image corpus: corpus.json is missing")
        lines = (path / "train.jsonl").read_text(encoding="utf-8").splitlines()
        try:
            return [caption for line in lines if line.strip() for caption in json.loads(line)["captions"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{str(path / 'train.jsonl')!r} has a row without a captions list: {e}") from e
    if path.is_file():
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise DataError(f"no captions at {str(path)!r}: give an image corpus folder or a text file")


def add_speech_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m mmbm.shapesworld speech``; they map onto SpeechConfig fields."""
    default = SpeechConfig()
    parser.add_argument("--captions", required=True, help="image corpus folder (e.g. data/shapes) or a text file")
    parser.add_argument("--out", default="data/speech", help="corpus folder (default: data/speech)")
    for split in SPLITS:
        parser.add_argument(f"--n-{split}", type=int, default=getattr(default, f"n_{split}"))
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--engines", default=",".join(default.engines), help="comma-separated TTS engines")
    parser.add_argument("--heldout-family", default=default.heldout_family, choices=FAMILIES)
    parser.add_argument("--number-share", type=float, default=default.number_share)
    parser.add_argument("--workers", type=int, default=default.n_workers)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_speech_command(args: argparse.Namespace) -> SpeechCorpusSummary:
    """Build the config from parsed flags (errors before any work), then generate the corpus."""
    config = SpeechConfig(
        seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, n_heldout=args.n_heldout,
        engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
        heldout_family=args.heldout_family, number_share=args.number_share, n_workers=args.workers,
    )
    return generate_speech_corpus(args.out, read_captions(args.captions), config, progress=not args.no_progress)

