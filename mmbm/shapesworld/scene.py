"""The ShapesWorld scene graph and its visual vocabulary.

Owns what a scene *is*: the shapes, colours, sizes and background kinds a scene
may use, the ``Scene`` / ``SceneObject`` / ``Background`` dataclasses with their
JSON form (``to_dict`` / ``from_dict``), and the one rule that decides whether a
spatial relation holds between two objects (``relation_holds``). The sampler and
renderer (``shapes``) and the caption grammar and truth checker (``captions``)
both build on it, so they can never disagree about what "left of" means.

Coordinates are fractions of the image side, x to the right and y downwards, so
"above" means a smaller y. Pure data: imports only ``mmbm.errors`` from the
package and nothing from numpy, Pillow or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from mmbm.errors import DataError

# Nine shapes, each drawn inside a circle of the object's radius (see shapes.py).
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "pentagon",
    "hexagon",
    "diamond",
    "cross",
    "heart",
)

# Ten colours with everyday names, at least 80 apart in RGB from each other so a
# +-10 per-channel jitter never makes two of them meet.
COLOUR_RGB: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (215, 35, 35),
        "orange": (245, 135, 20),
        "yellow": (245, 215, 30),
        "green": (35, 160, 60),
        "blue": (35, 85, 215),
        "purple": (130, 50, 180),
        "pink": (240, 110, 180),
        "brown": (125, 75, 35),
        "black": (20, 20, 20),
        "white": (245, 245, 245),
    }
)
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

# Bounding-circle radius of each size, as a fraction of the image side: at 64 px a
# small object is about 12 px across and a large one about 19 px.
SIZE_RADIUS: Mapping[str, float] = MappingProxyType({"small": 0.09, "large": 0.15})
SIZES: tuple[str, ...] = tuple(SIZE_RADIUS)

BackgroundKind = Literal["solid", "gradient", "noise"]
BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "noise")

Relation = Literal["left_of", "right_of", "above", "below"]
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")

# A relation holds when the centres are at least this far apart along its axis
# (about 10 px at 64 px). The sampler never places two centres between
# RELATION_MARGIN / 2 and RELATION_MARGIN apart on an axis, so every pair of
# objects is either clearly apart or roughly aligned on each axis.
RELATION_MARGIN = 0.15


def _fail(message: str) -> DataError:
    return DataError(f"scene graph: {message}")


def _rgb(value: Any, name: str) -> tuple[int, int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(c, int) for c in value)):
        raise _fail(f"{name} must be three ints, got {value!r}")
    if not all(0 <= c <= 255 for c in value):
        raise _fail(f"{name} values must be in [0, 255], got {value!r}")
    return (value[0], value[1], value[2])


def _unit(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise _fail(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _keys(values: Any, required: tuple[str, ...], what: str) -> None:
    if not isinstance(values, Mapping):
        raise _fail(f"{what} must be an object, got {type(values).__name__}")
    missing = [k for k in required if k not in values]
    unknown = sorted(set(values) - set(required))
    if missing or unknown:
        raise _fail(f"{what} has missing key(s) {missing} or unknown key(s) {unknown}")


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape. ``colour`` is the name; ``rgb`` the jittered colour drawn."""

    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the width from the left edge
    y: float  # centre, fraction of the height from the top edge
    radius: float  # bounding-circle radius, fraction of the image side
    rotation: float  # degrees, counter-clockwise
    rgb: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise _fail(f"unknown shape {self.shape!r}; known: {SHAPES}")
        if self.colour not in COLOUR_RGB:
            raise _fail(f"unknown colour {self.colour!r}; known: {COLOURS}")
        if self.size not in SIZE_RADIUS:
            raise _fail(f"unknown size {self.size!r}; known: {SIZES}")
        _unit(self.x, "x")
        _unit(self.y, "y")
        if not 0.0 < self.radius <= 0.5:
            raise _fail(f"radius must be in (0, 0.5], got {self.radius!r}")
        _rgb(self.rgb, "rgb")

    @property
    def pair(self) -> tuple[str, str]:
        """The (shape, colour) pair the compositional split is about."""
        return (self.shape, self.colour)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "x": self.x,
            "y": self.y,
            "radius": self.radius,
            "rotation": self.rotation,
            "rgb": list(self.rgb),
        }

    @classmethod
    def from_dict(cls, values: Any) -> SceneObject:
        fields = ("shape", "colour", "size", "x", "y", "radius", "rotation", "rgb")
        _keys(values, fields, "object")
        if not isinstance(values["rotation"], int | float):
            raise _fail(f"rotation must be a number, got {values['rotation']!r}")
        return cls(
            shape=values["shape"],
            colour=values["colour"],
            size=values["size"],
            x=_unit(values["x"], "x"),
            y=_unit(values["y"], "y"),
            radius=float(values["radius"]),
            rotation=float(values["rotation"]),
            rgb=_rgb(values["rgb"], "rgb"),
        )


@dataclass(frozen=True)
class Background:
    """A solid colour, a linear gradient from ``rgb`` to ``rgb2`` along ``angle``
    degrees, or a smooth noise texture around ``rgb`` seeded by ``noise_seed``."""

    kind: str
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]  # gradient end colour; equals rgb for other kinds
    angle: float  # gradient direction in degrees (0 = left to right)
    noise_seed: int  # seeds the noise texture; 0 for other kinds

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_KINDS:
            raise _fail(f"unknown background kind {self.kind!r}; known: {BACKGROUND_KINDS}")
        _rgb(self.rgb, "background rgb")
        _rgb(self.rgb2, "background rgb2")
        if not isinstance(self.noise_seed, int) or self.noise_seed < 0:
            raise _fail(f"noise_seed must be a non-negative int, got {self.noise_seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rgb": list(self.rgb),
            "rgb2": list(self.rgb2),
            "angle": self.angle,
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, values: Any) -> Background:
        _keys(values, ("kind", "rgb", "rgb2", "angle", "noise_seed"), "background")
        if not isinstance(values["angle"], int | float):
            raise _fail(f"background angle must be a number, got {values['angle']!r}")
        return cls(
            kind=values["kind"],
            rgb=_rgb(values["rgb"], "background rgb"),
            rgb2=_rgb(values["rgb2"], "background rgb2"),
            angle=float(values["angle"]),
            noise_seed=values["noise_seed"],
        )


@dataclass(frozen=True)
class Scene:
    """A scene graph: 1-3 objects on a background. ``Scene.from_dict(s.to_dict()) == s``."""

    objects: tuple[SceneObject, ...]
    background: Background

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 3:
            raise _fail(f"a scene holds 1 to 3 objects, got {len(self.objects)}")

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background.to_dict()}

    @classmethod
    def from_dict(cls, values: Any) -> Scene:
        _keys(values, ("objects", "background"), "scene")
        if not isinstance(values["objects"], list):
            raise _fail(f"objects must be a list, got {type(values['objects']).__name__}")
        objects = tuple(SceneObject.from_dict(o) for o in values["objects"])
        return cls(objects=objects, background=Background.from_dict(values["background"]))


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (e.g. a left_of b), with RELATION_MARGIN to spare."""
    if relation == "left_of":
        return b.x - a.x >= RELATION_MARGIN
    if relation == "right_of":
        return a.x - b.x >= RELATION_MARGIN
    if relation == "above":
        return b.y - a.y >= RELATION_MARGIN
    if relation == "below":
        return a.y - b.y >= RELATION_MARGIN
    raise ValueError(f"unknown relation {relation!r}; known: {RELATIONS}")


def mirror_scene(scene: Scene) -> Scene:
    """The scene flipped left to right: what a horizontally flipped image shows.

    Pair it with ``captions.mirror_caption`` when flipping images for augmentation.
    Every shape is mirror-symmetric, so a mirrored object is the same shape with
    its rotation negated.
    """
    objects = tuple(
        SceneObject(
            shape=o.shape,
            colour=o.colour,
            size=o.size,
            x=round(1.0 - o.x, 4),
            y=o.y,
            radius=o.radius,
            rotation=-o.rotation if o.rotation else 0.0,
            rgb=o.rgb,
        )
        for o in scene.objects
    )
    bg = scene.background
    background = Background(bg.kind, bg.rgb, bg.rgb2, round((180.0 - bg.angle) % 360.0, 1), bg.noise_seed)
    return Scene(objects=objects, background=background)
