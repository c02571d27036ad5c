"""The image index: add images, then find them by text, by image or by vector.

Owns ``ImageIndex`` (``image_index``), its on-disk files (``store``: SQLite
metadata, the vector cache, the writer lock), its in-memory search (``vectors``:
exact, IVF or HNSW over FAISS) and its value types (``types``: the ``Embedder``
protocol, ``IndexConfig``, ``SearchHit``, ``AddReport``, ``IndexStats``).

May import ``mmbm.config``, ``mmbm.errors`` and ``mmbm.image``; embeddings come
from an ``Embedder`` passed in, so it never imports the model, decoding,
ShapesWorld, corpora, evaluation, training, the pipeline or the demo.
"""
