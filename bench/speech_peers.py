"""MMBM's speech head beside pocketsphinx 5 on exactly the clips ``mmbm.evaluate`` scores.

    python -m bench.speech_peers --model models/mmbm-tiny --speech data/speech \\
        --real-speech ../shared/data/fsdd-dev/manifest.jsonl [--limit N] [--out runs/bench/speech.json]

Sets: seen voices (test.jsonl), the held-out voice (heldout.jsonl), that voice with
white noise at 10 dB SNR (the evaluator's noise: ``add_noise`` seeded by
(noise seed, clip index), so both systems hear the very same samples), and every
real-speech manifest (8 kHz recordings are resampled to 16 kHz by
``mmbm.audio.load_audio``, as MMBM reads them). Systems: MMBM greedy and
beam+lexicon (the evaluator's decoders and its lexicon, ``Pipeline.lexicon``),
pocketsphinx with its general English model (acoustic model, 3-gram LM, CMU
dictionary as shipped), and pocketsphinx restricted to a JSGF grammar of the
ShapesWorld language (captions plus the number phrases of the speech corpus) —
its strongest fair form. Clips are taken one at a time and every system
transcribes each clip in turn, in one process, so a busy machine slows all of
them alike; RTF is wall time from the audio source (file or array) to text over
audio seconds, median over the clips. Owns the grammar and the comparison; the
scoring is mmbm.evaluate.metrics through mmbm.evaluate.measure, as in mmbm.evaluate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pocketsphinx import Decoder
from tqdm import tqdm

from mmbm.audio import AudioSource, load_audio
from mmbm.config import AudioConfig
from mmbm.data.adapters import AudioTextRecord, load_audio_manifest
from mmbm.data.augment import add_noise
from mmbm.decode.ctc import CTCDecodingOptions, Lexicon
from mmbm.errors import AudioError, DataError
from mmbm.evaluate.measure import speech_metrics
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import (
    BACKGROUND_WORDS,
    COUNT_WORDS,
    FRAMES,
    GENERIC_NOUN,
    GENERIC_PLURAL,
    PLURALS,
    RELATION_PHRASES,
    SINGULARS,
    SIZE_WORDS,
)
from mmbm.shapesworld.scene import COLOURS, SHAPES
from mmbm.shapesworld.words import DIGIT_WORDS, NUMBER_WORDS
from mmbm.tokenizer import normalize_text

logger = logging.getLogger(__name__)

PS_GENERAL, PS_GRAMMAR = "pocketsphinx (general English)", "pocketsphinx (ShapesWorld grammar)"
MMBM_GREEDY, MMBM_LEXICON = "MMBM greedy", "MMBM beam+lexicon"
SYSTEMS = (MMBM_GREEDY, MMBM_LEXICON, PS_GENERAL, PS_GRAMMAR)
MAX_DIGITS = 5  # the corpus speaks digit strings of 2..5 digits (mmbm.shapesworld.speech)


def _alternatives(words: Sequence[str]) -> str:
    return " | ".join(sorted(set(words)))


def shapesworld_jsgf() -> str:
    """A JSGF grammar of every caption mmbm.shapesworld.captions can write and every spoken number of the corpus.

    It follows the caption grammar (frame, clauses joined by "and", mentions with
    count/size/colour/noun, relations, one optional background phrase) and adds
    count-noun agreement ("a" and "one" take the singular): tighter than the word
    list alone, so it helps pocketsphinx as much as the language allows.
    """
    singular_counts = [w for w, n in COUNT_WORDS.items() if n == 1]
    plural_counts = [w for w, n in COUNT_WORDS.items() if n > 1]
    relations = [phrase for phrases in RELATION_PHRASES.values() for phrase in phrases]
    rules = {
        "utterance": "<caption> | <number>",
        "caption": "<background> [<frame>] <clauses> | [<frame>] <clauses> [<background>]",
        "clauses": "<clause> ([and] <clause>)*",
        "clause": "<mention> (<relation> <mention>)*",
        "mention": "(<one> [<size>] [<colour>] <singular>) | (<many> [<size>] [<colour>] <plural>)",
        "one": _alternatives(singular_counts),
        "many": _alternatives(plural_counts),
        "size": _alternatives(list(SIZE_WORDS)),
        "colour": _alternatives(COLOURS),
        "singular": _alternatives([*SHAPES, GENERIC_NOUN]),
        "plural": _alternatives([*PLURALS.values(), GENERIC_PLURAL]),
        "relation": _alternatives(relations),
        "frame": _alternatives(FRAMES),
        "background": f"on a ({_alternatives(list(BACKGROUND_WORDS))}) background",
        "number": "<word_number> | <digit> <digit>" + "".join(" [<digit>" for _ in range(MAX_DIGITS - 2))
        + "]" * (MAX_DIGITS - 2),
        "word_number": _alternatives(NUMBER_WORDS),
        "digit": _alternatives(DIGIT_WORDS),
    }
    lines = ["#JSGF V1.0;", "grammar shapesworld;"]
    lines += [f"{'public ' if name == 'utterance' else ''}<{name}> = {body};" for name, body in rules.items()]
    return "\n".join(lines) + "\n"


class PocketSphinx:
    """One pocketsphinx 5 decoder (16 kHz, shipped en-us model), optionally held to a JSGF grammar.

    Words of the ShapesWorld language missing from the shipped dictionary (only
    "hexagons") are added to both decoders, spelled as their singular plus the
    plural ending; any other missing word is an error.
    """

    def __init__(self, grammar: str | None = None) -> None:
        self.decoder = Decoder(samprate=16_000)
        self.added_words = _add_missing_words(self.decoder, _grammar_words(shapesworld_jsgf()))
        if grammar is not None:
            self.decoder.add_jsgf_string("shapesworld", grammar)
            self.decoder.activate_search("shapesworld")

    def transcribe(self, wave: np.ndarray) -> str:
        """(N,) float32 in [-1, 1] at 16 kHz -> normalised words ("" when nothing was recognised)."""
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return normalize_text(hypothesis.hypstr) if hypothesis is not None else ""


def _grammar_words(grammar: str) -> set[str]:
    body = " ".join(line.split("=", 1)[1] for line in grammar.splitlines() if "=" in line)
    for symbol in "()[]|*;":
        body = body.replace(symbol, " ")
    return {w for w in body.split() if not w.startswith("<")}


PLURAL_ENDINGS = {"S": "AH Z", "Z": "AH Z", "SH": "AH Z", "ZH": "AH Z", "CH": "AH Z", "JH": "AH Z",
                  "P": "S", "T": "S", "K": "S", "F": "S", "TH": "S"}  # English plural -s after the last phone


def _add_missing_words(decoder: Decoder, words: set[str]) -> dict[str, str]:
    """Add plurals of dictionary words that the dictionary lacks; DataError for any other missing word."""
    added, missing = {}, []
    for word in sorted(words):
        if decoder.lookup_word(word) is not None:
            continue
        singular = SINGULARS.get(word)
        phones = decoder.lookup_word(singular) if singular else None
        if phones is None:
            missing.append(word)
            continue
        added[word] = f"{phones} {PLURAL_ENDINGS.get(phones.split()[-1], 'Z')}"
        decoder.add_word(word, added[word], True)
    if missing:
        raise DataError(f"pocketsphinx's dictionary lacks these ShapesWorld words: {', '.join(missing)}")
    return added


def noisy_copy(wave: np.ndarray, snr_db: float, seed: int, index: int) -> np.ndarray:
    """Clip ``index`` of a set with white noise at ``snr_db``, seeded exactly as mmbm.evaluate seeds it."""
    return add_noise(wave, snr_db, "white", np.random.default_rng([seed, index]))


@dataclasses.dataclass(frozen=True)
class SpeechSet:
    name: str
    manifest: Path
    noisy: bool  # white noise at the comparison's SNR
    per_speaker: bool  # real recordings: rates per speaker too


def speech_sets(speech: Path, real_speech: Sequence[Path], snr_db: float) -> list[SpeechSet]:
    """The sets mmbm.evaluate scores, named as it names them."""
    sets = [SpeechSet("seen", speech / "test.jsonl", False, False),
            SpeechSet("heldout", speech / "heldout.jsonl", False, False),
            SpeechSet(f"heldout_noisy_{snr_db:g}db", speech / "heldout.jsonl", True, False)]
    for path in real_speech:
        name = path.parent.name or path.stem
        sets.append(SpeechSet(name if name not in {s.name for s in sets} else f"{name}_{len(sets)}", path, False, True))
    return sets


def _timed(call: Callable[[], str]) -> tuple[str, float, bool]:
    start = time.perf_counter()
    try:
        text, refused = call(), False
    except AudioError as e:
        logger.warning("refused: %s", e)
        text, refused = "", True
    return text, time.perf_counter() - start, refused


def compare_speech(pipeline: Pipeline, sets: Sequence[SpeechSet], lexicon: Lexicon, limit: int | None = None,
                   snr_db: float = 10.0, noise_seed: int = 0, beam_size: int = 8,
                   progress: bool = True) -> dict[str, Any]:
    """Every system on every clip of every set; per set and system: error rates, RTF median/p90, refusals."""
    sphinx = {PS_GENERAL: PocketSphinx(), PS_GRAMMAR: PocketSphinx(shapesworld_jsgf())}
    audio: AudioConfig = pipeline.config.audio
    greedy, beam = CTCDecodingOptions("greedy"), CTCDecodingOptions("beam", beam_size=beam_size)
    results: dict[str, Any] = {}
    for speech_set in sets:
        records: list[AudioTextRecord] = load_audio_manifest(speech_set.manifest, missing="error")
        records = records if limit is None else records[:limit]
        hypotheses: dict[str, list[str]] = {s: [] for s in SYSTEMS}
        rtfs: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        refused = dict.fromkeys(SYSTEMS, 0)
        for i, record in enumerate(tqdm(records, desc=f"speech peers {speech_set.name}", disable=not progress)):
            source: AudioSource = record.audio_path
            if speech_set.noisy:
                source = (audio.sample_rate, noisy_copy(pipeline.load_audio(record.audio_path), snr_db, noise_seed, i))
            calls: dict[str, Callable[[], str]] = {
                MMBM_GREEDY: lambda s=source: pipeline.transcribe(s, greedy).transcript.text,
                MMBM_LEXICON: lambda s=source: pipeline.transcribe(s, beam, lexicon).transcript.text,
                PS_GENERAL: lambda s=source: sphinx[PS_GENERAL].transcribe(load_audio(s, audio)),
                PS_GRAMMAR: lambda s=source: sphinx[PS_GRAMMAR].transcribe(load_audio(s, audio)),
            }
            try:
                seconds_of_audio = len(pipeline.load_audio(source)) / audio.sample_rate
            except AudioError:
                seconds_of_audio = None
            for system, call in calls.items():
                text, seconds, was_refused = _timed(call)
                hypotheses[system].append(text)
                refused[system] += was_refused
                if seconds_of_audio and not was_refused:
                    rtfs[system].append(seconds / seconds_of_audio)
        speakers = [r.speaker if speech_set.per_speaker else None for r in records]
        references = [r.text for r in records]
        results[speech_set.name] = {
            "manifest": str(speech_set.manifest), "n_clips": len(records), "noisy": speech_set.noisy,
            "systems": {system: {**dataclasses.asdict(speech_metrics(references, hypotheses[system], speakers,
                                                                     refused[system])),
                                 "rtf_median": statistics.median(rtfs[system]) if rtfs[system] else None,
                                 "rtf_p90": float(np.percentile(rtfs[system], 90)) if rtfs[system] else None,
                                 "examples": [[ref, hyp] for ref, hyp in zip(references[:3], hypotheses[system][:3],
                                                                             strict=True)]}
                        for system in SYSTEMS}}
    return results


def run_speech_peers(model_dir: Path, speech: Path, real_speech: Sequence[Path], limit: int | None = None,
                     snr_db: float = 10.0, noise_seed: int = 0, beam_size: int = 8, threads: int = 1,
                     progress: bool = True) -> dict[str, Any]:
    """Load the model, take the evaluator's lexicon (``Pipeline.lexicon``) and compare on every set."""
    torch.set_num_threads(threads)
    pipeline = Pipeline.load(model_dir, device="cpu")
    lexicon = pipeline.lexicon
    sets = speech_sets(speech, real_speech, snr_db)
    return {"model": str(model_dir), "identity": pipeline.identity, "threads": threads, "snr_db": snr_db,
            "noise_seed": noise_seed, "beam_size": beam_size, "limit": limit, "lexicon_words": lexicon.n_words,
            "sets": compare_speech(pipeline, sets, lexicon, limit, snr_db, noise_seed, beam_size, progress)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speech_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mmbm-tiny"))
    parser.add_argument("--speech", type=Path, default=Path("data/speech"))
    parser.add_argument("--real-speech", type=Path, nargs="*", default=[])
    parser.add_argument("--limit", type=int, default=None, help="at most N clips per set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pocketsphinx uses one core)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/speech.json"))
    parser.add_argument("--print-grammar", action="store_true", help="print the JSGF grammar and exit")
    args = parser.parse_args(argv)
    if args.print_grammar:
        print(shapesworld_jsgf(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_speech_peers(args.model, args.speech, args.real_speech, args.limit, threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, entry in result["sets"].items():
        for system, m in entry["systems"].items():
            print(f"{name:28s} {system:36s} WER {m['rates']['wer']:.3f} CER {m['rates']['cer']:.3f} "
                  f"RTF {m['rtf_median']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
