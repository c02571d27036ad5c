"""ShapesWorld generation: the generator config, scene sampling and rendering.

Owns ``ShapesConfig`` (frozen, validated: image size, split sizes, objects per
scene, captions per scene, held-out pairs, background kinds, seed), the choice
of held-out colour-shape pairs (``heldout_pairs``), the sampler
(``sample_scene``) and the anti-aliased renderer (``render_scene``). The scene
graph and the visual vocabulary live in ``scene`` and are re-exported here.

A scene depends only on the numpy ``Generator`` handed to ``sample_scene``, and
an image only on its scene and size, so a corpus is the same whatever order or
process renders it. Imports ``mmbm.errors`` and ``mmbm.shapesworld.scene`` only; never
torch, the model or the captions module.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmbm.config import require
from mmbm.shapesworld.scene import (
    BACKGROUND_KINDS,
    COLOUR_RGB,
    COLOURS,
    RELATION_MARGIN,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    Background,
    Scene,
    SceneObject,
)

__all__ = [
    "BACKGROUND_KINDS",
    "COLOURS",
    "COLOUR_RGB",
    "SHAPES",
    "SIZES",
    "Background",
    "Scene",
    "SceneObject",
    "ShapesConfig",
    "heldout_pairs",
    "render_scene",
    "sample_scene",
]

EDGE_PAD = 0.03  # objects keep this far (fraction of the side) from the border
OBJECT_GAP = 0.04  # bounding circles of two objects keep this far apart
SIZE_JITTER = 0.06  # radius varies by +-6% around its size's radius
COLOUR_JITTER = 10  # per-channel RGB jitter around the named colour
MAX_ROTATION = 15.0  # degrees either way
DUPLICATE_PROB = 0.25  # chance that a later object repeats the first one's pair ("two red circles")
PLACE_ATTEMPTS = 100  # positions tried per object before restarting the layout
LAYOUT_ATTEMPTS = 1_000  # layouts tried before giving up (never reached in practice)
MIN_CONTRAST = 120.0  # RGB distance sought between object colours and background (else the best try)
BACKGROUND_ATTEMPTS = 100  # background colours tried; the most contrasting one wins
NOISE_AMPLITUDE = 18.0  # +- RGB swing of the smooth noise texture
NOISE_GRAIN = 4.0  # standard deviation of the per-pixel grain on top of it
NOISE_CELLS = 6  # the smooth texture is a 6 x 6 random grid upsampled bicubically
NOISE_REACH = (NOISE_AMPLITUDE + 2 * NOISE_GRAIN) * math.sqrt(3)  # how far noise strays from rgb
HELDOUT_STREAM = 7_919  # SeedSequence key for choosing held-out pairs; no split uses it
MAX_SPLIT_SIZE = 9_999_999  # ids carry seven digits


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that decides a ShapesWorld image corpus; equal configs give equal corpora."""

    image_size: int = 64  # square side in pixels (64 for the tiny preset, 224 for base)
    n_train: int = 20_000
    n_val: int = 1_000
    n_test: int = 1_000
    n_compositional: int = 1_000
    min_objects: int = 1
    max_objects: int = 3
    n_captions: int = 5  # captions per image, like COCO's five
    n_heldout_pairs: int = 8  # colour-shape pairs kept out of train/val/test
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    supersample: int = 4  # objects are drawn this many times larger, then box-downsampled
    seed: int = 0

    def __post_init__(self) -> None:
        require(32 <= self.image_size <= 1024, "image_size", f"must be in [32, 1024], got {self.image_size}")
        require(1 <= self.supersample <= 8, "supersample", f"must be in [1, 8], got {self.supersample}")
        require(
            self.image_size * self.supersample <= 4096,
            "supersample",
            f"image_size x supersample must be at most 4096, got {self.image_size * self.supersample}",
        )
        require(
            1 <= self.n_train <= MAX_SPLIT_SIZE, "n_train", f"must be in [1, {MAX_SPLIT_SIZE}], got {self.n_train}"
        )
        for name in ("n_val", "n_test", "n_compositional"):
            value = getattr(self, name)
            require(0 <= value <= MAX_SPLIT_SIZE, name, f"must be in [0, {MAX_SPLIT_SIZE}], got {value}")
        require(1 <= self.min_objects <= 3, "min_objects", f"must be in [1, 3], got {self.min_objects}")
        require(
            self.min_objects <= self.max_objects <= 3,
            "max_objects",
            f"must be in [min_objects={self.min_objects}, 3], got {self.max_objects}",
        )
        require(5 <= self.n_captions <= 20, "n_captions", f"must be in [5, 20], got {self.n_captions}")
        max_pairs = min(len(SHAPES), len(COLOURS))
        require(
            0 <= self.n_heldout_pairs <= max_pairs,
            "n_heldout_pairs",
            f"must be in [0, {max_pairs}] (one pair per shape and per colour), got {self.n_heldout_pairs}",
        )
        require(
            self.n_compositional == 0 or self.n_heldout_pairs > 0,
            "n_heldout_pairs",
            "must be at least 1 when n_compositional > 0 (compositional scenes show held-out pairs)",
        )
        require(len(self.backgrounds) > 0, "backgrounds", "must name at least one background kind")
        unknown = [b for b in self.backgrounds if b not in BACKGROUND_KINDS]
        require(not unknown, "backgrounds", f"unknown kind(s) {unknown}; choose from {BACKGROUND_KINDS}")
        require(len(set(self.backgrounds)) == len(self.backgrounds), "backgrounds", "must not repeat a kind")
        require(0 <= self.seed < 2**63, "seed", f"must be in [0, 2**63), got {self.seed}")

    @property
    def split_sizes(self) -> dict[str, int]:
        """Images per split, in the order splits are written."""
        return {
            "train": self.n_train,
            "val": self.n_val,
            "test": self.n_test,
            "compositional": self.n_compositional,
        }

    @classmethod
    def tiny(cls, **overrides: Any) -> ShapesConfig:
        """The default corpus for the tiny model (64 px)."""
        return cls(**overrides)

    @classmethod
    def base(cls, **overrides: Any) -> ShapesConfig:
        """A corpus for the base preset (224 px)."""
        values: dict[str, Any] = {"image_size": 224}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["backgrounds"] = list(self.backgrounds)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShapesConfig:
        """Rebuild from ``to_dict()`` output; unknown keys are refused by name."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        require(not unknown, "config", f"unknown field(s) {unknown}")
        values = dict(values)
        if isinstance(values.get("backgrounds"), list):
            values["backgrounds"] = tuple(values["backgrounds"])
        return cls(**values)


def heldout_pairs(seed: int, n_pairs: int) -> tuple[tuple[str, str], ...]:
    """The (shape, colour) pairs held out for the compositional split, chosen by the seed.

    No two pairs share a shape or a colour, so every shape and every colour is
    still seen in training, only never together.
    """
    rng = np.random.default_rng([seed, HELDOUT_STREAM])
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n_pairs]]
    colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:n_pairs]]
    return tuple(sorted(zip(shapes, colours, strict=True)))


def sample_scene(
    rng: np.random.Generator,
    config: ShapesConfig,
    exclude: frozenset[tuple[str, str]] = frozenset(),
    include: frozenset[tuple[str, str]] = frozenset(),
) -> Scene:
    """Sample one scene. No object shows a pair in ``exclude``; when ``include``
    is given, at least one object shows one of its pairs."""
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    pairs = _sample_pairs(rng, n_objects, exclude, include)
    for _ in range(LAYOUT_ATTEMPTS):
        objects = _layout(rng, pairs)
        if objects is not None:
            break
    else:
        raise RuntimeError(f"could not lay out {n_objects} objects in {LAYOUT_ATTEMPTS} attempts")
    kinds = config.backgrounds
    background = _sample_background(rng, kinds[int(rng.integers(len(kinds)))], [o.rgb for o in objects])
    return Scene(objects=tuple(objects), background=background)


def _sample_pairs(
    rng: np.random.Generator,
    n_objects: int,
    exclude: frozenset[tuple[str, str]],
    include: frozenset[tuple[str, str]],
) -> list[tuple[str, str]]:
    allowed = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in exclude]
    first_choices = sorted(include) if include else allowed
    pairs = [first_choices[int(rng.integers(len(first_choices)))]]
    for _ in range(n_objects - 1):
        if rng.random() < DUPLICATE_PROB:
            pairs.append(pairs[0])
        else:
            pairs.append(allowed[int(rng.integers(len(allowed)))])
    return [pairs[i] for i in rng.permutation(n_objects)]


def _layout(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> list[SceneObject] | None:
    placed: list[SceneObject] = []
    for shape, colour in pairs:
        size = SIZES[int(rng.integers(len(SIZES)))]
        radius = round(SIZE_RADIUS[size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER), 4)
        rotation = 0.0 if shape == "circle" else round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 1)
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOUR_RGB[colour], jitter, strict=True))
        low, high = radius + EDGE_PAD, 1.0 - radius - EDGE_PAD
        for _ in range(PLACE_ATTEMPTS):
            x, y = (round(float(v), 4) for v in rng.uniform(low, high, size=2))
            candidate = SceneObject(shape, colour, size, x, y, radius, rotation, rgb)  # type: ignore[arg-type]
            if all(_fits(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return placed


def _fits(a: SceneObject, b: SceneObject) -> bool:
    """No overlap, and on each axis the centres are clearly apart or roughly aligned."""
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    if math.hypot(dx, dy) < a.radius + b.radius + OBJECT_GAP:
        return False
    return all(d >= RELATION_MARGIN or d <= RELATION_MARGIN / 2 for d in (dx, dy))


def _hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _contrast(background: Background, object_rgbs: list[tuple[int, int, int]]) -> float:
    """The smallest RGB distance between an object colour and any background colour."""
    reach = NOISE_REACH if background.kind == "noise" else 0.0
    ends = (np.array(background.rgb, float), np.array(background.rgb2, float))
    return min(float(np.linalg.norm(np.array(c, float) - e)) - reach for c in object_rgbs for e in ends)


def _sample_background(rng: np.random.Generator, kind: str, object_rgbs: list[tuple[int, int, int]]) -> Background:
    best: Background | None = None
    best_contrast = -math.inf
    for _ in range(BACKGROUND_ATTEMPTS):
        # Muted colours (saturation <= 0.35) so the saturated object colours stand out.
        hue, saturation, value = rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.1, 0.95)
        rgb = _hsv_rgb(hue, saturation, value)
        rgb2, angle, noise_seed = rgb, 0.0, 0
        if kind == "gradient":
            shift = rng.uniform(0.15, 0.3) * (1 if value < 0.5 else -1)
            rgb2 = _hsv_rgb(hue, saturation, value + shift)
            angle = round(float(rng.uniform(0.0, 360.0)), 1)
        elif kind == "noise":
            noise_seed = int(rng.integers(2**31))
        candidate = Background(kind, rgb, rgb2, angle, noise_seed)
        contrast = _contrast(candidate, object_rgbs)
        if contrast > best_contrast:
            best, best_contrast = candidate, contrast
        if contrast >= MIN_CONTRAST:
            break
    assert best is not None
    return best


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices inside the unit circle, y downwards, pointing up before rotation."""

    def regular(n: int, radius: float) -> list[tuple[float, float]]:
        angles = [math.radians(-90.0 + 360.0 * k / n) for k in range(n)]
        return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]

    if shape == "square":
        return [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]
    if shape == "triangle":
        return regular(3, 1.0)
    if shape == "pentagon":
        return regular(5, 0.95)
    if shape == "hexagon":
        return regular(6, 0.95)
    if shape == "diamond":
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if shape == "star":
        radii = [1.0 if k % 2 == 0 else 0.42 for k in range(10)]  # five points, five inner corners
        angles = [math.radians(-90.0 + 36.0 * k) for k in range(10)]
        return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]
    if shape == "cross":
        w, r = 0.3, 0.9  # arm half-width and reach
        return [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    if shape == "heart":
        ts = [2 * math.pi * k / 48 for k in range(48)]
        # The classic heart curve spans x in [-16, 16], y in [-12, 17] (y down); centre and scale it.
        return [
            (
                16 * math.sin(t) ** 3 / 17.5,
                (-(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) - 2.5) / 17.5,
            )
            for t in ts
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


CIRCLE_RADIUS = 0.9  # circles fill 90% of their bounding circle
UNIT_POLYGONS: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType(
    {shape: tuple(_unit_polygon(shape)) for shape in SHAPES if shape != "circle"}
)


def _render_background(background: Background, size: int) -> Image.Image:
    if background.kind == "solid":
        return Image.new("RGB", (size, size), background.rgb)
    coords = (np.arange(size) + 0.5) / size
    xs, ys = np.meshgrid(coords, coords)  # (H, W) each
    start = np.array(background.rgb, float)
    if background.kind == "gradient":
        theta = math.radians(background.angle)
        proj = xs * math.cos(theta) - ys * math.sin(theta)  # angle counter-clockwise, y down
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-9)
        pixels = start * (1 - t[..., None]) + np.array(background.rgb2, float) * t[..., None]  # (H, W, 3)
    else:
        rng = np.random.default_rng(background.noise_seed)
        cells = rng.uniform(-1.0, 1.0, size=(NOISE_CELLS, NOISE_CELLS)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(cells).resize((size, size), Image.Resampling.BICUBIC))
        grain = rng.normal(0.0, NOISE_GRAIN, size=(size, size, 3))
        pixels = start + NOISE_AMPLITUDE * np.clip(smooth, -1, 1)[..., None] + grain  # (H, W, 3)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def render_scene(scene: Scene, image_size: int = 64, supersample: int = 4) -> Image.Image:
    """Render a scene as an RGB image of ``image_size`` x ``image_size`` pixels.

    Each object's coverage mask is drawn ``supersample`` times larger and
    box-averaged down, which is exact area coverage, so edges are anti-aliased
    without the ringing a Lanczos filter adds to a hard mask.
    """
    image = _render_background(scene.background, image_size)
    big = image_size * supersample
    for obj in scene.objects:
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy, r = obj.x * big, obj.y * big, obj.radius * big
        if obj.shape == "circle":
            rr = r * CIRCLE_RADIUS
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=255)
        else:
            cos, sin = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
            points = [(cx + r * (u * cos + v * sin), cy + r * (v * cos - u * sin)) for u, v in UNIT_POLYGONS[obj.shape]]
            draw.polygon(points, fill=255)
        if supersample > 1:
            mask = mask.reduce(supersample)
        image.paste(obj.rgb, (0, 0, image_size, image_size), mask)
    return image
