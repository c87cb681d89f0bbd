"""Safe picture loading: refusals are one clear line, good pictures come out upright and exact."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from painter.images import (
    DEFAULT_PAPER,
    ImageInputError,
    check_dimensions,
    format_list,
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
    assert str(path) in message and "not a PNG, JPEG, WebP, GIF, BMP or TIFF picture" in message


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    data = _noise_png()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    # The header is intact, so probing alone cannot tell; decoding must.
    assert probe_image(path).width == 64
    with pytest.raises(ImageInputError) as exc:
        load_image(path, 64, 64)
    message = _one_line(exc)
    assert message == f"{path}: the picture is damaged or truncated"


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
    assert (
        _one_line(exc) == f"{path}: too large (3000x2000, 6 megapixels); downscale it to at most 1 megapixel"
    )


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


def _phone_photo(orientation: int = 1) -> bytes:
    """An 8160x6120 JPEG (a 50-megapixel phone's full resolution): left half red, right half blue."""
    img = Image.new("RGB", (8160, 6120), (20, 20, 220))
    img.paste((220, 20, 20), (0, 0, 4080, 6120))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80, exif=exif)
    return buf.getvalue()


def test_fifty_megapixel_phone_jpeg_loads_upright_at_a_reduced_decode() -> None:
    # Over the 40-megapixel limit at full size; libjpeg decodes it at 1/4 scale for this request.
    data = _phone_photo(orientation=6)  # shown rotated: portrait, red on top
    info = probe_image(data)
    assert (info.width, info.height, info.orientation) == (8160, 6120, 6)
    assert info.upright_size == (6120, 8160)
    img = load_image(data, 48, 64, name="phone.jpg")
    assert img.size == (48, 64)
    top, bottom = np.asarray(img)[8, 24].astype(int), np.asarray(img)[56, 24].astype(int)
    assert top[0] > 180 and top[2] < 60
    assert bottom[2] > 180 and bottom[0] < 60


def test_jpeg_past_even_an_eighth_of_the_limit_and_other_formats_past_it_are_refused() -> None:
    # A JPEG may exceed the limit by as much as its 1/8-scale decode allows, nothing else may.
    check_dimensions(8160, 6120, "JPEG")
    with pytest.raises(ImageInputError) as exc:
        check_dimensions(8160, 6120, "PNG", name="photo.png")
    assert (
        str(exc.value)
        == "photo.png: too large (8160x6120, 49.9 megapixels); downscale it to at most 40 megapixels"
    )
    with pytest.raises(ImageInputError, match="downscale it to at most 64 megapixels"):
        check_dimensions(9000, 9000, "JPEG", max_pixels=1_000_000, name="huge.jpg")
    with pytest.raises(ImageInputError, match="no pixels"):
        check_dimensions(0, 10, "PNG")


def test_a_7000_square_png_names_the_megapixels_to_downscale_to(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(7000, 7000))  # 49 megapixels, under Pillow's own limit
    with pytest.raises(ImageInputError) as exc:
        probe_image(path)
    assert (
        _one_line(exc)
        == f"{path}: too large (7000x7000, 49 megapixels); downscale it to at most 40 megapixels"
    )


def test_truncated_jpeg_is_refused_without_pillows_wording() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(buf, "JPEG")
    cut = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]
    with pytest.raises(ImageInputError) as exc:
        load_image(cut, 64, 64, name="holiday.jpg")
    assert _one_line(exc) == "holiday.jpg: the picture is damaged or truncated"
    assert "bytes not processed" in str(exc.value.__cause__)  # Pillow's words stay for the logs


def test_formats_narrow_what_is_read_and_the_message_lists_them() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="BMP")
    assert load_image(buf.getvalue(), 16, 16).size == (16, 16)  # the painter reads BMP
    accepted = ("PNG", "JPEG", "WEBP", "GIF")
    with pytest.raises(ImageInputError) as exc:
        load_image(buf.getvalue(), 16, 16, name="cat.png", formats=accepted)
    assert str(exc.value) == "cat.png: not a PNG, JPEG, WebP or GIF picture"
    assert format_list(accepted) == "PNG, JPEG, WebP or GIF"


def test_unsupported_mode_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(path)
    with pytest.raises(ImageInputError, match="unsupported image mode 'F'"):
        probe_image(path)


def test_a_large_picture_shrinks_to_the_same_result_as_a_whole_picture_resize() -> None:
    # Transparent and palette pictures are flattened strip by strip and box-reduced: the result
    # matches flattening the whole picture and resizing it at once.
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (8, 12, 4), dtype=np.uint8)
    rgba = Image.fromarray(small).resize((1800, 1200), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out = np.asarray(load_image(buf.getvalue(), 96, 64), dtype=float)
    sheet = Image.new("RGBA", rgba.size, (*DEFAULT_PAPER, 255))
    whole = Image.alpha_composite(sheet, rgba).convert("RGB").resize((96, 64), Image.Resampling.LANCZOS)
    difference = np.abs(out - np.asarray(whole, dtype=float))
    assert difference.mean() < 1.0 and difference.max() < 8


# VmHWM is the process's own peak RSS (ru_maxrss would carry the parent's over exec).
_PEAK_SCRIPT = """
import sys
from painter.images import load_image
def kib(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1])
data = open(sys.argv[1], "rb").read()
before = kib("VmRSS")
load_image(data, 512, 512)
print((kib("VmHWM") - before) * 1024)
"""


def test_an_rgba_load_keeps_one_full_size_copy_in_memory(tmp_path: Path) -> None:
    """Flattening a 4000x4000 RGBA picture whole took about 6 copies of it (64 MB each); now 1.5."""
    y, x = np.mgrid[0:4000, 0:4000]
    ramp = ((x + y) % 256).astype(np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(np.dstack([ramp, ramp.T, ramp[::-1], ramp])).save(path, compress_level=1)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)], cwd=root, capture_output=True, text=True, check=True
    )
    decoded = 4000 * 4000 * 4
    assert int(done.stdout) < 2 * decoded, f"peak {int(done.stdout) / 2**20:.0f} MB"
