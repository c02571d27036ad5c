"""Tests for mmbm.image: every input kind, every refusal, and the pixel tensors."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from mmbm.config import ImageConfig
from mmbm.errors import ConfigError, ImageError
from mmbm.image import image_to_tensor, images_to_batch, load_image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def noise_image(size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def two_halves(size: tuple[int, int], left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def bilevel_png(width: int, height: int) -> bytes:
    """A real, all-black 1-bit PNG streamed through zlib: tiny on disk, width*height pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed zero bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    body = b"".join(
        compressor.compress(row * min(rows_per_block, height - start)) for start in range(0, height, rows_per_block)
    )
    idat = body + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel((x, y)))


def assert_close(actual: tuple, expected: tuple, tolerance: int = 3) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


# ---- inputs that load -------------------------------------------------------------------


def test_png_from_path_str_bytes_and_pil_give_identical_pixels(tmp_path: Path) -> None:
    original = noise_image()
    path = tmp_path / "scene.png"
    original.save(path)
    for source in (path, str(path), path.read_bytes(), Image.open(path), np.asarray(original)):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (96, 64)
        assert np.array_equal(np.asarray(loaded), np.asarray(original))


def test_greyscale_and_bilevel_become_equal_rgb_channels() -> None:
    grey = Image.linear_gradient("L").resize((32, 32))
    loaded = np.asarray(load_image(encode(grey, "PNG")))
    assert np.array_equal(loaded[..., 0], np.asarray(grey)) and np.array_equal(loaded[..., 0], loaded[..., 2])
    bilevel = load_image(encode(two_halves((16, 8), 0, 1, mode="1"), "PNG"))
    assert pixel(bilevel, 0, 0) == BLACK and pixel(bilevel, 15, 0) == WHITE


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    png = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    assert np.asarray(load_image(png))[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(load_image(values))[0, :, 1].tolist() == [0, 1, 128, 255]
    as_mode_i = Image.fromarray(values.astype(np.int32))
    assert as_mode_i.mode == "I"
    assert np.asarray(load_image(as_mode_i))[0, :, 2].tolist() == [0, 1, 128, 255]


def test_float_mode_f_image_in_unit_range_is_scaled_and_out_of_range_refused() -> None:
    ramp = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert ramp.mode == "F"
    assert np.asarray(load_image(ramp))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ImageError, match=r"must be in \[0, 1\].*\[0, 200\]"):
        load_image(Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32)))


@pytest.mark.parametrize("background", [WHITE, BLACK, (10, 200, 30)])
def test_rgba_is_composited_on_the_configured_background(background: tuple) -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 4, 8))  # left half opaque red, right half transparent
    loaded = load_image(encode(image, "PNG"), ImageConfig(background=background))
    assert pixel(loaded, 0, 0) == RED and pixel(loaded, 7, 0) == background


def test_half_transparent_la_and_palette_transparency_are_composited() -> None:
    half = load_image(Image.new("LA", (4, 4), (0, 128)))  # black at half opacity on white
    assert_close(pixel(half, 0, 0), (127, 127, 127), tolerance=1)
    palette = two_halves((8, 8), 1, 2, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    gif = encode(palette, "GIF", transparency=2)  # blue index is transparent
    loaded = load_image(gif, ImageConfig(background=GREEN))
    assert pixel(loaded, 0, 0) == RED and pixel(loaded, 7, 0) == GREEN
    assert pixel(load_image(encode(palette, "PNG")), 7, 0) == BLUE  # no transparency: palette colour kept


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    loaded = load_image(encode(cmyk, "JPEG", quality=95))
    assert loaded.mode == "RGB"
    assert_close(pixel(loaded, 8, 8), RED, tolerance=8)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    jpeg = encode(two_halves((40, 20), RED, BLUE), "JPEG", exif=exif, quality=95)
    loaded = load_image(jpeg)
    assert loaded.size == (20, 40)
    assert_close(pixel(loaded, 10, 5), RED, tolerance=12)  # the left half is now on top
    assert_close(pixel(loaded, 10, 35), BLUE, tolerance=12)


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]


@pytest.mark.parametrize("file_format", ["GIF", "PNG", "WEBP"])
def test_animation_gives_its_first_frame(file_format: str) -> None:
    if file_format == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    first, *rest = _frames()
    options = {"lossless": True} if file_format == "WEBP" else {}
    data = encode(first, file_format, save_all=True, append_images=rest, duration=100, loop=0, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert pixel(load_image(data), 4, 4) == RED


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((4, 5), 200, np.uint8), (200, 200, 200)),
        (np.full((4, 5, 1), 200, np.uint8), (200, 200, 200)),
        (np.broadcast_to(np.array([10, 20, 30], np.uint8), (4, 5, 3)), (10, 20, 30)),
        (np.broadcast_to(np.array([255, 0, 0, 0], np.uint8), (4, 5, 4)), WHITE),  # fully transparent
        (np.full((4, 5, 3), 65535, np.uint16), WHITE),
        (np.full((4, 5, 3), 0.5, np.float64), (128, 128, 128)),
        (np.full((4, 5), 1.0, np.float32), WHITE),
    ],
)
def test_arrays_of_each_shape_and_dtype(array: np.ndarray, expected: tuple) -> None:
    loaded = load_image(array)
    assert loaded.mode == "RGB" and loaded.size == (5, 4)
    assert pixel(loaded, 2, 2) == expected


# ---- refusals -----------------------------------------------------------------------------


def test_missing_file_and_directory_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"not found: .*nowhere\.png"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("data", [b"this is plain text, not pixels" * 4, b"\x89PNG\r\n\x1a\n", b""])
def test_non_image_bytes_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="Not an image"):
        load_image(path)
    with pytest.raises(ImageError, match="Not an image"):
        load_image(data)


@pytest.mark.parametrize("file_format", ["PNG", "JPEG"])
def test_truncated_file_is_refused_not_half_decoded(file_format: str) -> None:
    data = encode(noise_image((128, 128)), file_format)
    with pytest.raises(ImageError, match="Truncated or corrupt"):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupted_pixel_data_is_refused() -> None:
    data = bytearray(encode(noise_image((64, 64)), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start : start + 200] = bytes(200)  # zero out part of the compressed stream
    with pytest.raises(ImageError, match="corrupt"):
        load_image(bytes(data))


def test_zero_size_images_are_refused() -> None:
    with pytest.raises(ImageError, match="Zero-size image.*0x0"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageError, match="Zero-size image.*5x0"):
        load_image(np.zeros((0, 5, 3), np.uint8))


def test_image_over_max_pixels_is_refused_with_its_size() -> None:
    data = encode(noise_image((200, 100)), "PNG")
    with pytest.raises(ImageError, match=r"too large.*200x100 = 20,000 pixels.*10,000"):
        load_image(data, ImageConfig(max_pixels=10_000))
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((100, 200, 3), np.uint8), ImageConfig(max_pixels=10_000))
    assert load_image(data, ImageConfig(max_pixels=20_000)).size == (200, 100)


@pytest.mark.parametrize(("side", "reason"), [(8_000, "64,000,000 pixels"), (20_000, "Pillow's hard limit")])
def test_decompression_bomb_is_refused_from_its_header_without_decoding(
    side: int, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = bilevel_png(side, side)
    assert len(bomb) < 100_000  # tiny on disk, side * side pixels when decoded
    decoded: list[str] = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append("load") or original_load(self))
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=f"too large.*{reason}"):
        load_image(bomb)
    assert decoded == []
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert load_image(bilevel_png(64, 64)).size == (64, 64)  # the same encoder's small image loads
    assert decoded  # the spy does see decoding when it happens


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((4, 4), np.nan, np.float32), "16 non-finite"),
        (np.array([[0.0, np.inf]]), "1 non-finite"),
        (np.full((4, 4, 3), 1.5), r"must be in \[0, 1\]"),
        (np.full((4, 4, 3), -0.1), r"must be in \[0, 1\]"),
        (np.zeros(16, np.uint8), "2 or 3 dimensions"),
        (np.zeros((2, 4, 4, 3), np.uint8), "2 or 3 dimensions"),
        (np.zeros((4, 4, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((4, 4, 5), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((4, 4, 3), np.int64), "Unsupported image array dtype int64"),
    ],
)
def test_bad_arrays_are_refused(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(array)


@pytest.mark.parametrize("source", [42, None, [[0, 0]], 3.5])
def test_wrong_input_type_is_refused(source: object) -> None:
    with pytest.raises(ImageError, match=f"Wrong input type for an image: {type(source).__name__}"):
        load_image(source)  # type: ignore[arg-type]


# ---- pixels for the model -------------------------------------------------------------------


def test_image_to_tensor_shape_range_and_normalisation() -> None:
    config = ImageConfig(image_size=32)
    white = image_to_tensor(Image.new("RGB", (50, 50), WHITE), config)
    assert white.shape == (3, 32, 32) and white.dtype == torch.float32
    assert torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    red = image_to_tensor(
        Image.new("RGB", (32, 32), RED), ImageConfig(image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    )
    assert red[:, 5, 5].tolist() == [1.0, 0.0, 0.0]
    assert torch.isfinite(image_to_tensor(load_image(noise_image()), config)).all()


def _striped() -> Image.Image:
    """200x100: a green stripe at the far left, the rest red on the left half and blue on the right."""
    image = two_halves((200, 100), RED, BLUE)
    image.paste(GREEN, (0, 0, 16, 100))
    return image


def _channel_means(tensor: torch.Tensor, row: int, column: int) -> list[int]:
    return [round(v) for v in ((tensor[:, row, column] * 0.5 + 0.5) * 255).tolist()]


def test_resize_modes_pad_crop_and_squash() -> None:
    size = 40
    pad = image_to_tensor(_striped(), ImageConfig(image_size=size, resize="pad", background=BLACK))
    crop = image_to_tensor(_striped(), ImageConfig(image_size=size, resize="crop"))
    squash = image_to_tensor(_striped(), ImageConfig(image_size=size, resize="squash"))
    assert _channel_means(pad, 0, 20) == list(BLACK)  # letterbox band above the image
    assert _channel_means(pad, 20, 0)[1] > 200  # the green stripe is kept
    assert _channel_means(crop, 0, 0) == list(RED)  # centre square: no band, stripe cropped away
    assert _channel_means(squash, 0, 0)[1] > 200  # stretched: stripe kept ...
    assert _channel_means(squash, 0, 12) == list(RED)  # ... and no band
    square = noise_image((60, 60))  # ShapesWorld scenes are square: the three modes agree
    by_mode = [image_to_tensor(square, ImageConfig(image_size=size, resize=mode)) for mode in ("pad", "crop", "squash")]
    assert torch.allclose(by_mode[0], by_mode[1]) and torch.allclose(by_mode[0], by_mode[2])


def test_images_to_batch_stacks_in_order() -> None:
    config = ImageConfig(image_size=16)
    images = [Image.new("RGB", (20, 20), colour) for colour in (RED, GREEN, BLUE)]
    batch = images_to_batch(images, config)
    assert batch.shape == (3, 3, 16, 16)
    assert torch.equal(batch[1], image_to_tensor(images[1], config))
    with pytest.raises(ImageError, match="no images"):
        images_to_batch([], config)


def test_image_to_tensor_refuses_non_rgb_and_non_images() -> None:
    with pytest.raises(ImageError, match="RGB image; got mode 'RGBA'"):
        image_to_tensor(Image.new("RGBA", (8, 8)), ImageConfig())
    with pytest.raises(ImageError, match="expects a PIL.Image; got ndarray"):
        image_to_tensor(np.zeros((8, 8, 3), np.uint8), ImageConfig())  # type: ignore[arg-type]


def test_config_refuses_unknown_resize_mode() -> None:
    with pytest.raises(ConfigError, match="resize"):
        ImageConfig(resize="stretch")  # type: ignore[arg-type]
