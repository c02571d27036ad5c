"""Text normalisation and the subword tokenizer shared by captions and speech.

Owns ``normalize_text`` (the one place that decides case, punctuation and how
numbers are written) and ``Tokenizer``, a thin typed wrapper around a Hugging
Face ``tokenizers`` BPE model. The same ids serve as caption targets and as CTC
targets; ``blank_id`` is reserved for CTC. The file it writes, tokenizer.json,
loads in ``transformers.PreTrainedTokenizerFast``. Imports no model code.

Normalisation (applied to every caption, transcript and query):
- Unicode NFKD with accents stripped, then lowercase ("Café" -> "cafe").
- Numbers become words: "3" -> "three", "12" -> "twelve", "739" -> "seven
  hundred thirty nine", "3.5" -> "three point five", "-2" -> "minus two".
  Digit runs with a leading zero or more than nine digits are read digit by
  digit ("0739" -> "zero seven three nine"), as people say codes.
- Apostrophes inside words stay ("don't"); every other punctuation mark and
  symbol becomes a space; whitespace collapses to single spaces.
Characters the tokenizer never saw in training (for example CJK) encode to
``<unk>`` rather than failing.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from mmbm.errors import CheckpointError, TextError

PAD, BOS, EOS, UNK, BLANK = "<pad>", "<bos>", "<eos>", "<unk>", "<blank>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, BLANK)  # ids 0..4 in this order
WORD_BOUNDARY = "\u2581"  # SentencePiece-style marker that starts every word
ALPHABET = list("abcdefghijklmnopqrstuvwxyz'")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000, "million"), (1_000, "thousand"))
_NUMBER = re.compile(r"(?<![\w.])(-?)(\d+)(?:\.(\d+))?(?![\w])")
_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _under_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        return words + [_ONES[n]]
    words.append(_TENS[n // 10])
    if n % 10:
        words.append(_ONES[n % 10])
    return words


def number_to_words(n: int) -> str:
    """Spell a non-negative integer below one billion: 739 -> 'seven hundred thirty nine'."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"number_to_words handles 0 <= n < 1e9, got {n}")
    if n < 1000:
        return " ".join(_under_thousand(n))
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _under_thousand(n // scale) + [name]
            n %= scale
    if n:
        words += _under_thousand(n)
    return " ".join(words)


def _digits_to_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _spell_number(match: re.Match[str]) -> str:
    sign, whole, fraction = match.group(1), match.group(2), match.group(3)
    if (len(whole) > 1 and whole.startswith("0")) or len(whole) > 9:
        spoken = _digits_to_words(whole)
    else:
        spoken = number_to_words(int(whole))
    if fraction:
        spoken += " point " + _digits_to_words(fraction)
    return f" {'minus ' if sign else ''}{spoken} "


def normalize_text(text: str) -> str:
    """Lowercase, spell numbers as words, drop punctuation; see the module docstring."""
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _APOSTROPHES.sub("'", text).lower()
    text = _THOUSANDS.sub("", text)  # "3,000" -> "3000"
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[^\w' ]+", " ", text)  # punctuation and symbols become spaces
    text = text.replace("_", " ")
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes inside words
    return " ".join(text.split())


class Tokenizer:
    """Subword tokenizer over normalised text; ids 0..4 are pad, bos, eos, unk, blank."""

    def __init__(self, backend: HFTokenizer) -> None:
        ids = [backend.token_to_id(token) for token in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise CheckpointError(f"tokenizer: special tokens {SPECIAL_TOKENS} must have ids 0..4, got {ids}")
        self._backend = backend
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.blank_id = ids

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Normalise ``text`` and return its ids, wrapped in bos/eos when ``add_special``."""
        encoding = self._backend.encode(normalize_text(text), add_special_tokens=add_special)
        return list(encoding.ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text for ``ids`` with special tokens dropped, words separated by single spaces."""
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=True)
        return " ".join(text.split())

    def id_to_token(self, token_id: int) -> str:
        token = self._backend.id_to_token(int(token_id))
        if token is None:
            raise TextError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")
        return token

    def is_word_start(self, token_id: int) -> bool:
        """True when this token begins a new word (used to group CTC tokens into words)."""
        return self.id_to_token(token_id).startswith(WORD_BOUNDARY)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.json atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self._backend.save(str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file not found: {path}")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception on bad JSON
            raise CheckpointError(f"tokenizer file {path} is not a valid tokenizer.json: {e}") from e
        return cls(backend)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """Train a BPE tokenizer of at most ``vocab_size`` ids on normalised ``texts``."""
    if vocab_size < len(SPECIAL_TOKENS) + len(ALPHABET) + 1:
        raise TextError(f"vocab_size {vocab_size} is too small for the special tokens and the alphabet")
    backend = HFTokenizer(models.BPE(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=ALPHABET + [WORD_BOUNDARY],
        show_progress=False,
    )
    normalised = [n for n in (normalize_text(t) for t in texts) if n]
    if not normalised:
        raise TextError("tokenizer training saw no text; give it at least one non-empty string")
    backend.train_from_iterator(normalised, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS)), (EOS, SPECIAL_TOKENS.index(EOS))]
    )
    return Tokenizer(backend)
