"""Text normalisation and the BPE tokenizer: round trips, specials, save/load, refusals."""

import pytest
from transformers import PreTrainedTokenizerFast

from mmbm.errors import CheckpointError, TextError
from mmbm.tokenizer import SPECIAL_TOKENS, Tokenizer, normalize_text, number_to_words, train_tokenizer

CORPUS = [
    "a red circle to the left of a blue square",
    "two green stars above a small yellow triangle",
    "there is a large purple hexagon on a gradient background",
    "seven three nine",
    "zero one two three four five six seven eight nine ten eleven twelve",
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CORPUS * 5, vocab_size=120)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two RED circles.", "two red circles"),
        ("3 blue squares", "three blue squares"),
        ("12", "twelve"),
        ("739", "seven hundred thirty nine"),
        ("3,000 stars", "three thousand stars"),
        ("0739", "zero seven three nine"),
        ("3.5", "three point five"),
        ("-2", "minus two"),
        ("Café, naïve!", "cafe naive"),
        ("don't 'quote' me", "don't quote me"),
        ("  spaced\tout\n", "spaced out"),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_number_to_words_range() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(20) == "twenty"
    assert number_to_words(1_002_003) == "one million two thousand three"
    with pytest.raises(ValueError, match="1e9"):
        number_to_words(10**9)


def test_normalize_refuses_non_string() -> None:
    with pytest.raises(TextError, match="must be a string"):
        normalize_text(b"bytes")  # type: ignore[arg-type]


def test_special_ids_and_round_trip(tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.blank_id) == (0, 1, 2, 3, 4)
    ids = tokenizer.encode("A red circle, left of 2 blue squares!")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == "a red circle left of two blue squares"
    assert tokenizer.encode("A red circle, left of 2 blue squares!", add_special=False) == ids[1:-1]


def test_every_word_is_representable_without_unk(tokenizer: Tokenizer) -> None:
    # Letters are in the initial alphabet, so even unseen words avoid <unk>.
    ids = tokenizer.encode("zebra quilt", add_special=False)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == "zebra quilt"


def test_unknown_characters_become_unk(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("日本 circle", add_special=False)
    assert tokenizer.unk_id in ids
    assert tokenizer.decode(ids).endswith("circle")


def test_word_starts_group_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("red circles", add_special=False)
    starts = [tokenizer.is_word_start(i) for i in ids]
    assert starts[0] and sum(starts) == 2


def test_save_load_and_transformers(tokenizer: Tokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    text = "seven three nine blue squares"
    assert loaded.encode(text) == tokenizer.encode(text)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast(normalize_text(text)).input_ids == tokenizer.encode(text)
    assert [fast.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)


def test_load_refuses_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_train_refuses_tiny_vocab_and_empty_corpus() -> None:
    with pytest.raises(TextError, match="too small"):
        train_tokenizer(CORPUS, vocab_size=10)
    with pytest.raises(TextError, match="saw no text"):
        train_tokenizer(["", "!!!"], vocab_size=64)


def test_id_to_token_out_of_range(tokenizer: Tokenizer) -> None:
    with pytest.raises(TextError, match="outside the vocabulary"):
        tokenizer.id_to_token(10_000)
