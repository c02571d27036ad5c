"""Reading images from files, bytes, arrays or PIL objects, and turning them into pixels.

Owns the image boundary: ``load_image`` accepts what a user or the UI hands over,
refuses anything broken with an ``ImageError`` that names the problem, and returns
an 8-bit RGB ``PIL.Image``; ``image_to_tensor`` / ``images_to_batch`` resize and
normalise RGB images into the (B, 3, S, S) float32 tensors the image stem reads,
and ``tensor_to_image`` turns such pixels back into the picture the model saw.

Safety: the pixel count is checked from the file header before any decoding, so a
decompression bomb is never decoded, and Pillow's global state (MAX_IMAGE_PIXELS,
LOAD_TRUNCATED_IMAGES) is left untouched. Pillow still refuses on its own any
image over twice its MAX_IMAGE_PIXELS (about 179 M pixels); that is reported as
the same "too large" error, so ``max_pixels`` above that value has no effect.

Imports only ``mmbm.config`` and ``mmbm.errors`` from the package; never torchaudio,
gradio or training code.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmbm.config import ImageConfig
from mmbm.errors import ImageError

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_CONFIG = ImageConfig()  # frozen, so sharing one default is safe
ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

UINT16_TO_UINT8 = 257.0  # 65535 / 255: maps 16-bit full scale exactly onto 8-bit full scale
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # "I" is Pillow's historical 16-bit PNG mode
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# errors Pillow's decoders raise on a truncated or corrupt stream
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error, struct.error)


def load_image(source: ImageSource, config: ImageConfig = DEFAULT_IMAGE_CONFIG) -> Image.Image:
    """Read ``source`` and return it as an 8-bit RGB image, width x height unchanged.

    ``source`` is a file path, the encoded bytes of a file, a ``PIL.Image`` or an
    array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16 (full scale
    65535) or float in [0, 1]. Transparency is composited on ``config.background``,
    16-bit and float greyscale are scaled to 8 bits, EXIF orientation is applied and
    animations give their first frame. Raises ``ImageError`` naming the problem.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, config)
    if isinstance(source, Image.Image):
        return _decoded_to_rgb(source, config, what="the given image")
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise ImageError("Not an image: got empty bytes")
        return _open_and_convert(io.BytesIO(bytes(source)), config, what="the given bytes")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"Image file not found: {str(path)!r}")
        if not path.is_file():
            raise ImageError(f"Not an image file (it is a directory or special file): {str(path)!r}")
        try:
            with open(path, "rb") as stream:
                return _open_and_convert(stream, config, what=repr(str(path)))
        except PermissionError as e:
            raise ImageError(f"Cannot read image file {str(path)!r}: permission denied") from e
    raise ImageError(
        f"Wrong input type for an image: {type(source).__name__}; expected a path, bytes, a PIL.Image or a numpy array"
    )


def _open_and_convert(stream: io.BufferedIOBase, config: ImageConfig, what: str) -> Image.Image:
    """Identify the format and read the header only; ``_decoded_to_rgb`` checks size before decoding."""
    try:
        image = Image.open(stream)
    except UnidentifiedImageError as e:
        raise ImageError(
            f"Not an image: cannot identify the image format of {what} (not an image, or its header is damaged)"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"Image too large: {what} is over Pillow's hard limit ({e})") from e
    except DECODE_ERRORS as e:
        raise ImageError(f"Corrupt image: cannot read the header of {what} ({e})") from e
    with image:
        return _decoded_to_rgb(image, config, what=what)


def _decoded_to_rgb(image: Image.Image, config: ImageConfig, what: str) -> Image.Image:
    """Check the header size, decode fully, orient, flatten transparency, return RGB."""
    _check_size(image.width, image.height, config, what)
    try:
        # frame 0 is current right after opening, so animations give their first frame;
        # a full load() is what detects a truncated or corrupt pixel stream
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except DECODE_ERRORS as e:
        raise ImageError(f"Truncated or corrupt image: {what} could not be decoded ({e})") from e
    return _to_rgb(oriented, config)


def _check_size(width: int, height: int, config: ImageConfig, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"Zero-size image: {what} is {width}x{height} pixels")
    if width * height > config.max_pixels:
        raise ImageError(
            f"Image too large: {what} is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {config.max_pixels:,} (ImageConfig.max_pixels)"
        )


def _to_rgb(image: Image.Image, config: ImageConfig) -> Image.Image:
    """Convert any decoded Pillow mode to 8-bit RGB (always a new image)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.round(np.clip(values, 0, 65535) / UINT16_TO_UINT8).astype(np.uint8))
    elif mode == "F":
        image = Image.fromarray(_float_to_uint8(np.asarray(image), "a float (mode F) image"))
    try:
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            backdrop = Image.new("RGBA", rgba.size, (*config.background, 255))
            return Image.alpha_composite(backdrop, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"Unsupported image mode {mode!r}: cannot convert it to RGB ({e})") from e


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise ImageError(f"Image has {n_bad} non-finite values (NaN or inf) in {what}")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(f"Float image values must be in [0, 1]; {what} has range [{low:g}, {high:g}]")
    return np.round(values.astype(np.float64) * 255.0).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, config: ImageConfig) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3), (H, W, 4) arrays of uint8 / uint16 / float in [0, 1]."""
    if array.ndim not in (2, 3):
        raise ImageError(f"Image array must have 2 or 3 dimensions (H, W) or (H, W, C); got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise ImageError(f"Image array must have 1, 3 or 4 channels in its last axis; got shape {array.shape}")
    height, width = array.shape[:2]
    _check_size(width, height, config, f"the array of shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.round(array.astype(np.float64) / UINT16_TO_UINT8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array, f"the array of shape {array.shape}")
    else:
        raise ImageError(f"Unsupported image array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), config)


def image_to_tensor(image: Image.Image, config: ImageConfig) -> torch.Tensor:
    """Resize an RGB image to ``config.image_size`` and normalise it.

    Returns (3, S, S) float32, ``(pixel / 255 - mean) / std`` per channel. Resizing is
    bicubic; a non-square image is made square as ``config.resize`` says: "pad"
    (default) letterboxes it on ``config.background`` so every object keeps its place
    and shape, "crop" keeps the centre square, "squash" stretches the whole image.
    ShapesWorld scenes are square, where all three agree.
    """
    if not isinstance(image, Image.Image):
        raise ImageError(f"image_to_tensor expects a PIL.Image; got {type(image).__name__}")
    if image.mode != "RGB":
        raise ImageError(f"image_to_tensor expects an RGB image; got mode {image.mode!r} (use load_image first)")
    _check_size(image.width, image.height, config, "the image")
    size = (config.image_size, config.image_size)
    bicubic = Image.Resampling.BICUBIC
    if image.size == size:
        square = image
    elif config.resize == "pad":
        square = ImageOps.pad(image, size, method=bicubic, color=config.background)
    elif config.resize == "crop":
        square = ImageOps.fit(image, size, method=bicubic)
    else:
        square = image.resize(size, resample=bicubic)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0)  # (S, S, 3) in [0, 1]
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels.permute(2, 0, 1) - mean) / std  # (3, S, S)


def images_to_batch(images: Sequence[Image.Image], config: ImageConfig) -> torch.Tensor:
    """Stack ``image_to_tensor`` of each RGB image into (B, 3, S, S) float32."""
    if len(images) == 0:
        raise ImageError("images_to_batch got no images")
    return torch.stack([image_to_tensor(image, config) for image in images])  # (B, 3, S, S)


def tensor_to_image(pixels: torch.Tensor, config: ImageConfig) -> Image.Image:
    """The RGB picture of (3, S, S) normalised pixels: what the model reads, after ``image_to_tensor``'s resize."""
    values = pixels.numpy()  # (3, S, S), normalised
    mean = np.asarray(config.mean, np.float32)[:, None, None]
    std = np.asarray(config.std, np.float32)[:, None, None]
    rgb = np.clip((values * std + mean) * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(rgb.transpose(1, 2, 0))
