"""ShapesWorld: the corpus MMBM generates for itself, and its grammar.

Owns the scene graph (``scene``), sampling and rendering scenes (``shapes``), the
caption grammar, its vocabulary, parser and truth checker (``captions``), writing
an image corpus to disk and reading it back (``corpus``), and speaking captions
and number phrases with offline TTS engines (``tts``, ``speech``).
``python -m mmbm.shapesworld shapes|speech`` generates the default corpus.

May import ``mmbm.config``, ``mmbm.errors``, ``mmbm.files``, ``mmbm.audio`` and
``mmbm.tokenizer``; never the model, decoding, the index, real-corpus adapters,
evaluation, training, the pipeline or the demo.
"""
