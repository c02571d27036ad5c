"""ShapesWorld scenes: config validation, determinism, scene validity and rendering."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from mmbm.errors import ConfigError, DataError
from mmbm.shapesworld.scene import (
    RELATION_MARGIN,
    RELATIONS,
    Background,
    Scene,
    SceneObject,
    mirror_scene,
    relation_holds,
)
from mmbm.shapesworld.shapes import (
    BACKGROUND_KINDS,
    COLOUR_JITTER,
    COLOUR_RGB,
    COLOURS,
    MAX_ROTATION,
    SHAPES,
    SIZES,
    ShapesConfig,
    heldout_pairs,
    render_scene,
    sample_scene,
)

CONFIG = ShapesConfig()


def _scene(seed: int, index: int, config: ShapesConfig = CONFIG) -> Scene:
    return sample_scene(np.random.default_rng([seed, index]), config)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_size": 16}, "image_size"),
        ({"image_size": 2048}, "image_size"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"n_test": -5}, "n_test"),
        ({"n_compositional": 10**8}, "n_compositional"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 4}, "max_objects"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"n_captions": 4}, "n_captions"),
        ({"n_heldout_pairs": 10}, "n_heldout_pairs"),
        ({"n_heldout_pairs": 0}, "n_heldout_pairs"),  # the compositional split needs held-out pairs
        ({"backgrounds": ()}, "backgrounds"),
        ({"backgrounds": ("solid", "stripes")}, "backgrounds"),
        ({"backgrounds": ("solid", "solid")}, "backgrounds"),
        ({"seed": -1}, "seed"),
        ({"supersample": 0}, "supersample"),
        ({"image_size": 1024, "supersample": 8}, "supersample"),
    ],
)
def test_config_refuses_impossible_values_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        ShapesConfig(**overrides)


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    config = ShapesConfig.base(n_train=10, backgrounds=("noise", "solid"), seed=3)
    assert config.image_size == 224
    assert ShapesConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ShapesConfig(n_compositional=0, n_heldout_pairs=0).n_heldout_pairs == 0
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['colour_count'\]"):
        ShapesConfig.from_dict({**config.to_dict(), "colour_count": 3})


def test_vocabulary_is_large_enough_and_colours_stay_apart_under_jitter() -> None:
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8 and 2 <= len(SIZES) <= 3
    assert BACKGROUND_KINDS == ("solid", "gradient", "noise")
    closest = min(math.dist(COLOUR_RGB[a], COLOUR_RGB[b]) for a, b in itertools.combinations(COLOURS, 2))
    # Two jittered colours move at most 2 * sqrt(3) * COLOUR_JITTER towards each other.
    assert closest > 2 * math.sqrt(3) * COLOUR_JITTER + 40


def test_same_seed_gives_identical_scenes_and_pixels_and_other_seeds_differ() -> None:
    first = [_scene(7, k) for k in range(20)]
    again = [_scene(7, k) for k in range(20)]
    other = [_scene(8, k) for k in range(20)]
    assert first == again
    assert first != other
    for a, b in zip(first[:5], again[:5], strict=True):
        assert np.array_equal(np.asarray(render_scene(a, 64)), np.asarray(render_scene(b, 64)))
    assert not np.array_equal(np.asarray(render_scene(first[0], 64)), np.asarray(render_scene(other[0], 64)))


def test_sampled_scenes_are_valid_and_every_relation_is_clear_cut() -> None:
    counts: dict[int, int] = {1: 0, 2: 0, 3: 0}
    kinds: set[str] = set()
    for k in range(2000):
        scene = _scene(11, k)
        counts[len(scene.objects)] += 1
        kinds.add(scene.background.kind)
        for obj in scene.objects:
            assert obj.radius <= obj.x <= 1 - obj.radius and obj.radius <= obj.y <= 1 - obj.radius
            assert abs(obj.rotation) <= MAX_ROTATION
            assert max(abs(c - n) for c, n in zip(obj.rgb, COLOUR_RGB[obj.colour], strict=True)) <= COLOUR_JITTER
        for a, b in itertools.combinations(scene.objects, 2):
            assert math.dist((a.x, a.y), (b.x, b.y)) >= a.radius + b.radius  # no overlap
            for d in (abs(a.x - b.x), abs(a.y - b.y)):  # never "almost" left of / above
                assert d >= RELATION_MARGIN or d <= RELATION_MARGIN / 2, (k, d)
            holding = [r for r in RELATIONS if relation_holds(a, b, r)]
            assert holding, k  # every pair can be related in words
            assert not {"left_of", "right_of"} <= set(holding) and not {"above", "below"} <= set(holding)
    assert min(counts.values()) > 500  # 1, 2 and 3 objects all common
    assert kinds == set(BACKGROUND_KINDS)


def test_scene_graph_round_trips_through_json_and_refuses_bad_values() -> None:
    scene = _scene(3, 0)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    values = scene.to_dict()
    values["objects"][0]["shape"] = "blob"
    with pytest.raises(DataError, match="unknown shape 'blob'"):
        Scene.from_dict(values)
    values = scene.to_dict()
    del values["background"]["kind"]
    with pytest.raises(DataError, match=r"missing key\(s\) \['kind'\]"):
        Scene.from_dict(values)
    values = scene.to_dict()
    values["objects"] = values["objects"] * 4
    with pytest.raises(DataError, match="1 to 3 objects"):
        Scene.from_dict(values)


def test_heldout_pairs_follow_the_seed_and_cover_distinct_shapes_and_colours() -> None:
    pairs = heldout_pairs(0, 8)
    assert pairs == heldout_pairs(0, 8) and pairs != heldout_pairs(1, 8)
    assert len({s for s, _ in pairs}) == 8 and len({c for _, c in pairs}) == 8
    assert all(s in SHAPES and c in COLOURS for s, c in pairs)


def test_exclude_and_include_control_colour_shape_pairs() -> None:
    held = frozenset(heldout_pairs(5, 8))
    for k in range(300):
        rng = np.random.default_rng([5, k])
        assert not {o.pair for o in sample_scene(rng, CONFIG, exclude=held).objects} & held
        assert {o.pair for o in sample_scene(rng, CONFIG, include=held).objects} & held


def _solid_scene(objects: tuple[SceneObject, ...]) -> Scene:
    return Scene(objects, Background("solid", (128, 128, 128), (128, 128, 128), 0.0, 0))


def test_render_draws_each_object_in_its_colour_with_anti_aliased_edges() -> None:
    red = SceneObject("square", "red", "large", 0.3, 0.3, 0.15, 0.0, (215, 35, 35))
    blue = SceneObject("circle", "blue", "small", 0.75, 0.75, 0.09, 0.0, (35, 85, 215))
    image = render_scene(_solid_scene((red, blue)), 64)
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[19, 19]) == red.rgb  # centre of the square (row, column)
    assert tuple(pixels[48, 48]) == blue.rgb
    assert tuple(pixels[0, 63]) == (128, 128, 128)
    # Anti-aliasing: the edges of both objects are blends of their colour and the grey.
    pure = [red.rgb, blue.rgb, (128, 128, 128)]
    blends = ~np.any([np.all(pixels == c, axis=-1) for c in pure], axis=0)  # (H, W)
    assert blends[:32, :32].sum() > 20 and blends[32:, 32:].sum() > 10
    hard = np.asarray(render_scene(_solid_scene((red, blue)), 64, supersample=1))
    assert {tuple(int(v) for v in p) for p in hard.reshape(-1, 3)} == set(pure)  # without supersampling: none


def test_render_sizes_and_backgrounds() -> None:
    for kind in BACKGROUND_KINDS:
        scene = next(s for s in (_scene(21, k) for k in range(200)) if s.background.kind == kind)
        for size in (32, 64, 224):
            assert render_scene(scene, size).size == (size, size)
        pixels = np.asarray(render_scene(scene, 64)).astype(int)
        corner = pixels[:6, :6].reshape(-1, 3)
        if kind == "solid":
            assert (corner == scene.background.rgb).all()
        else:  # a gradient or texture varies across the image
            assert pixels[:, :, :].std(axis=(0, 1)).max() > 2


def test_mirror_swaps_left_and_right_only() -> None:
    for k in range(200):
        scene = _scene(4, k)
        mirrored = mirror_scene(scene)
        assert mirror_scene(mirrored) == scene
        for (a, b), (ma, mb) in zip(
            itertools.permutations(scene.objects, 2), itertools.permutations(mirrored.objects, 2), strict=True
        ):
            assert relation_holds(a, b, "left_of") == relation_holds(ma, mb, "right_of")
            assert relation_holds(a, b, "above") == relation_holds(ma, mb, "above")
