"""Model size, FLOPs and CPU latency of the MMBM presets; the figures in docs/model.md.

    .venv/bin/python -m bench.model_latency [--checkpoint models/mmbm-tiny] [--threads 1] [--repeats 7]

Prints markdown: parameters by part (tiny, base and the tiny fusions), FLOPs per
caption and per second of audio (counted by torch.utils.flop_counter on the real
forward, not estimated by hand), and the median latency of the tiny model, in this
process, for greedy and beam-4 captioning with and without the KV cache and for
transcribing 5 s of audio. Without --checkpoint the weights are random: latency
depends on shapes, not weight values, except through caption length, so captions
are capped at CAPTION_TOKENS tokens and the table says how many were generated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.parameters import summary_table
from mmbm.config import ModelConfig
from mmbm.decode.captions import DecodingOptions, generate_captions
from mmbm.decode.ctc import CTCDecodingOptions, transcribe_features
from mmbm.device import autocast
from mmbm.model.checkpoint import load_checkpoint, load_tokenizer
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.pipeline import shapes_lexicon
from mmbm.tokenizer import Tokenizer, train_tokenizer

CAPTION_TOKENS = 12  # a typical ShapesWorld caption ("a small red circle above a large blue square" + eos)
AUDIO_SECONDS = 5.0
FRAMES_PER_SECOND = 100  # 10 ms hop


def sample_texts() -> list[str]:
    """ShapesWorld captions and spoken numbers, to train a tokenizer when no checkpoint is given."""
    from mmbm.shapesworld.captions import captions_for
    from mmbm.shapesworld.shapes import ShapesConfig, sample_scene
    from mmbm.tokenizer import number_to_words

    rng = np.random.default_rng(0)
    texts = [c for _ in range(400) for c in captions_for(sample_scene(rng, ShapesConfig()), rng)]
    return texts + [number_to_words(n) for n in range(1000)]


def build(checkpoint: Path | None) -> tuple[MMBM, Tokenizer, str]:
    if checkpoint is not None:
        return load_checkpoint(checkpoint), load_tokenizer(checkpoint), f"trained weights from {checkpoint}"
    tokenizer = train_tokenizer(sample_texts(), vocab_size=512)
    torch.manual_seed(0)
    model = MMBM(config_for_tokenizer(ModelConfig.tiny(), tokenizer)).eval()
    return model, tokenizer, f"random weights, tokenizer of {tokenizer.vocab_size} ids"


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def flops(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        run()
    return float(counter.get_total_flops())


def caption_flops(model: MMBM, use_cache: bool) -> float:
    """FLOPs of one greedy caption of exactly CAPTION_TOKENS tokens (image encoding included)."""
    pixels = torch.randn(1, 3, model.config.image.image_size, model.config.image.image_size)
    ids = torch.full((1, CAPTION_TOKENS), 5, dtype=torch.long)
    ids[0, 0] = model.config.bos_id

    def cached() -> None:
        state = model.start_caption(pixels)
        for t in range(CAPTION_TOKENS):
            model.caption_step(state, ids[:, t : t + 1])

    def recomputed() -> None:
        for t in range(1, CAPTION_TOKENS + 1):
            model.caption_forward(pixels, ids[:, :t])

    return flops(cached if use_cache else recomputed)


def audio_features(seconds: float, n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_frames = int(seconds * FRAMES_PER_SECOND) + 1
    return torch.randn(1, n_mels, n_frames), torch.tensor([n_frames])


def latency_rows(model: MMBM, tokenizer: Tokenizer, repeats: int) -> list[tuple[str, float, str]]:
    size = model.config.image.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for method, beam in (("greedy", 1), ("beam", 4)):
        for use_cache in (True, False):
            options = DecodingOptions(method=method, beam_size=beam, max_len=CAPTION_TOKENS, use_cache=use_cache)
            result = generate_captions(model, pixels, tokenizer, options)[0].captions[0]
            label = f"caption, {method}{'-4' if beam > 1 else ''}, {'KV cache' if use_cache else 'recompute'}"
            ms = median_ms(lambda o=options: generate_captions(model, pixels, tokenizer, o), repeats)
            rows.append((label, ms, f"{len(result.token_ids)} tokens"))
    features, lengths = audio_features(AUDIO_SECONDS, model.config.audio.n_mels)
    lexicon = shapes_lexicon(tokenizer)  # the demo's and the evaluator's lexicon
    for label, options, lex in (
        ("greedy", CTCDecodingOptions(), None),
        ("prefix beam 8", CTCDecodingOptions(method="beam", beam_size=8), None),
        ("prefix beam 8 + lexicon", CTCDecodingOptions(method="beam", beam_size=8), lexicon),
    ):
        ms = median_ms(lambda o=options, x=lex: transcribe_features(model, features, lengths, tokenizer, o, x), repeats)
        rows.append((f"transcribe {AUDIO_SECONDS:.0f} s, {label}", ms, f"RTF {ms / 1000 / AUDIO_SECONDS:.3f}"))
    cpu = torch.device("cpu")
    with autocast(cpu, cpu_bf16=True):  # AMX bf16 tiles on this CPU
        options = DecodingOptions(max_len=CAPTION_TOKENS)
        ms = median_ms(lambda: generate_captions(model, pixels, tokenizer, options), repeats)
        rows.append(("caption, greedy, KV cache, bf16 autocast", ms, ""))
        ms = median_ms(lambda: transcribe_features(model, features, lengths, tokenizer), repeats)
        rows.append(
            (f"transcribe {AUDIO_SECONDS:.0f} s, greedy, bf16 autocast", ms, f"RTF {ms / 1000 / AUDIO_SECONDS:.3f}")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="a saved MMBM folder (default: random tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    presets = {"tiny": ModelConfig.tiny(), "base": ModelConfig.base()}
    presets.update({f"tiny ({f})": ModelConfig.tiny(fusion=f) for f in ("concat", "multiply")})
    print("## Parameters by part\n")
    print(summary_table(presets))

    print("\n## FLOPs (torch.utils.flop_counter, forward only)\n")
    print(
        f"| preset | caption of {CAPTION_TOKENS} tokens, KV cache | same, recompute | 1 s of audio ({AUDIO_SECONDS:.0f} s clip) |"
    )
    print("|---|---:|---:|---:|")
    for name in ("tiny", "base"):
        torch.manual_seed(0)
        model = MMBM(presets[name]).eval()
        features, lengths = audio_features(AUDIO_SECONDS, model.config.audio.n_mels)
        audio = flops(lambda m=model, f=features, n=lengths: m.ctc_logits(f, n)) / AUDIO_SECONDS
        cached, fresh = caption_flops(model, True), caption_flops(model, False)
        print(f"| {name} | {cached / 1e9:.2f} GFLOP | {fresh / 1e9:.2f} GFLOP | {audio / 1e9:.2f} GFLOP |")

    model, tokenizer, what = build(args.checkpoint)
    print(f"\n## CPU latency of tiny ({what}; {args.threads} thread(s), median of {args.repeats})\n")
    print("| task | median ms | note |\n|---|---:|---|")
    with torch.inference_mode():
        for label, ms, note in latency_rows(model, tokenizer, args.repeats):
            print(f"| {label} | {ms:.1f} | {note} |")


if __name__ == "__main__":
    main()
