"""Each metric against examples computed by hand."""

import numpy as np
import pytest
import torch

from mmbm.errors import MMBMError
from mmbm.evaluate.metrics import caption_scores, error_rates, recall_at_k, semantic_precision_at_k


def test_error_rates_hand_computed() -> None:
    # "a red circle" vs "a blue circle": 1 substitution of 3 words.
    # "seven three nine" vs "seven nine": 1 deletion of 3 words. Corpus WER = 2/6.
    rates = error_rates(["a red circle", "seven three nine"], ["a blue circle", "seven nine"])
    assert rates.wer == pytest.approx(2 / 6)
    assert rates.word_accuracy == pytest.approx(4 / 6)
    assert rates.n_words == 6 and rates.n_utterances == 2
    # characters: "a red circle" (12) -> "a blue circle": red->blue is 3 subs + 1 insertion = 4 edits;
    # "seven three nine" (16) -> "seven nine": 6 deletions ("three "). CER = 10 / 28.
    assert rates.cer == pytest.approx(10 / 28)


def test_error_rates_perfect_and_insertions() -> None:
    assert error_rates(["two"], ["two"]).wer == 0.0
    rates = error_rates(["two"], ["two two two"])
    assert rates.wer == pytest.approx(2.0)  # two insertions over one reference word
    assert rates.word_accuracy == 1.0


def test_error_rates_refusals() -> None:
    with pytest.raises(MMBMError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(MMBMError, match="reference transcript is empty"):
        error_rates([" "], ["a"])
    with pytest.raises(MMBMError, match="no utterances"):
        error_rates([], [])


def test_caption_scores_perfect_and_wrong() -> None:
    refs = {"1": ["a red circle on a white background", "there is a red circle"], "2": ["two blue squares above a star"]}
    perfect = caption_scores(refs, {"1": "a red circle on a white background", "2": "two blue squares above a star"})
    assert perfect.bleu4 == pytest.approx(1.0, abs=1e-6)
    wrong = caption_scores(refs, {"1": "green hexagon", "2": "yellow cross"})
    assert wrong.bleu4 < 1e-3 and wrong.cider == pytest.approx(0.0, abs=1e-6)
    assert perfect.cider > 1.0 > wrong.cider


def test_caption_scores_refuses_mismatched_ids() -> None:
    with pytest.raises(MMBMError, match="same image ids"):
        caption_scores({"1": ["a"]}, {"2": "a"})


def test_recall_at_k_hand_computed() -> None:
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.2],  # query 0: item 0 ranked first
            [0.8, 0.1, 0.7, 0.2],  # query 1: positive item 2 ranked second
            [0.1, 0.2, 0.3, 0.0],  # query 2: positive item 3 ranked last
        ]
    )
    recall = recall_at_k(similarity, [{0}, {2}, {3}], ks=[1, 2, 4])
    assert recall == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 4: pytest.approx(1.0)}
    # Several positives: a hit is any of them (image -> its five captions).
    assert recall_at_k(similarity, [{1, 0}, {0}, {1, 2}], ks=[1]) == {1: pytest.approx(1.0)}


def test_semantic_precision_hand_computed() -> None:
    ranked = np.array([[0, 1, 2], [2, 0, 1]])
    relevant = np.array([[True, False, True], [True, False, False]])
    assert semantic_precision_at_k(ranked, relevant, k=1) == pytest.approx(0.5)
    assert semantic_precision_at_k(ranked, relevant, k=3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(MMBMError, match="only 3 ranked items"):
        semantic_precision_at_k(ranked, relevant, k=4)
