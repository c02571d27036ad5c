"""Generation speed of each TTS engine: seconds of audio made per second of wall time.

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.tts_speed [--clips 24] [--workers 1 2]

For every installed engine it speaks the same mix of captions and number phrases
with voices drawn from the seed-0 catalogue, one clip at a time after one warm-up
clip (which loads the neural models), and reports the engine alone and the full
clip path of the corpus (engine + resample to 16 kHz + trim + PCM16 write).
Then it builds a small mixed corpus with each --workers count to show what the
thread pool buys on this machine. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mmbm.shapesworld.speech import PlannedClip, SpeechConfig, clip_id, generate_speech_corpus, synthesize_clip
from mmbm.shapesworld.tts import ENGINE_NAMES, build_catalogue, make_engine

TEXTS = (
    "a small red circle to the left of a blue square",
    "two green triangles above a yellow star",
    "seven three nine",
    "four",
    "a purple heart below an orange hexagon on a striped background",
    "one eight two zero five",
    "sixteen",
    "there is a large cyan cross",
)


def bench_engine(name: str, n_clips: int, folder: Path) -> None:
    engine = make_engine(name)
    if not engine.available():
        print(f"{name:9s} not installed ({engine.install_hint})")
        return
    voices = [v for v in build_catalogue(0, (name,))]
    engine.synthesize("warm up", voices[0])  # loads piper/kokoro models once
    seconds = wall = clip_seconds = clip_wall = 0.0
    for i in range(n_clips):
        voice, text = voices[(i * 7) % len(voices)], TEXTS[i % len(TEXTS)]
        start = time.perf_counter()
        audio, sample_rate = engine.synthesize(text, voice)
        wall += time.perf_counter() - start
        seconds += len(audio) / sample_rate
        clip = PlannedClip(clip_id(voice, text), "train", text, "caption", voice)
        start = time.perf_counter()
        clip_seconds += synthesize_clip(engine, clip, folder / f"{clip.id}.wav")
        clip_wall += time.perf_counter() - start
    print(f"{name:9s} engine {seconds / wall:7.1f}x real time ({seconds:.1f} s audio in {wall:.2f} s); "
          f"full clip path {clip_seconds / clip_wall:7.1f}x ({n_clips} clips)")


def bench_corpus(workers: int, folder: Path) -> None:
    captions = [f"a {c} {s} left of a {c2} star" for c in ("red", "blue", "green", "grey")
                for s in ("circle", "square", "triangle", "heart", "cross") for c2 in ("purple", "orange", "white")]
    config = SpeechConfig(n_train=60, n_val=10, n_test=10, n_heldout=10, n_workers=workers)
    start = time.perf_counter()
    summary = generate_speech_corpus(folder, captions, config, progress=False)
    wall = time.perf_counter() - start
    print(f"corpus    {workers} worker(s): {summary.n_synthesized} clips, {summary.seconds_of_audio:.1f} s audio "
          f"in {wall:.1f} s = {summary.seconds_of_audio / wall:.1f}x real time, engines {summary.clips_per_engine}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="clips per engine")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="thread counts for the corpus run")
    parser.add_argument("--engines", default=",".join(ENGINE_NAMES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmbm-tts-bench-") as folder:
        for name in args.engines.split(","):
            bench_engine(name, args.clips, Path(folder))
        for workers in args.workers:
            bench_corpus(workers, Path(folder) / f"corpus-{workers}")


if __name__ == "__main__":
    main()
