"""Search on ShapesWorld with the shipped model and gallery: image -> image and audio -> image.

The gallery (models/mmbm-tiny/gallery) holds the val, test and compositional scenes of the
default corpus; the tests re-render test scenes exactly as the corpus does, so they
know which gallery entry each query should find.
"""

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmbm.errors import AudioError
from mmbm.pipeline import Pipeline
from mmbm.shapesworld.captions import canonical_caption
from tests.helpers import render_test_scenes


@pytest.fixture(scope="module")
def pipeline(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    work = tmp_path_factory.mktemp("gallery") / "gallery"
    shutil.copytree(trained_model_dir / "gallery", work)  # the shipped files stay untouched
    loaded = Pipeline.load(trained_model_dir, work)
    yield loaded
    loaded.close()


def test_a_re_encoded_copy_of_a_scene_finds_that_scene_first(pipeline: Pipeline, tmp_path: Path) -> None:
    paths, _, captions = render_test_scenes(tmp_path, 20, start=40)
    found = 0
    for path, texts in zip(paths, captions, strict=True):
        copy = io.BytesIO()
        Image.open(path).resize((200, 200), Image.Resampling.BICUBIC).save(copy, "JPEG", quality=85)
        best = pipeline.search_image(copy.getvalue(), k=1)[0]
        found += best.caption == texts[0]  # the gallery stores each scene's first caption
    assert found >= 18, f"{found} of 20 re-encoded scenes found themselves first"


@pytest.mark.tts
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="shipped mmbm-tiny hears about half the words (0 of 5 found); see models/mmbm-tiny/README.md")
def test_a_spoken_description_finds_its_scene_in_the_top_10(pipeline: Pipeline, tmp_path: Path) -> None:
    from mmbm.shapesworld.tts import Voice, make_engine

    engine = make_engine("flite")
    assert engine.available(), engine.install_hint
    _, scenes, captions = render_test_scenes(tmp_path, 5, start=80)
    found = 0
    for scene, texts in zip(scenes, captions, strict=True):
        audio, rate = engine.synthesize(canonical_caption(scene), Voice("flite", "slt"))
        try:
            hits = pipeline.search_audio((rate, audio), k=10).hits
        except AudioError:  # nothing recognised: the user is told so, and nothing is found
            hits = []
        found += texts[0] in [hit.caption for hit in hits]
    assert found >= 4, f"{found} of 5 spoken descriptions found their scene in the top 10"
