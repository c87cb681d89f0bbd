"""Reading pictures people hand us, safely, and converting them to and from tensors.

A picture comes from a path (command line) or from bytes (a Discord attachment). It is
checked before it is decoded: the byte size first, then the dimensions its header
claims, so a decompression bomb (a small file that claims a huge canvas) is refused
without allocating the canvas. Then it is fully decoded (a truncated file fails here,
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off; a JPEG at a reduced scale when it is
far larger than asked for), turned upright by its EXIF orientation, flattened onto the
paper colour where it is transparent, and centre-cropped to the shape asked for and
resized to exactly that size.

Every refusal is an :class:`ImageInputError` whose message is one line naming the
file and the problem, meant to be shown to the person who supplied the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# 32 MiB: well above what a phone photo or a Discord attachment weighs, far below memory trouble.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# 40 megapixels decoded at once. Pillow holds at most 4 bytes a pixel in every mode we read,
# so the decoded picture takes at most 160 MB, and it is the only full-size copy: flattening
# and shrinking work on strips of it. Measured peak RSS above the process before a load of a
# 6300x6300 picture to 512x512 .. 1024x1024 (ru_maxrss; Pillow 13, x86-64): RGBA or LA PNG
# +180-190 MB, RGB PNG +170-180 MB, 16-bit greyscale PNG +100-115 MB (without strips the
# RGBA one took 910 MB). A JPEG decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling)
# when it is much larger than asked for, and the limit applies to what is decoded: a 48-50
# megapixel phone photo loads (8160x6120: +35-110 MB). Stricter than Pillow's own bomb limit
# (MAX_IMAGE_PIXELS) on the header, which stays in force.
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
# Formats whose decoder can scale down while decoding (Image.draft).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_FORMAT_NAMES = {"WEBP": "WebP"}
# EXIF orientation -> the transpose that turns the stored picture upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# A box reduction (or a JPEG's reduced-scale decode) stops at twice the requested size a side,
# leaving the last step to Lanczos: Pillow's thumbnail() does the same (its reducing_gap).
# Three would be closer to a Lanczos resize of the whole picture, but the shrunk copy could
# then be up to 6x the requested size a side (150 MB for 1024x1024) instead of 4x.
_REDUCING_GAP = 2
# Source pixels converted at a time while shrinking: a strip, never a full-size copy.
_STRIP_PIXELS = 1_000_000


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
    orientation: int = 1  # EXIF orientation (1: stored upright)

    @property
    def upright_size(self) -> tuple[int, int]:
        """Width and height as the picture is shown (after its EXIF orientation)."""
        if self.orientation in _QUARTER_TURNS:
            return self.height, self.width
        return self.width, self.height


def format_list(formats: tuple[str, ...] | list[str]) -> str:
    """``("PNG", "JPEG", "WEBP")`` → ``"PNG, JPEG or WebP"`` (for messages)."""
    names = [_FORMAT_NAMES.get(f, f) for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def megapixels(pixels: int) -> str:
    """``40_000_000`` → ``"40 megapixels"``; ``1_500_000`` → ``"1.5 megapixels"``."""
    value = round(pixels / 1e6, 1)
    return f"{value:g} megapixel{'' if value == 1 else 's'}"


def _draft_scale(width: int, height: int, max_pixels: int) -> int | None:
    """The smallest JPEG decode scale (1, 2, 4, 8) that fits ``max_pixels``; None if none does."""
    for scale in (1, 2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            return scale
    return None


def check_dimensions(
    width: int,
    height: int,
    format: str,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """Refuse a picture by the dimensions it claims, before it is downloaded or decoded.

    ``format`` is Pillow's name for it (``"PNG"``, ``"JPEG"``…): a JPEG is decoded at a
    reduced scale, so it may be larger than ``max_pixels`` as long as 1/8 of it fits (and
    it is within Pillow's own ``MAX_IMAGE_PIXELS``, as every picture must be).
    """
    label = name or "the picture"
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{label}: the image has no pixels ({width}x{height})")
    pixels = width * height
    bomb_limit = Image.MAX_IMAGE_PIXELS or pixels
    if format in _DRAFT_FORMATS:
        fits, limit = _draft_scale(width, height, max_pixels) is not None, min(64 * max_pixels, bomb_limit)
    else:
        fits, limit = pixels <= max_pixels, min(max_pixels, bomb_limit)
    if not fits or pixels > bomb_limit:
        raise ImageInputError(
            f"{label}: too large ({width}x{height}, {megapixels(pixels)}); "
            f"downscale it to at most {megapixels(limit)}"
        )


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


def _open_lazily(
    data: bytes, label: str, max_pixels: int, formats: tuple[str, ...] | list[str]
) -> Image.Image:
    """Open the picture without decoding it and check the dimensions and mode its header claims."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat the warning as a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(formats))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            claimed = megapixels(Image.MAX_IMAGE_PIXELS or 0)
            raise ImageInputError(
                f"{label}: too large (its header claims more than {claimed}); "
                f"downscale it to at most {megapixels(max_pixels)}"
            ) from None
        except UnidentifiedImageError:
            raise ImageInputError(f"{label}: not a {format_list(formats)} picture") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # A recognised format whose header is broken (Pillow's wording stays in the chain).
            raise ImageInputError(f"{label}: the picture is damaged (its header cannot be read)") from exc
    check_dimensions(img.width, img.height, img.format or "", name=label, max_pixels=max_pixels)
    if img.mode not in _SUPPORTED_MODES and img.mode not in _SIXTEEN_BIT_MODES:
        raise ImageInputError(
            f"{label}: unsupported image mode {img.mode!r} (use 8-bit RGB, RGBA or greyscale)"
        )
    return img


def _orientation(img: Image.Image, label: str) -> int:
    """The picture's EXIF orientation (1 where it has none, or one we do not know)."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct_error) as exc:
        raise ImageInputError(f"{label}: unreadable EXIF orientation") from exc
    return value if value in _UPRIGHT else 1


def probe_image(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    formats: tuple[str, ...] | list[str] = SUPPORTED_FORMATS,
) -> ImageInfo:
    """Check a picture's byte size, format and claimed dimensions without decoding its pixels.

    The orientation is read from EXIF where the header holds it (JPEG, WebP, TIFF, and PNGs
    that put it before their pixels); a PNG with its EXIF after the pixels reports 1.
    """
    data, label = _read_source(source, name, max_bytes)
    img = _open_lazily(data, label, max_pixels, formats)
    orientation = 1
    if img.format != "PNG" or "exif" in img.info:  # a PNG's getexif() would decode the pixels
        orientation = _orientation(img, label)
    return ImageInfo(
        format=img.format or "",
        width=img.width,
        height=img.height,
        mode=img.mode,
        nbytes=len(data),
        orientation=orientation,
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


def _centre_box(size: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred region of a ``size`` picture with the aspect of ``shape``."""
    width, height = size
    if width * shape[1] > height * shape[0]:  # wider than the shape: cut the sides
        crop_w, crop_h = max(1, round(height * shape[0] / shape[1])), height
    else:
        crop_w, crop_h = width, max(1, round(width * shape[1] / shape[0]))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def _shrink_factor(box: tuple[int, int, int, int], shape: tuple[int, int]) -> int:
    """How many times a region may be reduced and keep ``_REDUCING_GAP`` times ``shape`` a side."""
    return max(
        1,
        min((box[2] - box[0]) // (_REDUCING_GAP * shape[0]), (box[3] - box[1]) // (_REDUCING_GAP * shape[1])),
    )


def _draft(img: Image.Image, shape: tuple[int, int], label: str, max_pixels: int) -> Image.Image:
    """Have a JPEG decode at 1/2, 1/4 or 1/8 scale where that keeps ``_REDUCING_GAP`` x ``shape``.

    Also where the full size would pass ``max_pixels`` (check_dimensions allowed it because
    a reduced scale fits). Formats that cannot scale while decoding are left as they are.
    """
    if img.format not in _DRAFT_FORMATS:
        return img
    needed = _draft_scale(img.width, img.height, max_pixels) or 8
    room = _shrink_factor(_centre_box(img.size, shape), shape)
    scale = max(needed, next(s for s in (8, 4, 2, 1) if s <= room))
    if scale > 1:
        # Pillow picks the largest power of two within size's ratio, which is exactly scale.
        img.draft(None, (img.width // scale, img.height // scale))
    if img.width * img.height > max_pixels:  # the decoder could not scale (e.g. several tiles)
        check_dimensions(img.width, img.height, "", name=label, max_pixels=max_pixels)
    return img


def _shrunk_on_paper(
    img: Image.Image, shape: tuple[int, int], label: str, paper: tuple[int, int, int]
) -> Image.Image:
    """The centre of ``img`` with ``shape``'s aspect, flattened to RGB and box-reduced.

    Strip by strip, so the decoded picture is the only full-size copy in memory: a mode
    conversion or an alpha composite of the whole picture would double or triple it. The
    reduction is by a whole factor (an exact average of each factor x factor block), and
    strips start on multiples of it, so the result equals reducing the whole region.
    """
    box = _centre_box(img.size, shape)
    factor = _shrink_factor(box, shape)
    # Whole blocks only (a partial block at an edge would average fewer pixels): trim the
    # region, evenly on both sides, to a multiple of the factor.
    width, height = (box[2] - box[0]) // factor * factor, (box[3] - box[1]) // factor * factor
    left = box[0] + (box[2] - box[0] - width) // 2
    top = box[1] + (box[3] - box[1] - height) // 2
    bottom = top + height
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))
    out = Image.new("RGB", (width // factor, height // factor))
    for y in range(top, bottom, rows):
        strip = _to_rgb_on_paper(img.crop((left, y, left + width, min(y + rows, bottom))), label, paper)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, (y - top) // factor))
    return out


def load_image(
    source: str | Path | bytes | bytearray | memoryview,
    width: int,
    height: int,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    paper: tuple[int, int, int] = DEFAULT_PAPER,
    formats: tuple[str, ...] | list[str] = SUPPORTED_FORMATS,
) -> Image.Image:
    """Read a picture from a path or bytes and return it as RGB, exactly ``width`` x ``height``.

    The picture is centre-cropped to the requested shape (no stretching, no borders), then
    resized. ``name`` labels the picture in error messages (for bytes, e.g. an attachment's
    file name); ``formats`` narrows the decoders tried (a caller accepting fewer says so).
    The size must be a multiple of 8 (what SD's VAE and the painter's cells need). Raises
    :class:`ImageInputError` for anything unusable; nothing is written anywhere.
    """
    _check_size(width, height)
    data, label = _read_source(source, name, max_bytes)
    img = _open_lazily(data, label, max_pixels, formats)
    if img.format in _DRAFT_FORMATS:
        # A JPEG's EXIF is in its header: the stored shape of the request is known before decoding.
        turned = _orientation(img, label) in _QUARTER_TURNS
        img = _draft(img, (height, width) if turned else (width, height), label, max_pixels)
    try:
        img.load()
    except (Image.DecompressionBombError, MemoryError):
        raise ImageInputError(
            f"{label}: too large to decode; downscale it to at most {megapixels(max_pixels)}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports a short file as OSError("image file is truncated ...") and broken
        # compressed data as OSError/SyntaxError/ValueError, depending on the format; its
        # wording stays in the exception chain (logs), the member reads ours.
        raise ImageInputError(f"{label}: the picture is damaged or truncated") from exc
    orientation = _orientation(img, label)  # after decoding: a PNG may keep EXIF after its pixels
    shape = (height, width) if orientation in _QUARTER_TURNS else (width, height)
    shrunk = _shrunk_on_paper(img, shape, label, paper)
    del img  # the full-size decode goes before the final resize
    if orientation in _UPRIGHT:
        shrunk = shrunk.transpose(_UPRIGHT[orientation])
    # The shrunk picture already has the requested shape; fit only trims rounding and resizes.
    return ImageOps.fit(shrunk, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


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
