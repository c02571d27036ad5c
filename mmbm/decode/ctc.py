"""Speech decoding: CTC greedy and prefix beam search, word lexicons, timings from alignment.

Owns ``CTCDecodingOptions``, the results ``Transcript``, ``WordTiming`` and
``TokenTiming``, ``Lexicon`` (a token trie of known words) and the decoders.
- ``ctc_greedy``: best token per frame, repeats merged, blanks dropped.
- ``ctc_prefix_beam``: CTC prefix beam search (Hannun et al., arXiv:1408.2873),
  optionally restricted by a ``Lexicon`` so that only known words can be spelled —
  a large, free gain on real speech when the vocabulary is known (see
  ../shared/STACK.md).
torchaudio's ``ctc_decoder`` (flashlight-text) was tried first: it wants a silence
token between words and a character-style lexicon, and with our subword tokens
it inserted silence tokens into the output and mis-timed them, so the search is
written out here (about 60 lines, no extra dependency).
Times come from ``torchaudio.functional.forced_align`` + ``merge_tokens`` over the
chosen tokens; a frame is hop x subsampling = 40 ms by default. Imports the model
and tokenizer types only; never training or UI code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torchaudio.functional as AF
from torch import Tensor

from mmbm.errors import ConfigError
from mmbm.tokenizer import normalize_text

if TYPE_CHECKING:
    from mmbm.model.model import MMBM
    from mmbm.tokenizer import Tokenizer

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CTCDecodingOptions:
    """How to decode CTC output; invalid values raise ConfigError naming the field."""

    method: Literal["greedy", "beam"] = "greedy"
    beam_size: int = 8  # prefixes kept per frame
    token_beam: int = 16  # most likely tokens tried per frame (besides blank)

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam"):
            raise ConfigError(f"method: must be 'greedy' or 'beam', got {self.method!r}")
        if not 1 <= self.beam_size <= 256:
            raise ConfigError(f"beam_size: must be in [1, 256], got {self.beam_size}")
        if self.token_beam < 1:
            raise ConfigError(f"token_beam: must be at least 1, got {self.token_beam}")


@dataclass(frozen=True)
class TokenTiming:
    token_id: int
    start_s: float
    end_s: float
    confidence: float  # mean frame probability of this token over its aligned frames


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float
    end_s: float
    confidence: float  # mean of its tokens' confidences


@dataclass(frozen=True)
class Transcript:
    text: str  # normalised words
    words: list[WordTiming]
    tokens: list[TokenTiming]
    confidence: float  # mean word confidence; the mean blank probability when no word was heard


class Lexicon:
    """A trie of the token spellings of known words; node 0 is the root."""

    def __init__(self, spellings: Iterable[tuple[int, ...]]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.word_end: list[bool] = [False]
        self.n_words = 0
        for spelling in spellings:
            self._add(spelling)
        if self.n_words == 0:
            raise ConfigError("lexicon: needs at least one word")

    def _add(self, spelling: tuple[int, ...]) -> None:
        node = 0
        for token in spelling:
            if token not in self.children[node]:
                self.children.append({})
                self.word_end.append(False)
                self.children[node][token] = len(self.children) - 1
            node = self.children[node][token]
        if spelling and not self.word_end[node]:
            self.word_end[node] = True
            self.n_words += 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: Tokenizer) -> Lexicon:
        """Every distinct word of ``texts`` (normalised), spelled with ``tokenizer``."""
        words = {word for text in texts for word in normalize_text(text).split()}
        return cls(tuple(tokenizer.encode(word, add_special=False)) for word in sorted(words))

    def advance(self, node: int, token: int) -> int:
        """The node after ``token``: continue this word, or start a new one after a complete word; -1 if neither."""
        child = self.children[node].get(token)
        if child is not None:
            return child
        if node == 0 or not self.word_end[node]:
            return -1
        return self.children[0].get(token, -1)

    def is_complete(self, node: int) -> bool:
        return node == 0 or self.word_end[node]


def ctc_greedy(log_probs: Tensor, blank_id: int) -> list[int]:
    """(T, V) log-probs -> token ids: argmax per frame, repeats merged, blanks dropped."""
    best = torch.unique_consecutive(log_probs.argmax(dim=-1))
    return [int(t) for t in best if int(t) != blank_id]


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


Beams = dict[tuple[int, ...], list]  # prefix -> [log p ending in blank, log p ending in its last token, trie node]


def _add(grown: Beams, prefix: tuple[int, ...], node: int, p_blank: float, p_token: float) -> None:
    entry = grown.setdefault(prefix, [NEG_INF, NEG_INF, node])
    entry[0], entry[1] = _logaddexp(entry[0], p_blank), _logaddexp(entry[1], p_token)


def _extend(beams: Beams, lp: list[float], candidates: list[int], blank_id: int, lexicon: Lexicon | None) -> Beams:
    """Every prefix after one more frame with log-probs ``lp``."""
    grown: Beams = {}
    for prefix, (p_b, p_nb, node) in beams.items():
        total = _logaddexp(p_b, p_nb)
        _add(grown, prefix, node, total + lp[blank_id], NEG_INF)  # a blank keeps the prefix
        last = prefix[-1] if prefix else None
        for c in candidates:
            child = lexicon.advance(node, c) if lexicon is not None else 0
            if c == last:
                _add(grown, prefix, node, NEG_INF, p_nb + lp[c])  # repeated token without blank: merged
                if child >= 0:
                    _add(grown, prefix + (c,), child, NEG_INF, p_b + lp[c])  # blank in between: a new token
            elif child >= 0:
                _add(grown, prefix + (c,), child, NEG_INF, total + lp[c])
    return grown


def ctc_prefix_beam(
    log_probs: Tensor, blank_id: int, options: CTCDecodingOptions, lexicon: Lexicon | None = None
) -> list[int]:
    """(T, V) log-probs -> the most probable token sequence, summing over alignments.

    Each prefix keeps p_blank / p_non_blank (log), the probability of all alignments
    of the frames so far that spell it and end in blank / in its last token; only
    the ``token_beam`` likeliest tokens of a frame are tried, and the ``beam_size``
    likeliest prefixes survive it.
    """
    frames = log_probs.float().cpu()
    k = min(options.token_beam, frames.shape[1] - 1)
    beams: Beams = {(): [0.0, NEG_INF, 0]}

    def probability(prefix: tuple[int, ...]) -> float:
        return _logaddexp(beams[prefix][0], beams[prefix][1])

    for frame in frames:
        candidates = [c for c in frame.topk(k + 1).indices.tolist() if c != blank_id][:k]
        beams = _extend(beams, frame.tolist(), candidates, blank_id, lexicon)
        beams = dict(
            sorted(beams.items(), key=lambda item: _logaddexp(item[1][0], item[1][1]), reverse=True)[
                : options.beam_size
            ]
        )
    complete = [p for p, entry in beams.items() if lexicon is None or lexicon.is_complete(entry[2])]
    if not complete:  # every surviving prefix ends mid-word: fall back to the best one
        complete = list(beams)
    return list(max(complete, key=probability))


def _token_timings(log_probs: Tensor, tokens: list[int], blank_id: int, frame_seconds: float) -> list[TokenTiming]:
    """Align ``tokens`` to the frames of (T, V) log-probs and time each one."""
    if not tokens:
        return []
    targets = torch.tensor([tokens], dtype=torch.int32)
    path, scores = AF.forced_align(log_probs.float().cpu()[None], targets, blank=blank_id)  # (1, T), (1, T)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=blank_id)
    return [TokenTiming(s.token, s.start * frame_seconds, s.end * frame_seconds, float(s.score)) for s in spans]


def _words(tokens: list[TokenTiming], tokenizer: Tokenizer) -> list[WordTiming]:
    groups: list[list[TokenTiming]] = []
    for timing in tokens:
        if not groups or tokenizer.is_word_start(timing.token_id):
            groups.append([])
        groups[-1].append(timing)
    words = []
    for group in groups:
        text = tokenizer.decode([t.token_id for t in group])
        if text:
            confidence = sum(t.confidence for t in group) / len(group)
            words.append(WordTiming(text, group[0].start_s, group[-1].end_s, confidence))
    return words


def transcribe_log_probs(
    log_probs: Tensor,
    tokenizer: Tokenizer,
    frame_seconds: float,
    options: CTCDecodingOptions = CTCDecodingOptions(),
    lexicon: Lexicon | None = None,
) -> Transcript:
    """Decode one clip's (T, V) CTC log-probs into a timed Transcript."""
    if log_probs.ndim != 2 or log_probs.shape[0] < 1:
        raise ConfigError(f"log_probs: expected (T, V) with T >= 1, got {tuple(log_probs.shape)}")
    if lexicon is not None and options.method != "beam":
        raise ConfigError("method: a lexicon restricts beam search only; use method='beam'")
    blank = tokenizer.blank_id
    if options.method == "beam":
        tokens = ctc_prefix_beam(log_probs, blank, options, lexicon)
    else:
        tokens = ctc_greedy(log_probs, blank)
    timings = _token_timings(log_probs, tokens, blank, frame_seconds)
    words = _words(timings, tokenizer)
    if words:
        confidence = sum(w.confidence for w in words) / len(words)
    else:
        confidence = float(log_probs[:, blank].float().exp().mean())
    return Transcript(" ".join(w.word for w in words), words, timings, confidence)


@torch.inference_mode()
def transcribe_features(
    model: MMBM,
    features: Tensor,
    feature_lengths: Tensor,
    tokenizer: Tokenizer,
    options: CTCDecodingOptions = CTCDecodingOptions(),
    lexicon: Lexicon | None = None,
) -> list[Transcript]:
    """(B, n_mels, T) log-mel with (B,) frame counts -> one Transcript per clip."""
    out = model.ctc_logits(features, feature_lengths)
    return [
        transcribe_log_probs(out.log_probs[i, : int(n)], tokenizer, model.audio_frame_seconds, options, lexicon)
        for i, n in enumerate(out.lengths)
    ]
