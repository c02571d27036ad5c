"""The demo's speed on this machine: cold start to serving, caption and search latency, transcription RTF.

    .venv/bin/python bench/app_latency.py [--model models/mmbm-tiny] [--index models/mmbm-tiny/gallery] [--repeats 21]

Measures what docs/demo.md reports, each the way a user meets it:
- cold start: wall time from spawning ``python app.py`` (a fresh interpreter: imports,
  model load, gallery copy, server start) until ``GET /`` answers 200;
- caption: median server-side time of the /caption handler (``app.Demo.caption``:
  read the image, greedy decode with per-word attention, draw the heatmaps), on
  rendered test-split scenes; plus the median round trip through gradio_client over
  local HTTP (upload, queue, handler, download of the heatmaps);
- search: median server-side time of the /search handler (embed the query, search the
  gallery, decode the thumbnails) on the demo gallery, and of ``Pipeline.search_text``
  alone (embed + search);
- transcription: median real-time factor of the /transcribe handler's pipeline call
  (beam search over ShapesWorld words) on captions spoken by flite.
Prints a markdown table and writes it as JSON with ``--json PATH``. Run it on an
otherwise idle machine; every figure names its repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app.py lives at the top level, beside mmbm/

import app  # noqa: E402
from mmbm.audio import save_audio  # noqa: E402
from mmbm.shapesworld.captions import canonical_caption  # noqa: E402
from mmbm.shapesworld.corpus import make_item  # noqa: E402
from mmbm.shapesworld.shapes import ShapesConfig, render_scene  # noqa: E402

START_TIMEOUT_S = 120.0
N_SCENES = 7  # distinct scenes and queries cycled through
SPOKEN = (
    "there is a small red circle",
    "two blue squares above a yellow star",
    "seven three nine",
    "a large green triangle left of a white heart",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cold_start_seconds(model: Path, index: Path | None, port: int) -> float:
    """Seconds from spawning app.py to its first 200 on GET /."""
    command = [sys.executable, str(REPO / "app.py"), "--model", str(model), "--port", str(port)]
    command += ["--index", str(index)] if index is not None else ["--empty-gallery"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < START_TIMEOUT_S:
            if process.poll() is not None:
                raise SystemExit(f"app.py exited with {process.returncode}: {process.stderr.read()[-500:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"app.py did not serve within {START_TIMEOUT_S:.0f} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def median_ms(run: Callable[[int], object], repeats: int) -> float:
    run(0)  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def scenes(directory: Path) -> tuple[list[Path], list[str]]:
    directory.mkdir(parents=True, exist_ok=True)
    config = ShapesConfig()
    paths, queries = [], []
    for k in range(N_SCENES):
        scene, _ = make_item(config, "test", 900 + k)
        paths.append(directory / f"scene-{k}.png")
        render_scene(scene, config.image_size, config.supersample).save(paths[-1])
        queries.append(canonical_caption(scene))
    return paths, queries


def spoken_clips(directory: Path) -> list[Path]:
    from mmbm.shapesworld.tts import Voice, make_engine

    engine = make_engine("flite")
    if not engine.available():
        return []
    clips = []
    for i, text in enumerate(SPOKEN):
        audio, rate = engine.synthesize(text, Voice("flite", "slt"))
        clips.append(save_audio(directory / f"clip-{i}.wav", audio, rate))
    return clips


def measure(model: Path, index: Path | None, repeats: int) -> dict[str, float | int | str | None]:
    from gradio_client import Client, handle_file

    results: dict[str, float | int | str | None] = {"model": str(model), "index": str(index), "repeats": repeats}
    results["cold_start_s"] = round(cold_start_seconds(model, index, free_port()), 2)
    with tempfile.TemporaryDirectory(prefix="mmbm-bench-") as folder:
        work = Path(folder)
        demo = app.load_demo(model, index, work / "app")
        images, queries = scenes(work / "scenes")
        pipeline = demo.pipeline
        results["gallery_images"] = pipeline.index_stats().n_images
        pick = lambda items: lambda i: items[i % len(items)]  # noqa: E731
        image, query = pick([{"path": str(p)} for p in images]), pick(queries)
        results["caption_ms_server"] = round(
            median_ms(lambda i: demo.caption(image(i), "greedy", 4, 1.0, 1), repeats), 1
        )
        results["search_ms_server"] = round(median_ms(lambda i: demo.search(query(i), 8), repeats), 2)
        results["search_ms_pipeline"] = round(median_ms(lambda i: pipeline.search_text(query(i), 8), repeats), 2)
        clips = spoken_clips(work)
        if clips:
            options = demo._speech_options(app.SPEECH_METHODS[0])
            rtfs = [pipeline.transcribe(clips[i % len(clips)], *options).rtf for i in range(repeats + 1)][1:]
            results["transcription_rtf"] = round(statistics.median(rtfs), 4)
        else:
            results["transcription_rtf"] = None  # flite is missing: apt-get install -y flite
        blocks = app.build_demo(demo)
        port = free_port()
        app.launch(blocks, demo, "127.0.0.1", port, prevent_thread_lock=True)
        try:
            client = Client(f"http://127.0.0.1:{port}", verbose=False)
            files = [handle_file(str(p)) for p in images]
            round_trip = lambda i: client.predict(files[i % len(files)], "greedy", 4, 1.0, 1, api_name="/caption")  # noqa: E731
            results["caption_ms_round_trip"] = round(median_ms(round_trip, repeats), 1)
        finally:
            blocks.close()
            pipeline.close()
    return results


def table(results: dict[str, float | int | str | None]) -> str:
    n = results["repeats"]
    rows = [
        ("cold start to serving (`python app.py` → first `GET /` 200)", f"{results['cold_start_s']} s", "1 start"),
        (
            "caption, server-side (/caption handler, greedy + heatmaps)",
            f"{results['caption_ms_server']} ms",
            f"median of {n}",
        ),
        (
            "caption, client round trip (gradio_client, local HTTP)",
            f"{results['caption_ms_round_trip']} ms",
            f"median of {n}",
        ),
        (
            f"search, server-side (/search handler, {results['gallery_images']} images)",
            f"{results['search_ms_server']} ms",
            f"median of {n}",
        ),
        ("search, `Pipeline.search_text` (embed + search)", f"{results['search_ms_pipeline']} ms", f"median of {n}"),
        (
            "transcription real-time factor (beam + ShapesWorld words, flite clips)",
            str(results["transcription_rtf"]),
            f"median of {n}",
        ),
    ]
    lines = ["| measure | value | over |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / app.DEFAULT_MODEL)
    parser.add_argument(
        "--index", type=Path, default=REPO / app.DEFAULT_INDEX, help="gallery index; 'none' for an empty one"
    )
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    index = None if str(args.index).lower() == "none" else args.index
    results = measure(args.model, index, args.repeats)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
