"""Reading pictures people hand us, safely, and converting them to and from tensors.

A picture comes from a path (command line) or from bytes (a Discord attachment). It is
checked before it is decoded: the byte size first, then the dimensions its header
claims, so a decompression bomb (a small file that claims a huge canvas) is refused
without allocating the canvas. Then it is fully decoded (a truncated file fails here,
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off), turned upright by its EXIF
orientation, flattened onto the paper colour where it is transparent, and resized and
centre-cropped to exactly the size asked for.

Every refusal is an :class:`ImageInputError` whose message is one line naming the
file and the problem, meant to be shown to the person who supplied the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# 32 MiB: well above what a phone photo or a Discord attachment weighs, far below memory trouble.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# 40 megapixels: a 50-megapixel camera's RGBA decode would need 200 MB; this keeps a decode
# under 160 MB. Stricter than Pillow's own bomb limit (MAX_IMAGE_PIXELS), which stays in force.
DEFAULT_MAX_PIXELS = 40_000_000
# The paper colour the canvas starts as; transparent pixels are flattened onto it.
DEFAULT_PAPER: tuple[int, int, int] = (245, 240, 230)

# Only these decoders are tried. Pillow can open more (EPS runs Ghostscript, some read
# from other files); a picture for painting comes in one of these.
# (JPEG covers MPO, the multi-picture JPEG phones write.)
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Modes that convert to RGB without losing meaning. 32-bit integer and float modes
# ("I", "F") have no agreed range and are refused rather than guessed at.
_SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageInputError(ValueError):
    """A picture that cannot be used: the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What a picture's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int
    mode: str
    nbytes: int


def _read_source(
    source: str | Path | bytes | bytearray | memoryview, name: str | None, max_bytes: int
) -> tuple[bytes, str]:
    """Return the file's bytes and the name to use in messages, refusing oversize input unread."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "the uploaded image"
        data = bytes(source)
        if len(data) > max_bytes:
            raise ImageInputError(f"{label}: too large ({len(data)} bytes; the limit is {max_bytes} bytes)")
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise ImageInputError(f"{label}: file not found")
        if not path.is_file():
            raise ImageInputError(f"{label}: not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageInputError(f"{label}: too large ({size} bytes; the limit is {max_bytes} bytes)")
        try:
            with path.open("rb") as handle:
                # Read one byte past the limit: a file that grew since stat() is still refused.
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageInputError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
        if len(data) > max_bytes:
            raise ImageInputError(f"{label}: too large (over {max_bytes} bytes)")
    if not data:
        raise ImageInputError(f"{label}: empty file, not an image")
    return data, label


def _open_lazily(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Open the picture without decoding it and check the dimensions its header claims."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat the warning as a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
            raise ImageInputError(
                f"{label}: too large (its header claims more than {Image.MAX_IMAGE_PIXELS} pixels; "
                f"the limit is {limit} pixels)"
            ) from None
        except UnidentifiedImageError:
            raise ImageInputError(
                f"{label}: not an image (or not one of {', '.join(SUPPORTED_FORMATS)})"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # A recognised format whose header is broken.
            raise ImageInputError(f"{label}: damaged image header ({exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{label}: the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageInputError(
            f"{label}: too large ({width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels)"
        )
    return img


def probe_image(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImageInfo:
    """Check a picture's byte size, format and claimed dimensions without decoding its pixels."""
    data, label = _read_source(source, name, max_bytes)
    img = _open_lazily(data, label, max_pixels)
    return ImageInfo(
        format=img.format or "", width=img.width, height=img.height, mode=img.mode, nbytes=len(data)
    )


def _check_size(width: int, height: int) -> None:
    for label, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise ImageInputError(f"requested {label} {value!r} is not a positive multiple of 8")


def _to_rgb_on_paper(img: Image.Image, label: str, paper: tuple[int, int, int]) -> Image.Image:
    """Convert any supported mode to RGB, compositing transparency onto the paper colour."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling; scale by hand.
        values = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        mode = "L"
    elif mode not in _SUPPORTED_MODES:
        raise ImageInputError(f"{label}: unsupported image mode {mode!r} (use 8-bit RGB, RGBA or greyscale)")
    has_alpha = mode in {"LA", "La", "PA", "RGBA", "RGBa"} or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    sheet = Image.new("RGBA", rgba.size, (*paper, 255))
    return Image.alpha_composite(sheet, rgba).convert("RGB")


def load_image(
    source: str | Path | bytes | bytearray | memoryview,
    width: int,
    height: int,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    paper: tuple[int, int, int] = DEFAULT_PAPER,
) -> Image.Image:
    """Read a picture from a path or bytes and return it as RGB, exactly ``width`` x ``height``.

    ``name`` labels the picture in error messages (for bytes, e.g. an attachment's file
    name). The size must be a multiple of 8 (what SD's VAE and the painter's cells need).
    Raises :class:`ImageInputError` for anything unusable; nothing is written anywhere.
    """
    _check_size(width, height)
    data, label = _read_source(source, name, max_bytes)
    img = _open_lazily(data, label, max_pixels)
    try:
        img.load()
    except (Image.DecompressionBombError, MemoryError):
        raise ImageInputError(f"{label}: too large to decode (the limit is {max_pixels} pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports a short file as OSError("image file is truncated ...") and broken
        # compressed data as OSError/SyntaxError/ValueError, depending on the format.
        raise ImageInputError(f"{label}: truncated or damaged image data ({exc})") from None
    try:
        upright = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as exc:
        raise ImageInputError(f"{label}: unreadable EXIF orientation ({exc})") from None
    rgb = _to_rgb_on_paper(upright if upright is not None else img, label, paper)
    # Scale to cover the requested size, then cut the centre: no stretching, no borders.
    return ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB picture as a float32 tensor ``[3, H, W]`` in [-1, 1] (the painter's pixel space)."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """The inverse of :func:`image_to_tensor`: ``[3, H, W]`` in [-1, 1] (clamped) to an RGB picture."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(tensor.shape)}")
    scaled = ((tensor.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255)
    return Image.fromarray(scaled.to(torch.uint8).permute(1, 2, 0).numpy())
