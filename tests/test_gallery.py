"""What the demo ships beside the checkpoint: the gallery (held-out splits only, atomic output, refusals
before work) and the example scenes the app reads instead of running the generator at start-up."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmbm.demo.gallery import EXAMPLE_SCENES, build_gallery, write_examples
from mmbm.errors import CheckpointError, DataError
from mmbm.pipeline import Pipeline, load_examples
from mmbm.shapesworld.captions import judge
from mmbm.shapesworld.corpus import load_image_manifest, make_item
from mmbm.shapesworld.shapes import ShapesConfig


@pytest.fixture(scope="module")
def corpus_and_model(tiny_corpus: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    return tiny_corpus, tiny_model_dir


def test_gallery_holds_every_held_out_scene_and_finds_each_by_its_image(corpus_and_model, tmp_path: Path) -> None:
    corpus, model = corpus_and_model
    report = build_gallery(model, corpus, tmp_path / "gallery", progress=False)
    held_out = [r for split in ("val", "test", "compositional") for r in load_image_manifest(corpus, split)]
    assert report.n_images == len(held_out) and report.n_skipped == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gallery-")], "staging folder left behind"
    pipeline = Pipeline.load(model, tmp_path / "gallery")
    try:
        record = held_out[-1]
        best = pipeline.search_image(record.image, k=1)[0]
        assert best.caption == record.captions[0]
    finally:
        pipeline.close()


def test_gallery_refuses_training_scenes_an_existing_folder_and_an_incomplete_corpus(
    corpus_and_model, tmp_path: Path
) -> None:
    corpus, model = corpus_and_model
    with pytest.raises(DataError, match="must not hold training scenes"):
        build_gallery(model, corpus, tmp_path / "g", splits=("train",))
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        build_gallery(model, corpus, tmp_path / "taken")
    with pytest.raises(DataError, match="corpus"):
        build_gallery(model, tmp_path / "no-corpus", tmp_path / "g2")
    assert not (tmp_path / "g").exists() and not (tmp_path / "g2").exists()


def test_examples_are_rendered_at_the_models_size_with_a_true_caption_each(corpus_and_model, tmp_path: Path) -> None:
    model = Path(shutil.copytree(corpus_and_model[1], tmp_path / "model"))
    assert load_examples(model) == []  # a checkpoint without examples ships none
    write_examples(model)
    examples = load_examples(model)
    assert [e.image.name for e in examples] == [f"scene-{k}.png" for k in EXAMPLE_SCENES]
    size = Pipeline.load(model).config.image.image_size
    for example, k in zip(examples, EXAMPLE_SCENES, strict=True):
        assert Image.open(example.image).size == (size, size)
        scene, _ = make_item(ShapesConfig(image_size=size), "test", k)
        verdict = judge(example.caption, scene)
        assert verdict.faithful and verdict.complete, verdict.reasons
    (model / "examples" / "examples.json").write_text("[{\"image\": \"scene-3.png\"}]")
    with pytest.raises(CheckpointError, match="image, caption"):
        load_examples(model)
