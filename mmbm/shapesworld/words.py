"""The words ShapesWorld says: what a model trained on it can be asked to hear.

Owns ``NUMBER_WORDS`` and ``DIGIT_WORDS`` (the number phrases the speech corpus
speaks besides captions) and ``SPOKEN_WORDS``, every word of the speech corpus:
the caption vocabulary (``captions.VOCABULARY``) and the number words. The speech
decoders' word lexicon is built from ``SPOKEN_WORDS`` (``mmbm.pipeline.shapes_lexicon``),
so it needs nothing but the code and the checkpoint's tokenizer. Imports
``mmbm.shapesworld.captions`` and ``mmbm.tokenizer`` only.
"""

from __future__ import annotations

from mmbm.shapesworld.captions import VOCABULARY
from mmbm.tokenizer import number_to_words

NUMBER_WORDS = tuple(number_to_words(n) for n in range(21))  # "zero" .. "twenty"
DIGIT_WORDS = NUMBER_WORDS[:10]
SPOKEN_WORDS: tuple[str, ...] = tuple(sorted(set(VOCABULARY) | set(NUMBER_WORDS)))  # 77 words
