"""The picture the offline demo paints: a lighthouse on a rock by the sea at sunset.

No dependency ships a sample photograph (Pillow, imageio and the rest carry none), and
the demo must not download one, so the project draws its own. It is drawn for the
painter: large calm shapes (sky, sea, rock, tower) that the outline-first trail lays
down early, and small ones (waves, glints, stripes, windows, birds, grain) that only
arrive in the late, detailed steps. The drawing is deterministic: the same size gives
the same picture, byte for byte.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Drawn at this multiple of the requested size and scaled down: smooth, anti-aliased edges.
_SUPERSAMPLE = 2
_SEED = 1869  # fixed: the sample picture must not change between runs


def _lerp_colours(stops: list[tuple[float, tuple[int, int, int]]], positions: np.ndarray) -> np.ndarray:
    """Colours at ``positions`` (0..1) interpolated between ``(position, rgb)`` stops: ``[N, 3]``."""
    where = [p for p, _ in stops]
    return np.stack(
        [np.interp(positions, where, [c[i] for _, c in stops]) for i in range(3)], axis=-1
    ).astype(np.float32)


def _backdrop(w: int, h: int, horizon: float, sun: tuple[float, float], sun_r: float) -> np.ndarray:
    """Sky and sea as a float RGB array ``[h, w, 3]`` (0..255), before any shapes."""
    ys = np.arange(h, dtype=np.float32)[:, None] / h
    xs = np.arange(w, dtype=np.float32)[None, :] / w
    sky_stops = [
        (0.0, (38, 42, 98)),
        (0.35, (112, 66, 128)),
        (0.62, (222, 104, 86)),
        (0.85, (250, 168, 84)),
        (1.0, (255, 214, 140)),
    ]
    sky = _lerp_colours(sky_stops, np.clip(ys[:, 0] / horizon, 0, 1))[:, None, :].repeat(w, axis=1)
    sea_stops = [(0.0, (196, 110, 92)), (0.12, (92, 70, 104)), (0.5, (34, 48, 86)), (1.0, (14, 24, 52))]
    sea_pos = np.clip((ys[:, 0] - horizon) / (1 - horizon), 0, 1)
    sea = _lerp_colours(sea_stops, sea_pos)[:, None, :].repeat(w, axis=1)
    img = np.where((ys < horizon)[..., None], sky, sea)

    # The sun's glow in the sky, and its wide warm reflection on the water.
    sx, sy = sun
    dist = np.sqrt(((xs - sx) * w / h) ** 2 + (ys - sy) ** 2)
    glow = np.exp(-((dist / (sun_r * 4.5)) ** 2))[..., None] * (ys < horizon)[..., None]
    img = img * (1 - 0.55 * glow) + np.array([255, 200, 120], np.float32) * 0.55 * glow
    below = np.clip((ys - horizon) / (1 - horizon), 0, 1)
    column = np.exp(-(((xs - sx) / (sun_r * (1.3 + 2.0 * below))) ** 2)) * np.exp(-below * 2.2)
    column = (column * (ys >= horizon))[..., None]
    img = img * (1 - 0.6 * column) + np.array([250, 170, 90], np.float32) * 0.6 * column
    return img


def _draw_sun(draw: ImageDraw.ImageDraw, s: int, w: int, h: int, sun: tuple[float, float], sun_r: float):
    cx, cy, r = sun[0] * w, sun[1] * h, sun_r * h
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 226, 150))
    # Thin cloud bands crossing the lower half of the disc, clipped to it.
    for frac in (0.3, 0.58):
        y0, y1 = cy + frac * r, cy + frac * r + 0.07 * r + s
        half = (r * r - (frac * r) ** 2) ** 0.5
        draw.rectangle([cx - half, y0, cx + half, y1], fill=(236, 140, 104))


def _draw_clouds(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: float) -> None:
    """Long soft banks of cloud, each a few overlapping puffs, warmer nearer the horizon."""
    for _ in range(7):
        y = rng.uniform(0.1, horizon - 0.14) * h
        x = rng.uniform(-0.15, 0.75) * w
        length = rng.uniform(0.2, 0.42) * w
        warmth = y / (horizon * h)
        colour = (int(120 + 110 * warmth), int(80 + 50 * warmth), int(130 - 30 * warmth))
        for _ in range(5):
            px = x + rng.uniform(0, 0.7) * length
            pw = rng.uniform(0.25, 0.5) * length
            ph = rng.uniform(0.01, 0.03) * h
            py = y - rng.uniform(0, 1.2) * ph
            draw.ellipse([px, py - ph, px + pw, py + ph], fill=colour)


def _draw_waves(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, w: int, h: int, horizon, sun_x):
    """Short light and dark wave marks, larger nearer the viewer; brighter in the sun's path."""
    for _ in range(700):
        depth = rng.uniform(0, 1) ** 1.6  # more marks far away, where they are small
        y = (horizon + 0.006 + depth * (1 - horizon)) * h
        x = rng.uniform(0, 1) * w
        length = (0.008 + 0.05 * depth) * w * rng.uniform(0.5, 1.3)
        thick = max(s, (0.6 + 3.0 * depth) * s)
        in_path = np.exp(-(((x / w - sun_x) / (0.06 + 0.12 * depth)) ** 2))
        if rng.uniform() < 0.55:
            base = np.array([70, 86, 130]) * (1 - in_path) + np.array([255, 214, 150]) * in_path
        else:
            base = np.array([10, 18, 40]) * (1 - in_path) + np.array([150, 84, 70]) * in_path
        colour = tuple(int(c) for c in base)
        crest = [(x, y), (x + length * 0.5, y - thick * 0.6), (x + length, y)]
        draw.line(crest, fill=colour, width=int(thick))


def _draw_rock(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: float) -> float:
    """A dark rocky islet on the right; returns the height (pixels) of its top under the tower."""
    water_y = (horizon + 0.24) * h
    profile = [
        (0.38, 0.0),
        (0.42, -0.05),
        (0.47, -0.09),
        (0.53, -0.14),
        (0.58, -0.19),
        (0.63, -0.22),
        (0.70, -0.235),
        (0.77, -0.22),
        (0.83, -0.17),
        (0.90, -0.13),
        (0.96, -0.10),
        (1.02, -0.09),
    ]
    top = [(x * w, water_y + dy * h) for x, dy in profile]
    draw.polygon([*top, (1.02 * w, water_y + 0.012 * h), (0.38 * w, water_y + 0.012 * h)], fill=(44, 34, 40))
    # The face turned to the sun catches warm light; strata and cracks are small, late shapes.
    for i in range(len(profile) - 1):
        (x0, y0), (x1, y1) = top[i], top[i + 1]
        if x1 < 0.66 * w:
            draw.polygon(
                [(x0, y0), (x1, y1), (x1 - 0.01 * w, y1 + 0.04 * h), (x0 - 0.01 * w, y0 + 0.03 * h)],
                fill=(104, 62, 58),
            )
    for _ in range(45):
        x = rng.uniform(0.45, 0.98) * w
        y = water_y - rng.uniform(0.01, 0.12) * h
        length = rng.uniform(0.01, 0.04) * w
        colour = (28, 22, 28) if rng.uniform() < 0.6 else (92, 60, 58)
        end = (x + length, y + rng.uniform(-0.006, 0.006) * h)
        draw.line([(x, y), end], fill=colour, width=int(0.004 * h))
    # Foam where the sea meets the rock.
    for _ in range(60):
        x = rng.uniform(0.36, 1.0) * w
        y = water_y + rng.uniform(-0.004, 0.012) * h
        r = rng.uniform(0.003, 0.008) * w
        draw.ellipse([x - r * 2.5, y - r * 0.5, x + r * 2.5, y + r * 0.5], fill=(232, 212, 200))
    return water_y - 0.235 * h


def _draw_lighthouse(draw: ImageDraw.ImageDraw, s: int, w: int, h: int, ground: float) -> None:
    cx = 0.70 * w
    bottom, top = ground + 0.01 * h, ground - 0.40 * h
    # Widths follow the shorter side, so a wide picture does not get a squat tower.
    unit = min(w, h)
    half_bottom, half_top = 0.055 * unit, 0.035 * unit
    bands = 6

    def half_at(y: float) -> float:
        return half_bottom + (half_top - half_bottom) * (bottom - y) / (bottom - top)

    for k in range(bands):
        y0 = bottom - (bottom - top) * k / bands
        y1 = bottom - (bottom - top) * (k + 1) / bands
        colour = (196, 42, 38) if k % 2 == 0 else (242, 232, 218)
        draw.polygon(
            [(cx - half_at(y0), y0), (cx + half_at(y0), y0), (cx + half_at(y1), y1), (cx - half_at(y1), y1)],
            fill=colour,
        )
    # Shade on the side away from the sun.
    draw.polygon(
        [
            (cx + 0.35 * half_bottom, bottom),
            (cx + half_bottom, bottom),
            (cx + half_top, top),
            (cx + 0.35 * half_top, top),
        ],
        fill=(40, 20, 60, 70),
    )
    # Windows: tiny, late details.
    for k in range(1, bands):
        y = bottom - (bottom - top) * (k + 0.5) / bands
        pane = [cx - 0.006 * unit, y - 0.012 * h, cx + 0.006 * unit, y + 0.012 * h]
        draw.rectangle(pane, fill=(40, 30, 40))
    # Gallery (balcony) with railing, lantern room with its light, and the dark cap.
    gallery_y = top
    iron = (34, 30, 36)
    draw.rectangle([cx - half_top * 1.5, gallery_y - 0.012 * h, cx + half_top * 1.5, gallery_y], fill=iron)
    for i in range(9):
        x = cx - half_top * 1.45 + i * half_top * 2.9 / 8
        draw.line([(x, gallery_y - 0.012 * h), (x, gallery_y - 0.035 * h)], fill=(34, 30, 36), width=s)
    draw.line(
        [(cx - half_top * 1.5, gallery_y - 0.035 * h), (cx + half_top * 1.5, gallery_y - 0.035 * h)],
        fill=(34, 30, 36),
        width=2 * s,
    )
    lamp_top = gallery_y - 0.075 * h
    draw.rectangle(
        [cx - half_top * 0.85, lamp_top, cx + half_top * 0.85, gallery_y - 0.012 * h], fill=(255, 236, 150)
    )
    for i in range(3):
        x = cx - half_top * 0.85 + i * half_top * 0.85
        draw.line([(x, lamp_top), (x, gallery_y - 0.012 * h)], fill=(60, 50, 50), width=s)
    cap = [(cx - half_top * 1.1, lamp_top), (cx + half_top * 1.1, lamp_top), (cx, lamp_top - 0.045 * h)]
    draw.polygon(cap, fill=(40, 32, 40))
    draw.line([(cx, lamp_top - 0.045 * h), (cx, lamp_top - 0.065 * h)], fill=(40, 32, 40), width=2 * s)


def _beam(w: int, h: int, lamp: tuple[float, float]) -> np.ndarray:
    """The light beam's strength ``[h, w]`` (0..1): a soft wedge from the lamp to the left."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = lamp[0] - xs, ys - lamp[1]
    angle = np.arctan2(dy, np.maximum(dx, 1e-3))
    inside = np.exp(-(((angle + 0.04) / 0.11) ** 2)) * (dx > 0)
    fade = np.exp(-dx / (0.8 * w))
    return inside * fade


def _draw_birds(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, w: int, h: int) -> None:
    for _ in range(5):
        x, y = rng.uniform(0.12, 0.45) * w, rng.uniform(0.12, 0.3) * h
        span = rng.uniform(0.012, 0.02) * min(w, h)
        wings = [(x - span, y - span * 0.4), (x, y), (x + span, y - span * 0.5)]
        draw.line(wings, fill=(34, 26, 50), width=s)


def sample_picture(width: int = 512, height: int = 512) -> Image.Image:
    """A lighthouse on a rock by the sea at sunset, drawn at ``width`` x ``height`` (RGB)."""
    if width < 16 or height < 16:
        raise ValueError(f"the sample picture needs at least 16x16 pixels, got {width}x{height}")
    s = _SUPERSAMPLE
    w, h = width * s, height * s
    rng = np.random.default_rng(_SEED)
    horizon = 0.60
    sun, sun_r = (0.28, 0.53), 0.075

    backdrop = _backdrop(w, h, horizon, sun, sun_r)
    base = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8))
    clouds = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    _draw_clouds(ImageDraw.Draw(clouds), rng, w, h, horizon)
    clouds = clouds.filter(ImageFilter.GaussianBlur(radius=0.006 * h))
    base = Image.alpha_composite(base.convert("RGBA"), clouds)

    draw = ImageDraw.Draw(base, "RGBA")
    _draw_sun(draw, s, w, h, sun, sun_r)
    # The sea starts below the horizon: repaint its top edge over the sun disc.
    horizon_px = int(horizon * h)
    pixels = np.asarray(base).copy()
    pixels[horizon_px:, :, :3] = np.clip(backdrop[horizon_px:], 0, 255).astype(np.uint8)
    # RGB under an RGBA pen: translucent fills blend instead of replacing.
    base = Image.fromarray(pixels[..., :3])
    draw = ImageDraw.Draw(base, "RGBA")
    _draw_waves(draw, rng, s, w, h, horizon, sun[0])
    ground = _draw_rock(draw, rng, w, h, horizon)
    _draw_lighthouse(draw, s, w, h, ground)
    _draw_birds(draw, rng, s, w, h)

    # The beam brightens what is under it rather than covering it.
    lamp = (0.70 * w, ground - 0.40 * h - 0.05 * h)
    beam = _beam(w, h, lamp)[..., None] * 0.6
    pixels = np.asarray(base.convert("RGB")).astype(np.float32)
    pixels = pixels * (1 - beam) + np.array([255, 240, 190], np.float32) * beam

    # Fine film grain: a texture only the last steps carry.
    grain = rng.normal(0, 4.0, size=(h // s, w // s, 1)).astype(np.float32)
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((width, height), Image.LANCZOS)
    out = np.asarray(small).astype(np.float32) + grain
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
