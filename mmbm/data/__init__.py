"""Training and evaluation data: real-corpus adapters, torch datasets and augmentation.

Owns the readers of MS-COCO caption JSON, LibriSpeech-style folders and generic
JSONL manifests (``adapters``), the torch datasets and collation that turn records
into batches (``datasets``) and the image and audio augmentations applied at
training time (``augment``). The ShapesWorld generator is ``mmbm.shapesworld``.

May import ``mmbm.config``, ``mmbm.errors``, ``mmbm.audio``, ``mmbm.image`` and
``mmbm.tokenizer``; never the model, decoding, the index, ShapesWorld,
evaluation, training, the pipeline or the demo.
"""
