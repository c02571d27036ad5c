"""Caption decoding (greedy, beam, sampling, KV cache, attention maps) and CTC decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmbm.config import FUSIONS, ImageConfig, ModelConfig
from mmbm.decode.captions import DecodingOptions, generate_captions
from mmbm.decode.ctc import (
    CTCDecodingOptions,
    Lexicon,
    ctc_greedy,
    ctc_prefix_beam,
    transcribe_features,
    transcribe_log_probs,
)
from mmbm.errors import ConfigError
from mmbm.model.model import MMBM, config_for_tokenizer
from mmbm.tokenizer import Tokenizer, train_tokenizer

torch.set_num_threads(1)

CAPTIONS = [
    "a red circle above a blue square",
    "two green triangles",
    "a small yellow star left of a large purple circle",
    "three grey squares on a white background",
    "a blue star below a red triangle",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CAPTIONS * 3, vocab_size=80)


def make_model(tokenizer: Tokenizer, fusion: str = "attention", seed: int = 1) -> MMBM:
    small = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, d_embed=16, max_text_len=16, max_audio_tokens=64,
                 image_stem="patch")  # the seeded random instances below were chosen with this stem
    config = ModelConfig.tiny(fusion=fusion, image=ImageConfig(image_size=32), **small)
    torch.manual_seed(seed)
    model = MMBM(config_for_tokenizer(config, tokenizer)).eval()
    with torch.no_grad():
        # Large random weights make captions depend strongly on the image and the
        # prefix (the default init is nearly input-independent), and a louder eos
        # row makes some captions end early, so both endings are exercised.
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
        model.text_stem.token.weight[tokenizer.eos_id] *= 4
    return model


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def ids_of(results) -> list[list[list[int]]]:
    return [[c.token_ids for c in r.captions] for r in results]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_greedy_equals_beam_search_with_beam_size_one(tokenizer: Tokenizer, fusion: str) -> None:
    model = make_model(tokenizer, fusion)
    greedy = generate_captions(model, pixels(3), tokenizer, DecodingOptions(method="greedy"))
    beam = generate_captions(model, pixels(3), tokenizer, DecodingOptions(method="beam", beam_size=1))
    assert ids_of(greedy) == ids_of(beam)
    for g, b in zip(greedy, beam, strict=True):
        assert g.captions[0].text == b.captions[0].text
        assert g.captions[0].score == pytest.approx(b.captions[0].score, abs=1e-5)
    assert len({tuple(r.captions[0].token_ids) for r in greedy}) > 1  # the images do get different captions


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(method="greedy"),
        DecodingOptions(method="beam", beam_size=3, n_best=3, length_penalty=0.6),
        DecodingOptions(method="sample", n_best=2, temperature=1.5, top_p=0.9, seed=3),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_kv_cache_decoding_gives_the_same_tokens_as_recomputing(
    tokenizer: Tokenizer, fusion: str, options: DecodingOptions
) -> None:
    model = make_model(tokenizer, fusion)
    cached = generate_captions(model, pixels(2), tokenizer, options)
    fresh = generate_captions(model, pixels(2), tokenizer, DecodingOptions(**{**options.__dict__, "use_cache": False}))
    assert ids_of(cached) == ids_of(fresh)
    for c, f in zip(cached, fresh, strict=True):
        assert [x.score for x in c.captions] == pytest.approx([x.score for x in f.captions], abs=1e-4)


def test_greedy_score_is_the_mean_log_probability_under_teacher_forcing(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer)
    caption = generate_captions(model, pixels(1), tokenizer, DecodingOptions(max_len=6))[0].captions[0]
    eos = [tokenizer.eos_id] if len(caption.token_ids) < 6 else []
    ids = torch.tensor([[tokenizer.bos_id, *caption.token_ids, *eos]])
    log_probs = model.caption_logits(pixels(1), ids).log_softmax(-1)[0, :-1]
    total = log_probs.gather(1, ids[0, 1:, None]).sum().item()
    assert caption.score == pytest.approx(total / (ids.shape[1] - 1), abs=1e-4)
    assert caption.text == tokenizer.decode(caption.token_ids)


def test_beam_search_returns_n_best_sorted_and_at_least_as_good_as_greedy(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer, seed=1)
    greedy = generate_captions(model, pixels(2), tokenizer, DecodingOptions())
    beam = generate_captions(model, pixels(2), tokenizer, DecodingOptions(method="beam", beam_size=4, n_best=3))
    for g, b in zip(greedy, beam, strict=True):
        scores = [c.score for c in b.captions]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert scores[0] >= g.captions[0].score - 1e-6
        assert len({tuple(c.token_ids) for c in b.captions}) == 3


def test_no_repeat_ngram_guard_stops_repetition_loops(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer)

    def repeated_bigrams(tokens: list[int]) -> int:
        bigrams = list(zip(tokens, tokens[1:], strict=False))
        return len(bigrams) - len(set(bigrams))

    loose = generate_captions(model, pixels(4), tokenizer, DecodingOptions())
    assert sum(repeated_bigrams(r.captions[0].token_ids) for r in loose) > 0  # random weights loop
    for method in ("greedy", "beam"):
        guarded = generate_captions(model, pixels(4), tokenizer, DecodingOptions(method=method, no_repeat_ngram_size=2))
        assert all(repeated_bigrams(c.token_ids) == 0 for r in guarded for c in r.captions)


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer)
    sample = DecodingOptions(method="sample", n_best=3, seed=7, temperature=2.0)
    first = generate_captions(model, pixels(1), tokenizer, sample)
    again = generate_captions(model, pixels(1), tokenizer, sample)
    other = generate_captions(model, pixels(1), tokenizer, DecodingOptions(**{**sample.__dict__, "seed": 8}))
    assert ids_of(first) == ids_of(again)
    assert ids_of(first) != ids_of(other)
    scores = [c.score for c in first[0].captions]
    assert scores == sorted(scores, reverse=True)
    nucleus = generate_captions(model, pixels(2), tokenizer, DecodingOptions(method="sample", top_p=1e-6, seed=1))
    assert ids_of(nucleus) == ids_of(generate_captions(model, pixels(2), tokenizer, DecodingOptions()))


def test_max_len_bounds_the_caption(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer)
    for options in (DecodingOptions(max_len=3), DecodingOptions(method="beam", max_len=3)):
        for result in generate_captions(model, pixels(2), tokenizer, options):
            assert all(len(c.token_ids) <= 3 for c in result.captions)
    with pytest.raises(ConfigError, match="max_len: must be at most max_text_len - 1 = 15"):
        generate_captions(model, pixels(1), tokenizer, DecodingOptions(max_len=16))


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_word_attention_gives_one_patch_map_per_word(tokenizer: Tokenizer, method: str) -> None:
    model = make_model(tokenizer)
    options = DecodingOptions(method=method, return_attention=True, max_len=8)
    plain = generate_captions(model, pixels(2), tokenizer, DecodingOptions(method=method, max_len=8))
    results = generate_captions(model, pixels(2), tokenizer, options)
    assert ids_of(results) == ids_of(plain)  # asking for maps does not change the caption
    for result in results:
        caption = result.captions[0]
        assert caption.word_attention is not None
        assert [w.word for w in caption.word_attention] == caption.text.split()
        for word in caption.word_attention:
            assert word.weights.shape == (4, 4) and word.weights.dtype == np.float32
            assert word.weights.sum() == pytest.approx(1.0, abs=1e-5) and (word.weights >= 0).all()
    assert plain[0].captions[0].word_attention is None
    with pytest.raises(ConfigError, match="return_attention: needs fusion='attention'"):
        generate_captions(make_model(tokenizer, "concat"), pixels(1), tokenizer, options)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "nucleus"}, "method"),
        ({"beam_size": 0}, "beam_size"),
        ({"method": "beam", "beam_size": 2, "n_best": 3}, "n_best"),
        ({"n_best": 2}, "n_best"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"length_penalty": -1.0}, "length_penalty"),
        ({"max_len": 0}, "max_len"),
    ],
)
def test_invalid_decoding_options_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        DecodingOptions(**changes)


# ----- CTC ---------------------------------------------------------------------------

BLANK = 4


def peaked(sequence: list[int], vocab: int = 10, low: float = -8.0) -> torch.Tensor:
    """(T, V) log-probs that put nearly all mass on sequence[t] at frame t."""
    scores = torch.full((len(sequence), vocab), low)
    scores[torch.arange(len(sequence)), torch.tensor(sequence)] = 0.0
    return scores.log_softmax(-1)


def test_ctc_greedy_merges_repeats_and_drops_blanks() -> None:
    frames = peaked([BLANK, 5, 5, BLANK, 5, 6, 6, BLANK, BLANK, 7])
    assert ctc_greedy(frames, BLANK) == [5, 5, 6, 7]
    assert ctc_prefix_beam(frames, BLANK, CTCDecodingOptions(method="beam")) == [5, 5, 6, 7]


def test_prefix_beam_sums_over_alignments_where_greedy_cannot() -> None:
    # Each frame: blank 0.6, token 5 0.4. Best path is blank-blank (""), but "5" has
    # total probability 0.4*0.4 + 0.4*0.6 + 0.6*0.4 = 0.64 > 0.36.
    frames = torch.full((2, 8), 1e-9)
    frames[:, BLANK], frames[:, 5] = 0.6, 0.4
    log_probs = frames.log()
    assert ctc_greedy(log_probs, BLANK) == []
    assert ctc_prefix_beam(log_probs, BLANK, CTCDecodingOptions(method="beam", beam_size=4)) == [5]


def test_lexicon_restricts_beam_search_to_known_words(tokenizer: Tokenizer) -> None:
    red, circle = (tokenizer.encode(w, add_special=False) for w in ("red", "circle"))
    assert len(red) == 1
    spelled = red + circle
    lexicon = Lexicon.from_texts(["a red circle", "two squares"], tokenizer)
    assert lexicon.n_words == 5
    # The acoustics favour a token that spells no known word in place of "red".
    stray = next(i for i in range(5, tokenizer.vocab_size) if i not in spelled and tokenizer.is_word_start(i))
    frames = torch.full((2 * len(spelled) + 1, tokenizer.vocab_size), -9.0)
    frames[:, BLANK] = -0.5
    frames[1, BLANK], frames[1, stray], frames[1, red[0]] = -3.0, -0.1, -0.3
    for i, token in enumerate(circle):
        frames[3 + 2 * i, token] = 0.0
    frames = frames.log_softmax(-1)
    options = CTCDecodingOptions(method="beam", beam_size=8)
    assert ctc_prefix_beam(frames, BLANK, options)[0] == stray
    assert ctc_prefix_beam(frames, BLANK, options, lexicon) == spelled
    with pytest.raises(ConfigError, match="method='beam'"):
        transcribe_log_probs(frames, tokenizer, 0.04, CTCDecodingOptions(), lexicon)


def test_transcript_words_carry_times_and_confidences(tokenizer: Tokenizer) -> None:
    words = tokenizer.encode("red circle", add_special=False)
    frames = [BLANK] * 20
    frames[3] = words[0]  # "red" at frame 3 -> 0.12 s at 40 ms per frame
    for i, token in enumerate(words[1:]):
        frames[10 + 2 * i] = token  # "circle" from frame 10
    transcript = transcribe_log_probs(peaked(frames, tokenizer.vocab_size), tokenizer, frame_seconds=0.04)
    assert transcript.text == "red circle"
    assert [w.word for w in transcript.words] == ["red", "circle"]
    assert transcript.words[0].start_s == pytest.approx(0.12) and transcript.words[0].end_s == pytest.approx(0.16)
    assert transcript.words[1].start_s == pytest.approx(0.40)
    assert transcript.words[1].end_s == pytest.approx(0.44 + 0.08 * (len(words) - 2))
    assert [t.token_id for t in transcript.tokens] == words
    peak = 1 / (1 + (tokenizer.vocab_size - 1) * math.exp(-8.0))  # the probability peaked() gives a frame
    assert all(w.confidence == pytest.approx(peak) for w in transcript.words)
    assert transcript.confidence == pytest.approx(peak)
    silence = transcribe_log_probs(peaked([BLANK] * 5, tokenizer.vocab_size), tokenizer, 0.04)
    assert silence.text == "" and silence.words == [] and silence.confidence == pytest.approx(peak)


def test_transcribe_features_runs_the_model_per_clip(tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer)
    features = torch.randn(2, 80, 50)
    lengths = torch.tensor([50, 30])
    for options in (CTCDecodingOptions(), CTCDecodingOptions(method="beam", beam_size=4)):
        transcripts = transcribe_features(model, features, lengths, tokenizer, options)
        assert len(transcripts) == 2
        for transcript, n_frames in zip(transcripts, [7, 4], strict=True):
            assert transcript.text == " ".join(w.word for w in transcript.words)
            assert all(0 <= w.start_s < w.end_s <= n_frames * model.audio_frame_seconds + 1e-9 for w in transcript.words)
            assert 0.0 <= transcript.confidence <= 1.0 and not math.isnan(transcript.confidence)
    greedy = transcribe_features(model, features[1:], lengths[1:], tokenizer)[0]
    single = transcribe_features(model, features[1:, :, :30], lengths[1:], tokenizer)[0]
    assert greedy.text == single.text and greedy.tokens[0].end_s == single.tokens[0].end_s
    assert greedy.confidence == pytest.approx(single.confidence, abs=1e-5)


def test_invalid_ctc_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match="^method: "):
        CTCDecodingOptions(method="viterbi")
    with pytest.raises(ConfigError, match="^beam_size: "):
        CTCDecodingOptions(beam_size=0)
    with pytest.raises(ConfigError, match="lexicon: needs at least one word"):
        Lexicon([])
