"""The speech corpus: engines speak 16 kHz clips, voices and splits are deterministic, the held-out
voice never leaks into training, bad input is refused before any work, and generation resumes
and caches."""

from __future__ import annotations

import argparse
import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmbm.errors import ConfigError, DataError
from mmbm.shapesworld import tts
from mmbm.shapesworld.speech import (
    PAD_SECONDS,
    PEAK,
    SEEN_SPLITS,
    SPLITS,
    PlannedClip,
    SpeechConfig,
    add_speech_arguments,
    clip_id,
    generate_speech_corpus,
    plan_speech_corpus,
    read_captions,
    run_speech_command,
    synthesize_clip,
    text_split,
    trim_silence,
)
from mmbm.shapesworld.tts import ENGINE_NAMES, Voice, build_catalogue, make_engine, parse_voice
from mmbm.shapesworld.words import NUMBER_WORDS
from mmbm.tokenizer import normalize_text

SR = 16_000
ROW_FIELDS = {"id", "audio", "text", "engine", "voice", "kind", "duration"}
CAPTIONS = [
    f"A {colour} {shape} left of the {other} star."
    for colour in ("red", "blue", "green", "grey", "pink")
    for shape in ("circle", "square", "triangle", "heart")
    for other in ("white", "black", "orange")
]  # 60 captions, normalised on the way in (capital, full stop)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def needs(engine: str) -> None:
    found = make_engine(engine)
    if not found.available():
        pytest.skip(f"TTS engine {engine} is not installed ({found.install_hint})")


def small_config(**changes: object) -> SpeechConfig:
    fields = dict(seed=5, n_train=6, n_val=2, n_test=2, n_heldout=2, engines=("espeak", "flite"),
                  heldout_family="awb", n_workers=2)
    return SpeechConfig(**{**fields, **changes})


def test_catalogue_is_deterministic_and_names_round_trip() -> None:
    catalogue = build_catalogue(3)
    assert catalogue == build_catalogue(3)
    assert catalogue != build_catalogue(4)
    assert {v.engine for v in catalogue} == set(ENGINE_NAMES)
    assert len({v.name for v in catalogue if v.engine == "espeak"}) >= 150
    assert {v.speaker for v in catalogue if v.engine == "flite"} == {"kal16", "awb", "rms", "slt"}
    assert all(parse_voice(v.engine, v.name) == v for v in catalogue)
    # one engine's voices do not depend on which other engines are enabled
    assert build_catalogue(3, ("piper",)) == tuple(v for v in catalogue if v.engine == "piper")
    # the same person behind two engines is one family, so holding it out holds out both
    assert Voice("flite", "kal16").family == Voice("festival", "kal_diphone").family == "kal"


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: Voice("flite", "bob"), ["flite voice 'bob'", "awb"]),
        (lambda: Voice("sapi", "david"), ["unknown TTS engine 'sapi'"]),
        (lambda: Voice("espeak", "en-us", "robot9"), ["espeak variant 'robot9'"]),
        (lambda: Voice("kokoro", "blend", blend=(("af_heart", 1.0),)), ["kokoro style 'af_heart'"]),
        (lambda: parse_voice("espeak", "en-us+m3@q7"), ["voice parameter 'q7'"]),
        (lambda: make_engine("sapi"), ["unknown TTS engine 'sapi'"]),
        (lambda: SpeechConfig(engines=("espeak", "sapi")), ["engines:", "'sapi'"]),
        (lambda: SpeechConfig(heldout_family="alice"), ["heldout_family:", "'alice'"]),
        (lambda: SpeechConfig(engines=("espeak", "flite")), ["heldout_family:", "'ked'"]),
        (lambda: SpeechConfig(n_train=-1), ["n_train:"]),
        (lambda: SpeechConfig(number_share=1.5), ["number_share:"]),
        (lambda: SpeechConfig(n_workers=0), ["n_workers:"]),
        (lambda: SpeechConfig(engine_shares=(("espeak", 1.0),)), ["engine_shares:", "flite"]),
    ],
)
def test_unknown_names_and_bad_values_are_refused(build, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    for word in words:
        assert word in str(caught.value)


def test_plan_keeps_the_heldout_family_and_texts_apart() -> None:
    config = SpeechConfig(seed=1, n_train=300, n_val=40, n_test=40, n_heldout=40, heldout_family="ked")
    engines = ("espeak", "flite", "festival", "piper", "kokoro")
    plan = plan_speech_corpus(CAPTIONS, config, engines)
    assert plan == plan_speech_corpus(list(reversed(CAPTIONS)), config, engines)  # order of captions is irrelevant
    by_split = {s: [c for c in plan if c.split == s] for s in SPLITS}
    assert {s: len(rows) for s, rows in by_split.items()} == {"train": 300, "val": 40, "test": 40, "heldout": 40}
    assert {c.voice.family for c in by_split["heldout"]} == {"ked"}
    assert all(c.voice.family != "ked" for s in SEEN_SPLITS for c in by_split[s])
    assert len({c.id for c in plan}) == len(plan)  # no clip in two splits
    # sentences (captions, digit strings) belong to one split; only the 21 number words are shared
    texts = {s: {c.text for c in by_split[s] if c.text not in NUMBER_WORDS} for s in SPLITS}
    assert not texts["train"] & (texts["val"] | texts["test"] | texts["heldout"])
    assert all(text_split(t) == "test" for t in texts["heldout"])  # the held-out voice reads test sentences
    for clip in plan:
        assert clip.text == normalize_text(clip.text) and set(clip.text) <= set(string.ascii_lowercase + " ")
        if clip.kind == "number":
            assert clip.text in NUMBER_WORDS or (2 <= len(clip.text.split()) <= 5 and set(clip.text.split()) <= set(NUMBER_WORDS[:10]))
    # shares: espeak .35, flite .2, festival .1 (of which ked is held out), piper .25, kokoro .1
    train_engines = [c.voice.engine for c in by_split["train"]]
    assert train_engines.count("espeak") == 105 and train_engines.count("kokoro") == 30
    assert 0.3 < sum(c.kind == "number" for c in plan) / len(plan) < 0.5


def test_plan_refuses_what_it_cannot_make() -> None:
    with pytest.raises(DataError, match="no caption falls in its text split"):
        plan_speech_corpus(CAPTIONS[:1], small_config(), ("espeak", "flite"))
    with pytest.raises(DataError, match="held-out family 'awb'"):
        plan_speech_corpus(CAPTIONS, small_config(), ("espeak",))


def test_trim_silence_keeps_a_margin_and_pads_when_there_is_none() -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.3 * SR)) / SR).astype(np.float32)
    quiet = np.zeros(int(0.5 * SR), np.float32)
    trimmed = trim_silence(np.concatenate([quiet, tone, quiet]), SR)
    assert abs(len(trimmed) / SR - (0.3 + 2 * PAD_SECONDS)) < 0.02
    assert np.abs(trimmed[: int(0.9 * PAD_SECONDS * SR)]).max() == 0.0  # the margin is the original silence
    padded = trim_silence(tone, SR)  # speech from the first to the last sample, as espeak makes it
    assert len(padded) == len(tone) + 2 * int(PAD_SECONDS * SR)
    np.testing.assert_array_equal(padded[int(PAD_SECONDS * SR) : -int(PAD_SECONDS * SR)], tone)


@pytest.mark.tts
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_each_engine_speaks_a_16k_mono_clip(engine_name: str, tmp_path: Path) -> None:
    needs(engine_name)
    engine = make_engine(engine_name)
    voice = build_catalogue(0, (engine_name,))[0]
    clip = PlannedClip(clip_id(voice, "seven three nine"), "train", "seven three nine", "number", voice)
    seconds = synthesize_clip(engine, clip, tmp_path / "clip.wav")
    audio, sample_rate = soundfile.read(tmp_path / "clip.wav", dtype="float32")
    info = soundfile.info(str(tmp_path / "clip.wav"))
    assert (sample_rate, audio.ndim, info.subtype) == (SR, 1, "PCM_16")
    assert 0.6 < seconds < 4.0 and abs(len(audio) / SR - seconds) < 1e-3
    assert abs(np.abs(audio).max() - PEAK) < 1e-3
    assert np.sqrt(np.mean(audio**2)) > 0.02  # speech, not silence
    with pytest.raises(ConfigError, match="cannot speak with a"):
        engine.synthesize("four", Voice("flite", "awb") if engine_name != "flite" else Voice("espeak", "en-us"))


@pytest.mark.tts
def test_small_corpus_generates_caches_and_resumes(tmp_path: Path) -> None:
    needs("espeak")
    needs("flite")
    out, config = tmp_path / "speech", small_config()
    first = generate_speech_corpus(out, CAPTIONS, config, progress=False)
    assert (first.n_synthesized, first.n_reused) == (12, 0)
    rows = {s: read_rows(out / f"{s}.jsonl") for s in SPLITS}
    assert {s: len(r) for s, r in rows.items()} == {"train": 6, "val": 2, "test": 2, "heldout": 2}
    for row in (r for split_rows in rows.values() for r in split_rows):
        assert set(row) == ROW_FIELDS and row["audio"] == f"clips/{row['id']}.wav"
        assert abs(soundfile.info(str(out / row["audio"])).duration - row["duration"]) < 1e-3
        assert parse_voice(row["engine"], row["voice"]).engine == row["engine"]
    assert {parse_voice(r["engine"], r["voice"]).family for r in rows["heldout"]} == {"awb"}
    assert all(parse_voice(r["engine"], r["voice"]).family != "awb" for s in SEEN_SPLITS for r in rows[s])
    record = json.loads((out / "corpus.json").read_text())
    assert record["clips_per_split"] == first.clips_per_split and sum(record["clips_per_voice"].values()) == 12
    assert record["seconds_of_audio"] == pytest.approx(sum(r["duration"] for rs in rows.values() for r in rs), abs=0.05)

    clips = sorted((out / "clips").glob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in [*clips, out / "corpus.json", out / "train.jsonl"]}
    again = generate_speech_corpus(out, CAPTIONS, config, progress=False)
    assert again.n_synthesized == 0 and again.clips_per_split == first.clips_per_split
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten, not even the record

    (out / "corpus.json").unlink()
    clips[0].unlink()
    clips[1].write_bytes(b"RIFF but truncated")  # a corrupt clip is made again too
    (out / "clips" / ".stale.wav.tmp.wav").write_bytes(b"")  # temp file of a stopped run
    resumed = generate_speech_corpus(out, CAPTIONS, config, progress=False)
    assert (resumed.n_synthesized, resumed.n_reused) == (2, 10)
    assert {p: p.stat().st_mtime_ns for p in clips[2:]} == {p: stamps[p] for p in clips[2:]}
    assert soundfile.info(str(clips[1])).samplerate == SR
    assert not list((out / "clips").glob(".*")) and (out / "corpus.json").is_file()


@pytest.mark.tts
def test_failed_clips_leave_the_corpus_incomplete_until_rerun(tmp_path: Path, monkeypatch) -> None:
    needs("espeak")
    needs("flite")

    def broken(self, text: str, voice: Voice):
        raise DataError("flite is broken in this test")

    out, config = tmp_path / "speech", small_config()
    with monkeypatch.context() as patch:
        patch.setattr(tts.FliteEngine, "_speak", broken)
        with pytest.raises(DataError, match="clips failed; re-run to retry them"):
            generate_speech_corpus(out, CAPTIONS, config, progress=False)
    assert not (out / "corpus.json").exists() and not (out / "train.jsonl").exists()
    n_flite = sum(c.voice.engine == "flite" for c in plan_speech_corpus(CAPTIONS, config, ("espeak", "flite")))
    assert len(list((out / "clips").glob("*.wav"))) == 12 - n_flite
    finished = generate_speech_corpus(out, CAPTIONS, config, progress=False)
    assert (finished.n_synthesized, finished.n_reused) == (n_flite, 12 - n_flite)


@pytest.mark.tts
def test_missing_engine_is_skipped_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    needs("espeak")
    monkeypatch.setattr(tts.FliteEngine, "available", lambda self: False)
    with pytest.raises(DataError, match="held-out family 'awb' needs an engine"):
        generate_speech_corpus(tmp_path / "a", CAPTIONS, small_config(), progress=False)
    assert not (tmp_path / "a").exists()  # refused before any folder or clip was made
    summary = generate_speech_corpus(tmp_path / "b", CAPTIONS, small_config(n_heldout=0), progress=False)
    assert summary.skipped_engines == ("flite",) and summary.clips_per_engine == {"espeak": 10}
    assert "TTS engine flite is not installed" in caplog.text


@pytest.mark.tts
def test_unwritable_folder_and_bad_captions_are_refused_before_work(tmp_path: Path) -> None:
    needs("espeak")
    needs("flite")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write the speech corpus"):
        generate_speech_corpus(blocker / "speech", CAPTIONS, small_config(), progress=False)
    (tmp_path / "shapes").mkdir()
    with pytest.raises(DataError, match="corpus.json is missing"):
        read_captions(tmp_path / "shapes")
    with pytest.raises(DataError, match="no captions at"):
        read_captions(tmp_path / "nothing.txt")


@pytest.mark.tts
def test_cli_flags_build_the_corpus(tmp_path: Path) -> None:
    needs("espeak")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    parser = argparse.ArgumentParser()
    add_speech_arguments(parser)
    flags = ["--captions", str(captions), "--out", str(tmp_path / "speech"), "--engines", "espeak", "--n-train", "3",
             "--n-val", "1", "--n-test", "1", "--n-heldout", "0", "--no-progress"]
    summary = run_speech_command(parser.parse_args(flags))
    assert summary.clips_per_split == {"train": 3, "val": 1, "test": 1, "heldout": 0}
    assert os.path.getsize(tmp_path / "speech" / "heldout.jsonl") == 0
    with pytest.raises(ConfigError, match="unknown TTS engine 'sapi'"):
        run_speech_command(parser.parse_args([*flags, "--engines", "espeak,sapi"]))
