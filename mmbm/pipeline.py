"""The one door to a trained MMBM: caption, transcribe, search and index images.

Owns ``Pipeline`` (model, tokenizer, log-mel front end, the ShapesWorld word
lexicon and an optional image index, built once by ``Pipeline.load`` and passed
around), its small results (``TranscribeResult``, ``AudioSearchResult``,
``CaptionView``), what ships beside a checkpoint for the demo (``load_examples``,
``has_index``), the one speech lexicon (``shapes_lexicon``) and
``ModelEmbedder``, the adapter that gives the index (``mmbm.index``) the model's
L2-normalised image and text embeddings under an identity (a sha256 of the
checkpoint's config, weights and tokenizer), so an index refuses to mix vectors
from two models. app.py, the CLI and the benchmarks call this module rather than
the model; app.py and ``mmbm.demo.views`` import nothing else from the package,
so the option and result types of the layers below are re-exported here
(``__all__``). Every entry validates its input and raises the matching
``MMBMError`` subclass (``ImageError``, ``AudioError``, ``TextError``,
``SearchIndexError``); inference runs under ``torch.inference_mode`` with bf16
autocast on CUDA. Imports the model, decoding, the audio/image/text boundaries,
the index and ShapesWorld's word lists; never gradio, corpora, evaluation or
training code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmbm.audio import AudioSource, LogMel, check_not_silent, load_audio
from mmbm.decode.captions import CaptionResult, DecodingOptions, generate_captions
from mmbm.decode.ctc import CTCDecodingOptions, Lexicon, Transcript, transcribe_features
from mmbm.device import DeviceName, autocast, select_device
from mmbm.errors import AudioError, CheckpointError, ImageError, MMBMError, SearchIndexError, TextError
from mmbm.image import ImageSource, image_to_tensor, images_to_batch, load_image, tensor_to_image
from mmbm.index.image_index import ImageIndex
from mmbm.index.store import DB_NAME
from mmbm.index.types import AddReport, IndexConfig, IndexStats, SearchHit
from mmbm.model.checkpoint import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, load_checkpoint, load_tokenizer
from mmbm.model.model import MMBM
from mmbm.shapesworld.scene import COLOUR_RGB
from mmbm.shapesworld.words import SPOKEN_WORDS
from mmbm.tokenizer import Tokenizer, normalize_text

__all__ = [
    # this module
    "AudioSearchResult",
    "CaptionView",
    "Example",
    "ModelEmbedder",
    "Pipeline",
    "TranscribeResult",
    "has_index",
    "load_embedder",
    "load_examples",
    "model_identity",
    "shapes_lexicon",
    # option and result types of the layers below, for app.py and mmbm.demo
    "COLOUR_RGB",
    "AddReport",
    "CTCDecodingOptions",
    "CaptionResult",
    "DecodingOptions",
    "IndexStats",
    "Lexicon",
    "MMBMError",
    "SearchHit",
    "Transcript",
]

logger = logging.getLogger(__name__)

EMBED_BATCH_SIZE = 64  # images or texts per encoder call; keeps peak memory flat for big adds
CAPTION_BATCH_SIZE = 64  # images decoded together by caption_images
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing checkpoint files
IDENTITY_FILES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME)  # everything an embedding depends on
DEFAULT_DECODING = DecodingOptions()  # frozen, so sharing one default is safe
DEFAULT_CTC = CTCDecodingOptions()
EXAMPLES_DIR = "examples"  # beside a checkpoint's files: scenes for people to try (mmbm.demo.gallery writes them)
EXAMPLES_FILE = "examples.json"  # [{"image": file name, "caption": text the scene makes true}, ...]


@dataclass(frozen=True)
class TranscribeResult:
    """A transcript with how long the audio was and how long transcribing it took."""

    transcript: Transcript
    duration_s: float  # seconds of audio after resampling
    seconds: float  # wall time of the whole call: decode file, resample, log-mel, model, CTC search
    rtf: float  # real-time factor: seconds / duration_s (below 1 is faster than real time)


@dataclass(frozen=True)
class CaptionView:
    """A caption result and the square RGB picture the model read (the input resized, padded or cropped)."""

    result: CaptionResult
    picture: Image.Image  # (S, S) RGB, S = the model's image_size


@dataclass(frozen=True)
class Example:
    """A picture shipped with a checkpoint for people to try, and a description that is true of it."""

    image: Path
    caption: str


@dataclass(frozen=True)
class AudioSearchResult:
    """What was heard and the images it found."""

    transcription: TranscribeResult
    hits: list[SearchHit]


def shapes_lexicon(tokenizer: Tokenizer) -> Lexicon:
    """Every word ShapesWorld says (its caption vocabulary and the number words zero..twenty), spelled by ``tokenizer``.

    The one lexicon the demo, the evaluator and the benchmarks restrict speech
    decoding to; it comes from the grammar's constants, so the checkpoint alone is enough.
    """
    return Lexicon.from_texts(SPOKEN_WORDS, tokenizer)


def load_examples(model_dir: str | os.PathLike[str]) -> list[Example]:
    """The example scenes shipped in ``model_dir/examples``; none when the checkpoint ships none."""
    path = Path(model_dir) / EXAMPLES_DIR / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [Example(path.parent / row["image"], row["caption"]) for row in rows]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a list of {{image, caption}} rows: {e}") from e


def has_index(index_dir: str | os.PathLike[str]) -> bool:
    """Whether ``index_dir`` holds an image index that ``Pipeline.load`` can open."""
    return (Path(index_dir) / DB_NAME).is_file()


def model_identity(model_dir: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` over config.json, model.safetensors and tokenizer.json, in that order."""
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint is missing {name}: {path}")
        digest.update(f"{name}\0".encode())
        with open(path, "rb") as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class ModelEmbedder:
    """``mmbm.index.types.Embedder`` over an MMBM: (N, d_embed) float32 L2-normalised rows, batched."""

    def __init__(self, model: MMBM, tokenizer: Tokenizer, identity: str, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.identity = identity
        self.dim = model.config.d_embed

    def text_ids(self, text: str) -> list[int]:
        """Token ids (bos ... eos) of one query; TextError when it is empty or too long for the model."""
        if not isinstance(text, str):
            raise TextError(f"a text query must be a string, got {type(text).__name__}")
        if not normalize_text(text):
            raise TextError("the text query is empty: it has no words once punctuation is removed")
        ids = self.tokenizer.encode(text, add_special=True)
        limit = self.model.config.max_text_len
        if len(ids) > limit:
            raise TextError(f"the text query is too long: {len(ids)} tokens, the model reads at most {limit}")
        return ids

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) strings -> (N, d_embed) float32."""
        return self.embed_ids([self.text_ids(text) for text in texts])

    @torch.inference_mode()
    def embed_ids(self, rows: Sequence[list[int]]) -> np.ndarray:
        """(N,) token-id rows from ``text_ids`` (bos ... eos) -> (N, d_embed) float32."""
        out = []
        for start in range(0, len(rows), EMBED_BATCH_SIZE):
            batch = rows[start : start + EMBED_BATCH_SIZE]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [self.tokenizer.pad_id] * (width - len(r)) for r in batch], device=self.device)
            with autocast(self.device):
                out.append(self.model.encode_text(ids).float().cpu())  # (b, d_embed)
        return torch.cat(out).numpy() if out else np.empty((0, self.dim), np.float32)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N,) RGB images (see ``load_image``) -> (N, d_embed) float32."""
        out = []
        for start in range(0, len(images), EMBED_BATCH_SIZE):
            pixels = images_to_batch(images[start : start + EMBED_BATCH_SIZE], self.model.config.image)
            with autocast(self.device):
                out.append(self.model.encode_image(pixels.to(self.device)).float().cpu())  # (b, d_embed)
        return torch.cat(out).numpy() if out else np.empty((0, self.dim), np.float32)


class Pipeline:
    """A loaded model with everything around it; build with ``Pipeline.load``."""

    def __init__(
        self, model: MMBM, tokenizer: Tokenizer, identity: str, device: torch.device, index: ImageIndex | None = None
    ) -> None:
        self.model, self.tokenizer, self.identity, self.device = model, tokenizer, identity, device
        self.config = model.config
        self.log_mel = LogMel(model.config.audio).to(device)
        self.embedder = ModelEmbedder(model, tokenizer, identity, device)
        self.index = index

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        index_dir: str | os.PathLike[str] | None = None,
        device: DeviceName | str = "auto",
        create_index: bool = False,
    ) -> Pipeline:
        """Load the checkpoint in ``model_dir`` and, when given, the image index in ``index_dir``.

        A missing index is an error unless ``create_index``, which makes an empty one.
        """
        torch_device = select_device(device)
        model = load_checkpoint(model_dir, torch_device)
        tokenizer = load_tokenizer(model_dir)
        config = model.config
        ids = (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.blank_id)
        expected = (config.vocab_size, config.pad_id, config.bos_id, config.eos_id, config.blank_id)
        if ids != expected:
            raise CheckpointError(
                f"{Path(model_dir) / TOKENIZER_NAME} does not fit {CONFIG_NAME}: (vocab_size, pad, bos, eos, blank) "
                f"is {ids} in the tokenizer but {expected} in the config"
            )
        pipeline = cls(model, tokenizer, model_identity(model_dir), torch_device)
        if index_dir is not None:
            pipeline.index = pipeline.open_index(index_dir, create=create_index)
        logger.info("loaded %s on %s (%s)", model_dir, torch_device, pipeline.identity[:19])
        return pipeline

    @cached_property
    def lexicon(self) -> Lexicon:
        """``shapes_lexicon`` of this model's tokenizer, built on first use."""
        return shapes_lexicon(self.tokenizer)

    def open_index(self, index_dir: str | os.PathLike[str], create: bool = False) -> ImageIndex:
        """Open (or, with ``create``, make) an index whose images are read as this model reads them."""
        directory = Path(index_dir)
        index_config = IndexConfig(image=self.config.image)
        if (directory / DB_NAME).exists():
            return ImageIndex.open(directory, self.embedder, config=index_config)
        if not create:
            raise SearchIndexError(f"no image index at {directory} ({DB_NAME} is missing); build one first")
        return ImageIndex.create(directory, self.embedder, config=index_config)

    def load_image(self, source: ImageSource) -> Image.Image:
        """``mmbm.image.load_image`` with this model's image settings (ImageError on bad input)."""
        return load_image(source, self.config.image)

    def load_audio(self, source: AudioSource) -> np.ndarray:
        """``mmbm.audio.load_audio`` at this model's sample rate: (N,) float32 (AudioError on bad input)."""
        return load_audio(source, self.config.audio)

    # ----- captions ----------------------------------------------------------------

    def caption(self, image: ImageSource, options: DecodingOptions = DEFAULT_DECODING) -> CaptionResult:
        """Caption one image (path, bytes, PIL image or array); ImageError when it cannot be read."""
        return self.caption_images([image], options)[0]

    def caption_view(self, image: ImageSource, options: DecodingOptions = DEFAULT_DECODING) -> CaptionView:
        """Caption one image and return the square picture the model read beside it (for attention heatmaps).

        The image is read and turned into pixels once; the picture is those pixels, de-normalised.
        """
        pixels = image_to_tensor(load_image(image, self.config.image), self.config.image)  # (3, S, S)
        result = self._caption_pixels(pixels[None], options)[0]
        return CaptionView(result, tensor_to_image(pixels, self.config.image))

    def caption_images(
        self, images: Sequence[ImageSource], options: DecodingOptions = DEFAULT_DECODING
    ) -> list[CaptionResult]:
        """Caption several images, ``CAPTION_BATCH_SIZE`` at a time; one result per image, in order."""
        return self._caption_loaded([load_image(image, self.config.image) for image in images], options)

    def _caption_loaded(
        self, images: Sequence[Image.Image], options: DecodingOptions = DEFAULT_DECODING
    ) -> list[CaptionResult]:
        results: list[CaptionResult] = []
        for start in range(0, len(images), CAPTION_BATCH_SIZE):
            pixels = images_to_batch(images[start : start + CAPTION_BATCH_SIZE], self.config.image)
            results.extend(self._caption_pixels(pixels, options))
        return results

    def _caption_pixels(self, pixels: torch.Tensor, options: DecodingOptions) -> list[CaptionResult]:
        """(B, 3, S, S) normalised pixels -> one CaptionResult per image."""
        with torch.inference_mode(), autocast(self.device):
            return generate_captions(self.model, pixels.to(self.device), self.tokenizer, options)

    # ----- speech ------------------------------------------------------------------

    def transcribe(
        self,
        audio: AudioSource,
        options: CTCDecodingOptions = DEFAULT_CTC,
        lexicon: Lexicon | None = None,
    ) -> TranscribeResult:
        """Transcribe a path, a file's bytes or ``(sample_rate, array)``; AudioError for unreadable or silent audio."""
        start = time.perf_counter()
        wave = load_audio(audio, self.config.audio)
        check_not_silent(wave, self.config.audio)
        with torch.inference_mode(), autocast(self.device):
            features = self.log_mel(torch.from_numpy(wave)[None].to(self.device))  # (1, n_mels, T)
            lengths = torch.tensor([features.shape[-1]], device=self.device)
            transcript = transcribe_features(self.model, features, lengths, self.tokenizer, options, lexicon)[0]
        seconds = time.perf_counter() - start
        duration = wave.shape[0] / self.config.audio.sample_rate
        return TranscribeResult(transcript, duration, seconds, seconds / duration)

    # ----- search ------------------------------------------------------------------

    def _require_index(self) -> ImageIndex:
        if self.index is None:
            raise SearchIndexError("no image index is loaded; start the pipeline with an index directory")
        return self.index

    def search_text(self, query: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` indexed images that best match ``query``; TextError when it is empty or too long."""
        index = self._require_index()
        ids = self.embedder.text_ids(query)  # refuse before touching the index; the query is tokenized once
        index.check_text_query(query, k)
        return index.search_vector(self.embedder.embed_ids([ids])[0], k)

    def search_image(self, image: ImageSource, k: int = 10) -> list[SearchHit]:
        """The ``k`` indexed images most like ``image``; ImageError when it cannot be read."""
        return self._require_index().search_image(image, k)

    def search_audio(
        self,
        audio: AudioSource,
        k: int = 10,
        options: CTCDecodingOptions = DEFAULT_CTC,
        lexicon: Lexicon | None = None,
    ) -> AudioSearchResult:
        """Transcribe ``audio``, then search by the transcript; AudioError when no word is heard."""
        index = self._require_index()
        transcription = self.transcribe(audio, options, lexicon)
        if not transcription.transcript.text:
            raise AudioError("no words were recognised in the audio, so there is nothing to search for")
        return AudioSearchResult(transcription, index.search_text(transcription.transcript.text, k))

    def add_images(
        self,
        images: Sequence[ImageSource],
        captions: Sequence[str | None] | None = None,
        source: str = "api",
        auto_caption: bool = True,
        progress: bool = False,
    ) -> AddReport:
        """Add images to the index; images given without a caption get the model's greedy caption.

        Unreadable images are skipped and listed in the report with the reason.
        """
        index = self._require_index()
        if captions is not None and len(captions) != len(images):
            raise SearchIndexError(f"got {len(captions)} captions for {len(images)} images")
        filled = list(captions) if captions is not None else [None] * len(images)
        if auto_caption:
            filled = self._fill_captions(images, filled)
        return index.add_images(images, captions=filled, source=source, progress=progress)

    def _fill_captions(self, images: Sequence[ImageSource], captions: list[str | None]) -> list[str | None]:
        missing = [i for i, caption in enumerate(captions) if caption is None]
        readable = []
        for i in missing:
            try:
                readable.append((i, load_image(images[i], self.config.image)))
            except ImageError:
                continue  # the index skips it too, and reports why
        for (i, _), result in zip(readable, self._caption_loaded([image for _, image in readable]), strict=True):
            captions[i] = result.captions[0].text or None
        return captions

    def index_stats(self) -> IndexStats:
        return self._require_index().stats()

    def close(self) -> None:
        if self.index is not None:
            self.index.close()


def load_embedder(model_dir: str | os.PathLike[str] = "models/mmbm-tiny") -> ModelEmbedder:
    """The index embedder of a checkpoint (default: the shipped model), for ``bench.search --embedder``."""
    return Pipeline.load(model_dir).embedder
