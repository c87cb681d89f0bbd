"""Safe picture loading: refusals are one clear line, good pictures come out upright and exact."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from painter.images import (
    DEFAULT_PAPER,
    ImageInputError,
    image_to_tensor,
    load_image,
    probe_image,
    tensor_to_image,
)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims width x height but holds a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _noise_png(width: int = 64, height: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _one_line(exc: pytest.ExceptionInfo[ImageInputError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_text_file_renamed_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "holiday.png"
    path.write_text("this is a shopping list, not a picture\n")
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 64, 64)
    message = _one_line(exc)
    assert str(path) in message and "not an image" in message


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    data = _noise_png()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    # The header is intact, so probing alone cannot tell; decoding must.
    assert probe_image(path).width == 64
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 64, 64)
    message = _one_line(exc)
    assert str(path) in message and "truncated" in message


def test_header_claiming_20000_square_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(20000, 20000))
    assert path.stat().st_size < 200
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own guard stays on
    for call in (lambda: probe_image(path), lambda: load_image(path, 512, 512)):
        with pytest.raises(ImageInputError) as exc:
            call()
        message = _one_line(exc)
        assert str(path) in message and "too large" in message and "pixels" in message


def test_header_over_our_pixel_limit_names_dimensions_and_limit(tmp_path: Path) -> None:
    # Under Pillow's bomb limit, over ours: our own check must catch it.
    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(3000, 2000))
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 64, 64, max_pixels=1_000_000)
    assert "3000x2000" in _one_line(exc) and "1000000" in str(exc.value)


def test_file_over_byte_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "heavy.png"
    path.write_bytes(_noise_png())
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 64, 64, max_bytes=1000)
    message = _one_line(exc)
    assert "too large" in message and "1000 bytes" in message
    with pytest.raises(ImageInputError, match="too large"):
        load_image(path.read_bytes(), 64, 64, max_bytes=1000, name="upload.png")


def test_missing_file_and_unsupported_mode(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="file not found"):
        load_image(tmp_path / "nope.png", 64, 64)
    path = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(path)
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 16, 16)
    assert "unsupported image mode 'F'" in _one_line(exc)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display", so the upright picture is portrait, red on top.
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32] = (220, 20, 20)
    stored[:, 32:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)
    img = load_image(path, 32, 64)
    assert img.size == (32, 64)
    top, bottom = np.asarray(img)[8, 16].astype(int), np.asarray(img)[56, 16].astype(int)
    assert top[0] > 180 and top[2] < 60
    assert bottom[2] > 180 and bottom[0] < 60


def test_rgba_flattens_onto_paper(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (0, 0, 0, 0)  # fully transparent: paper shows
    rgba[:, 8:] = (0, 0, 0, 128)  # half-covered black: half paper
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    img = load_image(path, 16, 16, paper=DEFAULT_PAPER)
    assert img.mode == "RGB"
    pixels = np.asarray(img).astype(int)
    assert tuple(pixels[8, 2]) == DEFAULT_PAPER
    assert np.allclose(pixels[8, 13], np.array(DEFAULT_PAPER) * 127 / 255, atol=2)


def test_palette_transparency_flattens_onto_custom_paper(tmp_path: Path) -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 255, 0] * 256)
    path = tmp_path / "sticker.gif"
    img.save(path, transparency=0)
    out = load_image(path, 16, 16, paper=(10, 20, 30))
    assert tuple(np.asarray(out)[4, 4]) == (10, 20, 30)


def test_resize_and_centre_crop_give_exact_size_without_stretching() -> None:
    wide = np.zeros((50, 100, 3), dtype=np.uint8)
    wide[:, :25] = (255, 0, 0)
    wide[:, 25:75] = (0, 255, 0)
    wide[:, 75:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    img = load_image(buf.getvalue(), 48, 40, name="wide.png")
    assert img.size == (48, 40)
    pixels = np.asarray(img).astype(int)
    # Scaled to cover (100x50 -> 96x48... 80x40 here), cropped at the centre: only green survives.
    assert np.all(pixels[:, 4:-4, 1] > 240) and np.all(pixels[:, 4:-4, 0] < 15)


def test_size_not_multiple_of_8_is_refused() -> None:
    data = _noise_png()
    with pytest.raises(ImageInputError, match="width 500 is not a positive multiple of 8"):
        load_image(data, 500, 512)
    with pytest.raises(ImageInputError, match="height 0"):
        load_image(data, 512, 0)


def test_tensor_round_trip_is_exact() -> None:
    img = Image.open(io.BytesIO(_noise_png(24, 16)))
    tensor = image_to_tensor(img)
    assert tensor.shape == (3, 16, 24) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), np.asarray(img.convert("RGB")))
