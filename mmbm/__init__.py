"""MMBM: one shared attention backbone that captions images, matches text to
images and transcribes speech.

The package is a library first: nothing in it imports gradio (only app.py does),
and training-only packages are imported only by ``mmbm.training``. One folder per
concern, layered (pyproject.toml's import contracts; docs/architecture.md):
``demo`` and ``training`` over ``evaluate`` over ``pipeline`` (the one door the
app, the CLI and the benchmarks use) over ``decode``, ``index``, ``shapesworld``
and ``data``, over ``model``, over the input boundaries (``audio``, ``image``,
``tokenizer``) and the foundations (``config``, ``device``, ``files``, ``errors``).
"""

__version__ = "0.1.0"
