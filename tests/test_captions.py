"""Caption grammar and truth checker: acceptance of grammar captions, rejection of mutations."""

from __future__ import annotations

import numpy as np
import pytest

from mmbm.shapesworld.captions import (
    BACKGROUND_WORDS,
    PLURALS,
    SINGULARS,
    SIZE_WORDS,
    VOCABULARY,
    canonical_caption,
    captions_for,
    check,
    judge,
    parse,
)
from mmbm.shapesworld.scene import COLOURS, SHAPES, Background, Scene, SceneObject, mirror_scene
from mmbm.shapesworld.shapes import ShapesConfig, sample_scene
from mmbm.tokenizer import normalize_text

CONFIG = ShapesConfig()


def _scenes_with_captions(seed: int, n: int) -> list[tuple[Scene, list[str]]]:
    items = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        scene = sample_scene(rng, CONFIG)
        items.append((scene, captions_for(scene, rng, 5)))
    return items


@pytest.fixture(scope="module")
def corpus() -> list[tuple[Scene, list[str]]]:
    return _scenes_with_captions(42, 2000)


def test_vocabulary_is_small_and_captions_are_normalised_words_from_it(corpus) -> None:
    assert len(VOCABULARY) < 150
    vocabulary = set(VOCABULARY)
    for _, captions in corpus[:500]:
        for caption in captions:
            assert normalize_text(caption) == caption
            assert set(caption.split()) <= vocabulary


def test_five_different_captions_per_scene_deterministic_from_the_generator(corpus) -> None:
    for _, captions in corpus:
        assert len(captions) == len(set(captions)) == 5
    again = _scenes_with_captions(42, 50)
    assert [c for _, c in again] == [c for _, c in corpus[:50]]
    scene = corpus[0][0]
    assert captions_for(scene, np.random.default_rng(1), 12) != captions_for(scene, np.random.default_rng(2), 12)


def test_grammar_uses_paraphrases_counts_relations_sizes_and_backgrounds(corpus) -> None:
    text = " | ".join(c for _, captions in corpus for c in captions)
    for phrase in (
        "there is a",
        "there are two",
        "a picture of",
        "an image of",
        "a drawing of",
        "to the left of",
        "right of",
        " above ",
        " below ",
        " under ",
        "two ",
        "three shapes",
        "small ",
        "large ",
        "big ",
        "on a plain background",
        "on a gradient background",
        "on a textured background",
        "on a noisy background",
    ):
        assert phrase in text, phrase
    assert sum(len(s.objects) == 3 for s, _ in corpus) > 300


def test_checker_accepts_ten_thousand_grammar_captions(corpus) -> None:
    n_checked = 0
    for scene, captions in corpus:
        for caption in captions:
            verdict = judge(caption, scene)
            assert verdict.parsed and verdict.faithful, (caption, verdict.reasons)
            n_checked += 1
        canonical = judge(canonical_caption(scene), scene)
        assert canonical.faithful and canonical.complete, canonical.reasons
    assert n_checked >= 10_000


def _replace(words: list[str], k: int, word: str) -> str:
    return " ".join(words[:k] + [word] + words[k + 1 :])


def _mutations(scene: Scene, caption: str) -> dict[str, list[str]]:
    """Captions made false by one edit each, grouped by the kind of edit."""
    words = caption.split()
    present_shapes = {o.shape for o in scene.objects}
    absent_colour = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
    absent_shape = next(s for s in SHAPES if s not in present_shapes)
    out: dict[str, list[str]] = {"colour": [], "shape": [], "count": [], "relation": [], "size": [], "background": []}
    flips = {"left": "right", "right": "left", "above": "below", "below": "above", "under": "above"}
    for k, word in enumerate(words):
        if word in COLOURS:
            out["colour"].append(_replace(words, k, absent_colour))
        if word in SHAPES:
            out["shape"].append(_replace(words, k, absent_shape))
        elif word in SINGULARS:
            out["shape"].append(_replace(words, k, PLURALS[absent_shape]))
        if word in ("two", "three"):  # stays plural, so the caption still parses
            out["count"].append(_replace(words, k, "three" if word == "two" else "two"))
        is_article = word in ("a", "an", "one") and words[k + 1] not in ("picture", "image", "drawing")
        if is_article and (k == 0 or words[k - 1] != "on"):  # "on a plain background" is no mention
            end = next(j for j in range(k + 1, len(words)) if words[j] in SHAPES or words[j] == "shape")
            plural = PLURALS.get(words[end], "shapes")
            out["count"].append(" ".join(words[:k] + ["two"] + words[k + 1 : end] + [plural] + words[end + 1 :]))
        if word in flips:
            out["relation"].append(_replace(words, k, flips[word]))
        if word in BACKGROUND_WORDS and k + 1 < len(words) and words[k + 1] == "background":
            other = next(w for w, kind in BACKGROUND_WORDS.items() if kind != scene.background.kind)
            out["background"].append(_replace(words, k, other))
        if word in SIZE_WORDS:
            # Only a size no object with the stated colour/shape has makes the caption false for sure.
            flipped = "small" if SIZE_WORDS[word] == "large" else "large"
            colour = words[k + 1] if words[k + 1] in COLOURS else None
            noun = words[k + 2] if colour else words[k + 1]
            shape = SINGULARS.get(noun, noun if noun in SHAPES else None)
            if not any(
                o.size == flipped and colour in (None, o.colour) and shape in (None, o.shape) for o in scene.objects
            ):
                out["size"].append(_replace(words, k, flipped))
    return out


def test_checker_rejects_each_kind_of_mutation(corpus) -> None:
    tried = dict.fromkeys(("colour", "shape", "count", "relation", "size", "background"), 0)
    for scene, captions in corpus[:600]:
        for caption in captions:
            for kind, mutants in _mutations(scene, caption).items():
                for mutant in mutants:
                    verdict = judge(mutant, scene)
                    assert verdict.parsed, (kind, mutant, verdict.reasons)
                    assert not verdict.faithful, (kind, caption, mutant)
                    tried[kind] += 1
    assert min(tried.values()) >= 100, tried


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("", "empty caption"),
        ("a banana next to a red circle", "outside the ShapesWorld vocabulary: ['banana', 'next']"),
        ("red circle", "expected a count word"),
        ("two red circle", "disagree in number"),
        ("a red circles", "disagree in number"),
        ("a red", "ends early; expected a shape word"),
        ("a red circle and", "ends early"),
        ("a red circle to the", "incomplete relation"),
        ("a red circle red", "expected a count word"),
        ("there a red circle", "expected 'is' or 'are' after 'there'"),
        ("on a plain background a red circle on a gradient background", "background is mentioned twice"),
        ("a red circle on the background", "expected 'on a <plain|gradient|textured|noisy> background'"),
    ],
)
def test_unparseable_captions_are_reported_not_guessed(caption: str, reason: str) -> None:
    result = parse(caption)
    assert not result.ok and result.constraints is None
    assert reason in result.reason
    verdict = judge(caption, _two_object_scene())
    assert not verdict.parsed and not verdict.faithful and not verdict.complete
    assert verdict.reasons[0].startswith("unparseable: ")


def _two_object_scene() -> Scene:
    red = SceneObject("circle", "red", "small", 0.2, 0.5, 0.09, 0.0, (215, 35, 35))
    blue = SceneObject("square", "blue", "large", 0.7, 0.5, 0.15, 5.0, (35, 85, 215))
    return Scene((red, blue), Background("solid", (200, 200, 200), (200, 200, 200), 0.0, 0))


@pytest.mark.parametrize(
    ("caption", "faithful", "complete"),
    [
        ("a red circle to the left of a blue square", True, True),
        ("There is a RED circle, left of 1 big blue square.", True, True),  # normalised first
        ("a blue square right of a red circle on a plain background", True, True),
        ("a red circle", True, False),
        ("two shapes", True, False),
        ("a red shape and a blue shape", True, False),
        ("a small circle and a large square", True, False),
        ("two red circles and a blue square", False, True),
        ("three shapes", False, False),
        ("a red circle above a blue square", False, True),
        ("a red circle to the right of a blue square", False, True),
        ("a small blue square", False, False),
        ("a red circle on a textured background", False, False),
        ("a green circle", False, False),
    ],
)
def test_checker_semantics_on_a_hand_made_scene(caption: str, faithful: bool, complete: bool) -> None:
    result = parse(caption)
    assert result.ok, result.reason
    verdict = check(result.constraints, _two_object_scene())
    assert (verdict.faithful, verdict.complete) == (faithful, complete), verdict.reasons
    assert bool(verdict.reasons) == (not faithful or not complete)


def test_reasons_name_the_false_claim_and_the_unnamed_object() -> None:
    verdict = judge("two red circles above a blue square", _two_object_scene())
    assert "'two red circles': the scene has 1" in verdict.reasons
    assert "'two red circles' is not above 'one blue square'" in verdict.reasons
    assert judge("a red circle", _two_object_scene()).reasons == ("not named: the large blue square",)


def test_canonical_caption_is_deterministic_and_lists_objects_left_to_right() -> None:
    scene = _two_object_scene()
    assert canonical_caption(scene) == "a small red circle and a large blue square"
    assert canonical_caption(mirror_scene(scene)) == "a large blue square and a small red circle"


def test_mirrored_captions_are_true_of_mirrored_scenes(corpus) -> None:
    swap = {"left": "right", "right": "left"}
    for scene, captions in corpus[:300]:
        for caption in captions:
            mirrored = " ".join(swap.get(w, w) for w in caption.split())
            assert judge(mirrored, mirror_scene(scene)).faithful, mirrored
