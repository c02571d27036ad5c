"""Decoding: turning the model's scores into words.

Owns caption decoding (``captions``: greedy, beam search and sampling over the
caption head with a KV cache, and per-word attention for the heatmaps) and speech
decoding (``ctc``: CTC greedy and prefix beam search, the word ``Lexicon`` that can
restrict it, and word timings from the alignment), with their option and result
types.

May import ``mmbm.config``, ``mmbm.errors``, ``mmbm.tokenizer`` and the model's
types; never the index, ShapesWorld, corpora, evaluation, training, the pipeline
or the demo.
"""
