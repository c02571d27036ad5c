"""Evaluation: what a trained MMBM is measured by, and the run that writes metrics.json.

Owns the arithmetic of every figure (``metrics``: recall@k, semantic precision,
WER / CER, BLEU-4 / CIDEr), the per-task scoring and timing over the pipeline
(``measure``) and the run with its provenance and files (``evaluator``);
``python -m mmbm.evaluate MODEL_DIR ...`` is its command line.

May import ``mmbm.pipeline`` and everything below it, ShapesWorld (the truth
checker) and ``mmbm.data`` (manifests, noise); never training or the demo.
"""
