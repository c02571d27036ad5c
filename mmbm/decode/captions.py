"""Caption decoding: greedy, beam search and sampling over the MMBM caption head.

Owns ``DecodingOptions`` (frozen, validated up front), the results ``Caption``,
``CaptionResult`` and ``WordAttention``, and ``generate_captions``. Every method
reuses the model's key/value cache by default (the image prefix is encoded once,
each step feeds one token); ``use_cache=False`` recomputes the whole sequence each
step instead, which must give the same tokens (tested) and is what the latency
report compares against. Beam search keeps ``beam_size`` hypotheses, scores a
finished one by sum log p / length ** length_penalty, and can forbid repeated
n-grams (the loop guard of arXiv:1705.04304). Sampling supports temperature and
nucleus (top-p, arXiv:1904.09751) filtering with a seeded generator. On request
the decoder also returns, for each generated word, the attention from its tokens
to the image patches (mean over heads and layers, renormalised over patches) for
the UI heatmap. Imports the model and config; never training or UI code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from mmbm.errors import ConfigError

if TYPE_CHECKING:
    from mmbm.model.model import MMBM
    from mmbm.tokenizer import Tokenizer

Method = Literal["greedy", "beam", "sample"]
METHODS: tuple[str, ...] = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode a caption; invalid values raise ConfigError naming the field."""

    method: Method = "greedy"
    beam_size: int = 4  # hypotheses kept by beam search
    n_best: int = 1  # captions returned: best beams, or independent samples
    length_penalty: float = 1.0  # score = sum log p / length ** length_penalty
    no_repeat_ngram_size: int = 0  # 0 = off; n > 0 forbids any token n-gram twice
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only; 1.0 keeps the whole distribution
    max_len: int | None = None  # generated tokens; None = the model's max_text_len - 1
    seed: int = 0  # sampling only
    return_attention: bool = False  # per-word attention over image patches ("attention" fusion)
    use_cache: bool = True  # False recomputes every step from scratch

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {message}")

        require(self.method in METHODS, "method", f"must be one of {METHODS}, got {self.method!r}")
        require(1 <= self.beam_size <= 64, "beam_size", f"must be in [1, 64], got {self.beam_size}")
        require(self.n_best >= 1, "n_best", f"must be at least 1, got {self.n_best}")
        require(self.method != "greedy" or self.n_best == 1, "n_best", "greedy decoding returns one caption")
        require(
            self.method != "beam" or self.n_best <= self.beam_size,
            "n_best",
            f"must not exceed beam_size ({self.beam_size}), got {self.n_best}",
        )
        require(self.length_penalty >= 0.0, "length_penalty", f"must be >= 0, got {self.length_penalty}")
        require(
            self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", f"must be >= 0, got {self.no_repeat_ngram_size}"
        )
        require(self.temperature > 0.0, "temperature", f"must be positive, got {self.temperature}")
        require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.max_len is None or self.max_len >= 1, "max_len", f"must be at least 1, got {self.max_len}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class WordAttention:
    """Where the decoder looked while writing one word: weights over the patch grid."""

    word: str
    token_ids: list[int]
    weights: np.ndarray  # (grid, grid) float32, sums to 1; row-major like the image


@dataclass(frozen=True)
class Caption:
    text: str  # normalised words
    token_ids: list[int]  # generated ids, without bos and eos
    score: float  # sum log p (eos included) / n_tokens ** length_penalty
    word_attention: list[WordAttention] | None  # only when DecodingOptions.return_attention


@dataclass(frozen=True)
class CaptionResult:
    captions: list[Caption]  # best first; one for greedy


@dataclass
class _Hypotheses:
    """Growing token rows, their summed log-probs and (optionally) attention history."""

    ids: Tensor  # (R, t) starting with bos
    log_prob: Tensor  # (R,)
    attention: Tensor | None  # (R, t-1, N) per generated token


class _Stepper:
    """Next-token log-probs for rows of hypotheses, with or without the KV cache."""

    def __init__(self, model: MMBM, pixels: Tensor, options: DecodingOptions) -> None:
        self.model, self.pixels, self.options = model, pixels, options
        self.state = model.start_caption(pixels) if options.use_cache else None

    def select(self, rows: Tensor) -> None:
        if self.state is not None:
            self.state.select(rows)
        else:
            self.pixels = self.pixels.index_select(0, rows)

    def step(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """ids (R, t) -> log-probs of token t+1 (R, V) and patch attention (R, N) or None."""
        need_weights = self.options.return_attention
        if self.state is not None:
            out = self.model.caption_step(self.state, ids[:, -1:], need_weights)
            logits, attention = out.logits[:, -1], out.attention  # (R, V), (R, n_layers, 1, N)
        else:
            out = self.model.caption_forward(self.pixels, ids, need_weights)
            logits = out.logits[:, -1]  # (R, V)
            attention = None if out.attention is None else out.attention[:, :, -1:]  # (R, n_layers, 1, N)
        log_probs = _allowed_log_probs(self.model, logits, ids, self.options.no_repeat_ngram_size)
        if attention is None:
            return log_probs, None
        patches = attention[:, :, 0].float().mean(dim=1)  # (R, N), mean over layers
        return log_probs, patches / patches.sum(dim=-1, keepdim=True)


def _allowed_log_probs(model: MMBM, logits: Tensor, ids: Tensor, ngram: int) -> Tensor:
    """log_softmax of (R, V) logits with tokens a caption may not contain set to -inf."""
    log_probs = logits.float().log_softmax(dim=-1)  # (R, V)
    config = model.config
    log_probs[:, [config.pad_id, config.bos_id, config.blank_id]] = float("-inf")
    if ngram > 0 and ids.shape[1] >= ngram:
        for row, tokens in enumerate(ids[:, 1:].tolist()):
            banned = _banned_tokens(tokens, ngram)
            if banned:
                log_probs[row, banned] = float("-inf")
    return log_probs


def _banned_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in ``tokens``."""
    if len(tokens) < n - 1:
        return []
    prefix = tuple(tokens[len(tokens) - (n - 1) :]) if n > 1 else ()
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix]


def _append(hyps: _Hypotheses, rows: Tensor, tokens: Tensor, log_prob: Tensor, patches: Tensor | None) -> _Hypotheses:
    ids = torch.cat([hyps.ids.index_select(0, rows), tokens[:, None]], dim=1)  # (R', t+1)
    attention = None
    if patches is not None:
        new = patches.index_select(0, rows)[:, None]  # (R', 1, N)
        attention = new if hyps.attention is None else torch.cat([hyps.attention.index_select(0, rows), new], dim=1)
    return _Hypotheses(ids, log_prob, attention)


def _greedy_or_sample(stepper: _Stepper, bos: Tensor, eos_id: int, max_len: int, sample: bool) -> _Hypotheses:
    """Decode every row to eos or max_len; finished rows keep emitting eos (ignored later)."""
    options = stepper.options
    generator = torch.Generator().manual_seed(options.seed) if sample else None
    hyps = _Hypotheses(bos, torch.zeros(len(bos)), None)
    done = torch.zeros(len(bos), dtype=torch.bool)
    all_rows = torch.arange(len(bos), device=bos.device)
    for _ in range(max_len):
        log_probs, patches = stepper.step(hyps.ids)  # (R, V)
        log_probs = log_probs.cpu()
        if sample:
            tokens = _sample(log_probs, options.temperature, options.top_p, generator)
        else:
            tokens = log_probs.argmax(dim=-1)
        tokens = torch.where(done, torch.full_like(tokens, eos_id), tokens)
        gained = log_probs.gather(1, tokens[:, None])[:, 0].masked_fill(done, 0.0)
        hyps = _append(hyps, all_rows, tokens.to(bos.device), hyps.log_prob + gained, patches)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    return hyps


def _sample(log_probs: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> Tensor:
    """Draw one token per row from softmax(log_probs / temperature) restricted to the top-p nucleus."""
    probs = (log_probs / temperature).softmax(dim=-1)  # (R, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before this token already >= p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (R,)


def _beam_search(stepper: _Stepper, bos: Tensor, eos_id: int, max_len: int) -> list[_Hypotheses]:
    """Beam search for one image (bos is (1, 1)); returns finished hypotheses, one per entry."""
    K = stepper.options.beam_size
    hyps = _Hypotheses(bos, torch.zeros(1), None)
    finished: list[_Hypotheses] = []
    for _ in range(max_len):
        log_probs, patches = stepper.step(hyps.ids)  # (R, V)
        V = log_probs.shape[1]
        totals = (hyps.log_prob.to(log_probs.device)[:, None] + log_probs).view(-1)  # (R * V,)
        top_totals, flat = totals.topk(min(2 * K, int(torch.isfinite(totals).sum())))
        rows, tokens = flat // V, flat % V
        keep: list[int] = []
        for rank in range(len(flat)):
            if int(tokens[rank]) == eos_id:
                if rank < K:  # an eos below the top K does not end a beam (as in fairseq/HF)
                    single = torch.tensor([rank], device=flat.device)
                    finished.append(_append(hyps, rows[single], tokens[single], top_totals[single].cpu(), patches))
            elif len(keep) < K:
                keep.append(rank)
        if len(finished) >= K or not keep:
            break
        chosen = torch.tensor(keep, device=flat.device)
        stepper.select(rows[chosen])
        hyps = _append(hyps, rows[chosen], tokens[chosen], top_totals[chosen].cpu(), patches)
    else:  # max_len reached: the live beams end here without eos
        finished.extend(_row(hyps, r) for r in range(len(hyps.ids)))
    return finished


def _row(hyps: _Hypotheses, r: int) -> _Hypotheses:
    attention = None if hyps.attention is None else hyps.attention[r : r + 1]
    return _Hypotheses(hyps.ids[r : r + 1], hyps.log_prob[r : r + 1], attention)


def _word_spans(token_ids: list[int], tokenizer: Tokenizer) -> list[tuple[int, int]]:
    """[start, end) index ranges of the words in ``token_ids`` (a word starts at a boundary token)."""
    starts = [i for i, token in enumerate(token_ids) if i == 0 or tokenizer.is_word_start(token)]
    return list(zip(starts, starts[1:] + [len(token_ids)], strict=False))


def _to_caption(hyp: _Hypotheses, tokenizer: Tokenizer, options: DecodingOptions, eos_id: int, grid: int) -> Caption:
    """Turn one row of a hypothesis into a Caption (trimmed at the first eos)."""
    generated = hyp.ids[0, 1:].tolist()
    n_scored = generated.index(eos_id) + 1 if eos_id in generated else len(generated)
    tokens = generated[: n_scored - 1] if eos_id in generated else generated
    score = float(hyp.log_prob.reshape(-1)[0]) / max(n_scored, 1) ** options.length_penalty
    word_attention = None
    if options.return_attention and hyp.attention is not None:
        maps = hyp.attention[0, : len(tokens)].float().cpu()  # (n_tokens, N)
        word_attention = []
        for start, end in _word_spans(tokens, tokenizer):
            weights = maps[start:end].mean(dim=0)
            weights = (weights / weights.sum()).reshape(grid, grid).numpy().astype(np.float32)
            word = tokenizer.decode(tokens[start:end])
            word_attention.append(WordAttention(word, tokens[start:end], weights))
    return Caption(tokenizer.decode(tokens), tokens, score, word_attention)


@torch.inference_mode()
def generate_captions(
    model: MMBM, pixels: Tensor, tokenizer: Tokenizer, options: DecodingOptions = DecodingOptions()
) -> list[CaptionResult]:
    """Caption each of (B, 3, S, S) normalised images; one CaptionResult per image, best first."""
    config = model.config
    max_len = options.max_len if options.max_len is not None else config.max_text_len - 1
    if max_len > config.max_text_len - 1:
        raise ConfigError(f"max_len: must be at most max_text_len - 1 = {config.max_text_len - 1}, got {max_len}")
    if options.return_attention and config.fusion != "attention":
        raise ConfigError(f"return_attention: needs fusion='attention'; this model uses {config.fusion!r}")
    if pixels.ndim != 4:
        raise ConfigError(f"pixels: expected a (B, 3, S, S) batch, got shape {tuple(pixels.shape)}")
    grid = int(round(model.n_image_tokens**0.5))
    results = []
    if options.method == "beam":
        for image in pixels.split(1):
            bos = torch.full((1, 1), config.bos_id, dtype=torch.long, device=pixels.device)
            hyps = _beam_search(_Stepper(model, image, options), bos, config.eos_id, max_len)
            captions = [_to_caption(h, tokenizer, options, config.eos_id, grid) for h in hyps]
            captions.sort(key=lambda c: c.score, reverse=True)
            results.append(CaptionResult(captions[: options.n_best]))
        return results
    n_each = options.n_best  # greedy: 1; sample: independent draws per image
    repeated = pixels.repeat_interleave(n_each, dim=0)
    bos = torch.full((len(repeated), 1), config.bos_id, dtype=torch.long, device=pixels.device)
    stepper = _Stepper(model, repeated, options)
    hyps = _greedy_or_sample(stepper, bos, config.eos_id, max_len, sample=options.method == "sample")
    for i in range(len(pixels)):
        rows = range(i * n_each, (i + 1) * n_each)
        captions = [_to_caption(_row(hyps, r), tokenizer, options, config.eos_id, grid) for r in rows]
        captions.sort(key=lambda c: c.score, reverse=True)
        results.append(CaptionResult(captions))
    return results
