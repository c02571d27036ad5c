"""The model: one shared Transformer backbone, its modality stems and its three heads.

Owns ``MMBM`` (``model``) and the parts it is built from, in reading order:
``layers`` (attention, MLP, block, KV cache), ``backbone`` (the shared stack and
every attention mask), ``stems`` (pixels, log-mel frames and token ids into
D-wide tokens), ``heads`` (fusion, retrieval projections, CTC), ``pretrained``
(transformers encoders that may replace a stem); ``losses`` (what training and
benchmarks minimise); ``checkpoint`` (config.json + model.safetensors +
tokenizer.json, saved and loaded).

May import ``mmbm.config``, ``mmbm.errors`` and ``mmbm.tokenizer`` (the checkpoint
stores one); never decoding, the index, ShapesWorld, corpora, evaluation,
training, the pipeline or the demo (the import contract in pyproject.toml).
"""
