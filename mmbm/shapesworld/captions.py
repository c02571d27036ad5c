"""ShapesWorld captions: the grammar that writes them and the checker that judges them.

Owns the caption vocabulary (``VOCABULARY``, under 70 words), the grammar
(``captions_for``, ``canonical_caption``), the parser (``parse``) and the truth
checker (``check``, ``judge``). Imports ``mmbm.shapesworld.scene`` for the scene graph
and the relation rule, and ``mmbm.tokenizer.normalize_text``; never the renderer
(``shapes``), torch or the model.

Grammar (every caption is lowercase words separated by single spaces)::

    caption    := [background] [frame] clause (["and"] clause)* [background]
                  (at most one background phrase)
    frame      := "there is" | "there are" | "a picture of" | "an image of" | "a drawing of"
    clause     := mention (relation mention)*
    mention    := count [size] [colour] noun
    count      := "a" | "an" | "one" | "two" | "three"
    size       := "small" | "large" | "big"            ("big" means large)
    noun       := a shape or its plural ("crosses"), or "shape" / "shapes" for any shape;
                  singular exactly when the count is one
    relation   := "to the left of" | "left of" | "to the right of" | "right of"
                  | "above" | "below" | "under"        ("under" means below)
    background := "on a" ("plain" | "gradient" | "textured" | "noisy") "background"

Meaning: a mention says the scene holds *exactly* that many objects with the
stated attributes ("two red circles": exactly two objects are red circles);
"a red circle to the left of a blue square" says every object the first
mention denotes is left of every object the second denotes
(``scene.relation_holds``); "plain", "gradient" and "textured"/"noisy" name
the solid, gradient and noise backgrounds. A caption is *faithful* when all of
this is true and *complete* when every object is denoted by a mention that
states both its colour and its shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from mmbm.shapesworld.scene import COLOURS, RELATIONS, SHAPES, Scene, SceneObject, relation_holds
from mmbm.tokenizer import normalize_text

COUNT_WORDS: Mapping[str, int] = MappingProxyType({"a": 1, "an": 1, "one": 1, "two": 2, "three": 3})
NUMBER_WORDS: Mapping[int, str] = MappingProxyType({1: "one", 2: "two", 3: "three"})
SIZE_WORDS: Mapping[str, str] = MappingProxyType({"small": "small", "large": "large", "big": "large"})
PLURALS: Mapping[str, str] = MappingProxyType({s: s + ("es" if s.endswith("s") else "s") for s in SHAPES})
SINGULARS: Mapping[str, str] = MappingProxyType({p: s for s, p in PLURALS.items()})
GENERIC_NOUN, GENERIC_PLURAL = "shape", "shapes"  # any shape
RELATION_PHRASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "left_of": ("to the left of", "left of"),
        "right_of": ("to the right of", "right of"),
        "above": ("above",),
        "below": ("below", "under"),
    }
)
FRAMES: tuple[str, ...] = ("there is", "there are", "a picture of", "an image of", "a drawing of")
BACKGROUND_WORDS: Mapping[str, str] = MappingProxyType(
    {"plain": "solid", "gradient": "gradient", "textured": "noise", "noisy": "noise"}
)
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(COUNT_WORDS)
        | set(SIZE_WORDS)
        | set(COLOURS)
        | set(SHAPES)
        | set(SINGULARS)
        | {GENERIC_NOUN, GENERIC_PLURAL, "and", "on", "background"}
        | set(BACKGROUND_WORDS)
        | {w for phrases in RELATION_PHRASES.values() for p in phrases for w in p.split()}
        | {w for f in FRAMES for w in f.split()}
    )
)

# Which attributes a caption states for its objects, and how often the grammar picks each.
LEVELS: tuple[tuple[str, ...], ...] = (
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("size", "shape"),
    ("shape",),
    ("colour",),
    (),  # "three shapes": a count only
)
LEVEL_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.05, 0.1, 0.1, 0.05)
P_RELATION = 0.5  # chance a caption with two or more mentions states a relation
P_BACKGROUND = 0.3  # chance a caption mentions the background
P_ONE = 0.15  # chance a single object is counted "one" rather than "a"
P_BIG = 0.3  # chance "large" is said "big"
MAX_DRAWS_PER_CAPTION = 100  # random draws allowed per distinct caption wanted


@dataclass(frozen=True)
class Mention:
    """``count`` objects with the stated attributes; ``None`` leaves one unstated."""

    count: int
    shape: str | None
    colour: str | None
    size: str | None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )

    def names(self, obj: SceneObject) -> bool:
        """Whether this mention names ``obj``: it states its colour and its shape."""
        return self.shape is not None and self.colour is not None and self.matches(obj)

    def text(self) -> str:
        """The mention as plain words, e.g. "two small red circles"."""
        noun = self.shape or GENERIC_NOUN
        if self.count != 1:
            noun = PLURALS.get(noun, GENERIC_PLURAL)
        words = [NUMBER_WORDS[self.count], self.size, self.colour, noun]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class RelationClaim:
    """Mention ``subject`` stands in ``relation`` to mention ``object`` (indices into mentions)."""

    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class Constraints:
    """What a caption claims about a scene."""

    mentions: tuple[Mention, ...]
    relations: tuple[RelationClaim, ...]
    background: str | None  # a background kind, or None when not mentioned


@dataclass(frozen=True)
class ParseResult:
    """``constraints`` when the caption parses (``ok``); otherwise ``reason`` says why not."""

    ok: bool
    constraints: Constraints | None
    reason: str


@dataclass(frozen=True)
class Verdict:
    """How a caption fares against a scene; ``reasons`` lists each false claim and unnamed object."""

    parsed: bool
    faithful: bool
    complete: bool
    reasons: tuple[str, ...]


# ---------------------------------------------------------------------------
# The grammar
# ---------------------------------------------------------------------------


def _groups(scene: Scene, level: tuple[str, ...]) -> list[tuple[Mention, list[SceneObject]]]:
    """Objects grouped by the attributes ``level`` states, leftmost group first."""
    groups: dict[tuple[str | None, ...], list[SceneObject]] = {}
    for obj in sorted(scene.objects, key=lambda o: (o.x, o.y)):
        key = tuple(
            getattr(obj, attribute) if attribute in level else None for attribute in ("shape", "colour", "size")
        )
        groups.setdefault(key, []).append(obj)
    return [(Mention(len(objs), key[0], key[1], key[2]), objs) for key, objs in groups.items()]


def _mention_words(mention: Mention, rng: np.random.Generator | None) -> str:
    """The mention in words; ``rng=None`` gives the plain canonical wording."""
    size = mention.size
    if size == "large" and rng is not None and rng.random() < P_BIG:
        size = "big"
    noun = mention.shape or GENERIC_NOUN
    if mention.count != 1:
        noun = PLURALS.get(noun, GENERIC_PLURAL)
    rest = " ".join(w for w in (size, mention.colour, noun) if w)
    if mention.count != 1:
        return f"{NUMBER_WORDS[mention.count]} {rest}"
    if rng is not None and rng.random() < P_ONE:
        return f"one {rest}"
    return f"{'an' if rest[0] in 'aeiou' else 'a'} {rest}"


def _join(parts: list[str], rng: np.random.Generator | None) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng is not None and len(parts) > 2 and rng.random() < 0.5:
        return " and ".join(parts)
    return " ".join(parts[:-1]) + " and " + parts[-1]


def _relation_choices(groups: list[tuple[Mention, list[SceneObject]]]) -> list[tuple[int, str, int]]:
    return [
        (i, relation, j)
        for i, (_, subjects) in enumerate(groups)
        for j, (_, objects) in enumerate(groups)
        if i != j
        for relation in RELATIONS
        if all(relation_holds(a, b, relation) for a in subjects for b in objects)
    ]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption drawn from the grammar; it is always faithful to ``scene``."""
    allowed = [k for k, level in enumerate(LEVELS) if level or len(scene.objects) > 1]
    weights = np.array([LEVEL_WEIGHTS[k] for k in allowed])
    level = LEVELS[allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))]]
    groups = _groups(scene, level)
    order = [int(k) for k in rng.permutation(len(groups))]
    relations = _relation_choices(groups) if len(groups) > 1 and rng.random() < P_RELATION else []
    if relations:
        i, relation, j = relations[int(rng.integers(len(relations)))]
        phrase = _pick(rng, RELATION_PHRASES[relation])
        first = f"{_mention_words(groups[i][0], rng)} {phrase} {_mention_words(groups[j][0], rng)}"
        parts = [first] + [_mention_words(groups[k][0], rng) for k in order if k not in (i, j)]
        first_count = groups[i][0].count
    else:
        parts = [_mention_words(groups[k][0], rng) for k in order]
        first_count = groups[order[0]][0].count
    body = _join(parts, rng)
    frame = _pick(rng, ("", "there is", "a picture of", "an image of", "a drawing of"))
    if frame == "there is" and first_count > 1:
        frame = "there are"
    words = f"{frame} {body}".strip()
    if rng.random() < P_BACKGROUND:
        kind = scene.background.kind
        word = _pick(rng, [w for w, k in BACKGROUND_WORDS.items() if k == kind])
        phrase = f"on a {word} background"
        words = f"{phrase} {words}" if rng.random() < 0.3 else f"{words} {phrase}"
    return words


def captions_for(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` different captions of ``scene``, each faithful to it, in the order drawn."""
    captions: list[str] = []
    for _ in range(MAX_DRAWS_PER_CAPTION * n):
        caption = random_caption(scene, rng)
        if caption not in captions:
            captions.append(caption)
            if len(captions) == n:
                return captions
    raise RuntimeError(f"the grammar produced only {len(captions)} distinct captions for a scene, wanted {n}")


def canonical_caption(scene: Scene) -> str:
    """The one deterministic, complete caption: every object by size, colour and shape,
    left to right, e.g. "a small red circle and two large blue squares"."""
    groups = _groups(scene, ("size", "colour", "shape"))
    return _join([_mention_words(mention, None) for mention, _ in groups], None)


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


class _ParseError(Exception):
    pass


_RELATION_WORDS: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    sorted(
        ((tuple(p.split()), name) for name, phrases in RELATION_PHRASES.items() for p in phrases),
        key=lambda item: -len(item[0]),
    )
)
_RELATION_STARTS = frozenset(words[0] for words, _ in _RELATION_WORDS)


class _Parser:
    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.pos = 0
        self.mentions: list[Mention] = []
        self.relations: list[RelationClaim] = []

    def _peek(self, offset: int = 0) -> str | None:
        k = self.pos + offset
        return self.words[k] if k < len(self.words) else None

    def _next(self, expected: str) -> str:
        word = self._peek()
        if word is None:
            raise _ParseError(f"caption ends early; expected {expected}")
        self.pos += 1
        return word

    def parse(self) -> Constraints:
        background = self._background()
        self._frame()
        self._clause()
        while self._peek() is not None:
            if self._peek() == "on":
                if background is not None:
                    raise _ParseError("the background is mentioned twice")
                background = self._background()
                if self._peek() is not None:
                    raise _ParseError(f"unexpected {self._peek()!r} after the background phrase")
                break
            if self._peek() == "and":
                self.pos += 1
            self._clause()
        return Constraints(tuple(self.mentions), tuple(self.relations), background)

    def _background(self) -> str | None:
        if self._peek() != "on":
            return None
        words = self.words[self.pos : self.pos + 4]
        self.pos += 4
        if (
            len(words) < 4
            or words[1] not in ("a", "an")
            or words[2] not in BACKGROUND_WORDS
            or words[3] != "background"
        ):
            raise _ParseError(f"expected 'on a <{'|'.join(BACKGROUND_WORDS)}> background', got {' '.join(words)!r}")
        return BACKGROUND_WORDS[words[2]]

    def _frame(self) -> None:
        if self._peek() == "there":
            self.pos += 1
            word = self._next("'is' or 'are' after 'there'")
            if word not in ("is", "are"):
                raise _ParseError(f"expected 'is' or 'are' after 'there', got {word!r}")
        elif self._peek() in ("a", "an") and self._peek(1) in ("picture", "image", "drawing"):
            self.pos += 2
            word = self._next(f"'of' after {self.words[self.pos - 1]!r}")
            if word != "of":
                raise _ParseError(f"expected 'of' after {self.words[self.pos - 2]!r}, got {word!r}")

    def _clause(self) -> None:
        subject = self._mention()
        while self._peek() in _RELATION_STARTS:
            relation = self._relation()
            target = self._mention()
            self.relations.append(RelationClaim(subject, relation, target))
            subject = target

    def _relation(self) -> str:
        for words, name in _RELATION_WORDS:
            if tuple(self.words[self.pos : self.pos + len(words)]) == words:
                self.pos += len(words)
                return name
        rest = " ".join(self.words[self.pos : self.pos + 4])
        raise _ParseError(
            f"incomplete relation at {rest!r}; expected one of {[' '.join(w) for w, _ in _RELATION_WORDS]}"
        )

    def _mention(self) -> int:
        position = self.pos + 1
        word = self._next("a count word (a, one, two, three)")
        if word not in COUNT_WORDS:
            raise _ParseError(f"expected a count word (a, one, two, three) at word {position}, got {word!r}")
        count = COUNT_WORDS[word]
        size = colour = None
        word = self._next("a shape word")
        if word in SIZE_WORDS:
            size = SIZE_WORDS[word]
            word = self._next("a shape word")
        if word in COLOURS:
            colour = word
            word = self._next("a shape word")
        if word in (GENERIC_NOUN, GENERIC_PLURAL):
            shape, plural = None, word == GENERIC_PLURAL
        elif word in SHAPES or word in SINGULARS:
            shape, plural = SINGULARS.get(word, word), word in SINGULARS
        else:
            raise _ParseError(f"expected a shape word at word {self.pos}, got {word!r}")
        if plural != (count > 1):
            raise _ParseError(f"count and noun disagree in number: {self.words[position - 1]!r} ... {word!r}")
        self.mentions.append(Mention(count, shape, colour, size))
        return len(self.mentions) - 1


def parse(caption: str) -> ParseResult:
    """Parse a caption into constraints, or say why it cannot be parsed (never guess).

    The caption is normalised first (``normalize_text``: case, punctuation, digits).
    """
    words = normalize_text(caption).split()
    if not words:
        return ParseResult(False, None, "empty caption")
    unknown = sorted({w for w in words if w not in VOCABULARY})
    if unknown:
        return ParseResult(False, None, f"word(s) outside the ShapesWorld vocabulary: {unknown}")
    try:
        constraints = _Parser(words).parse()
    except _ParseError as e:
        return ParseResult(False, None, str(e))
    return ParseResult(True, constraints, "")


# ---------------------------------------------------------------------------
# The truth checker
# ---------------------------------------------------------------------------


def _object_text(obj: SceneObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def check(constraints: Constraints, scene: Scene) -> Verdict:
    """Judge parsed constraints against a scene (see the module docstring for the meaning)."""
    false_claims: list[str] = []
    denoted = [[o for o in scene.objects if m.matches(o)] for m in constraints.mentions]
    for mention, objs in zip(constraints.mentions, denoted, strict=True):
        if len(objs) != mention.count:
            false_claims.append(f"{mention.text()!r}: the scene has {len(objs)}")
    for claim in constraints.relations:
        subjects, objects = denoted[claim.subject], denoted[claim.object]
        if not (subjects and objects and all(relation_holds(a, b, claim.relation) for a in subjects for b in objects)):
            subject_text = constraints.mentions[claim.subject].text()
            object_text = constraints.mentions[claim.object].text()
            false_claims.append(f"{subject_text!r} is not {claim.relation.replace('_', ' ')} {object_text!r}")
    if constraints.background is not None and constraints.background != scene.background.kind:
        false_claims.append(f"the background is {scene.background.kind}, not {constraints.background}")
    unnamed = [o for o in scene.objects if not any(m.names(o) for m in constraints.mentions)]
    reasons = tuple(false_claims) + tuple(f"not named: the {_object_text(o)}" for o in unnamed)
    return Verdict(parsed=True, faithful=not false_claims, complete=not unnamed, reasons=reasons)


def judge(caption: str, scene: Scene) -> Verdict:
    """Parse and check in one step; an unparseable caption is neither faithful nor complete."""
    result = parse(caption)
    if result.constraints is None:
        return Verdict(parsed=False, faithful=False, complete=False, reasons=(f"unparseable: {result.reason}",))
    return check(result.constraints, scene)
