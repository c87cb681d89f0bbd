"""Transition plans: animate one finished result into another from their two trails alone.

Appendix D of the paper: no extra denoising. The canvas starts on the source's final
latent; the plan walks the source's x0-hat trail *backwards* (final → coarse outline),
then the destination's trail *forwards* (outline → details → its final latent). Any
effect of :func:`painter.effects.paint` then paints along the plan exactly as it paints
along a trail, so the release policy trades transition time for detail as usual.

For two images that share much of their content (an edit, the same seed) the
``interpolate`` guidance replaces the schedules by latents interpolated between the two
finals, so the shared background never leaves the canvas.

Two trails can be combined when they decode with the same VAE: the same VAE id, latent
scaling and space, and the same latent shape. The UNets may differ (two checkpoints
that share a VAE), since the plan only ever holds decodable latents. Results of another
size can be *fitted* to the first one's (:func:`fit_trail`): scaled to cover its grid,
keeping their aspect ratio, and centre-cropped, so nothing is ever stretched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from painter.trail import Trail, TrailError, TrailMeta

GUIDANCES = ("schedule", "interpolate")
# How a trail was fitted to the plan's grid: not at all, scaled only (same shape), or
# scaled to cover the grid and centre-cropped (another shape).
FITS = ("", "resized", "cropped")
# Pixels per latent cell when the trail metadata does not say (SD VAEs downsample by 8).
_DEFAULT_CELL = {"latent": 8, "pixel": 1}


class TransitionError(TrailError):
    """Two trails that cannot be combined into one transition; the message says why and what to do."""


@dataclass
class TransitionMeta:
    """How a plan was made, and what decodes it.

    One entry per trail in ``model_ids``/``prompts``/``seeds`` (two for a single
    transition, more for a chain); one entry per hop in ``forward_starts`` and
    ``hop_ends``, both indices into the plan.

    ``width``/``height`` are the size every frame and the final picture are shown at:
    the first trail's. ``fits`` and ``original_sizes`` say, per trail, how it was
    fitted to that size (see :data:`FITS`) and its own size before.
    """

    guidance: str
    depth: float
    model_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    # Plan index of each hop's first destination (forward) entry; for "interpolate"
    # guidance, where there is no backward half, the hop's first entry.
    forward_starts: list[int]
    # Plan index of each hop's last entry, which equals that hop's destination final.
    hop_ends: list[int]
    vae_id: str
    scaling_factor: float
    shift_factor: float
    space: str
    width: int
    height: int
    # True when any trail was fitted (resized or cropped) to the first one's size.
    resized: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    # One per trail: "" (already the shown size), "resized" or "cropped"; see FITS.
    fits: list[str] = field(default_factory=list)
    # One per trail: its own (width, height) in pixels, before any fitting.
    original_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def source_model_id(self) -> str:
        return self.model_ids[0]

    @property
    def destination_model_id(self) -> str:
        return self.model_ids[-1]

    @property
    def fitted(self) -> str:
        """How the final picture (the last destination) was fitted to ``width``×``height``:
        "" (it is that size), "resized" (same shape, scaled) or "cropped" (another shape:
        scaled to cover the size, keeping its aspect ratio, then centre-cropped)."""
        return self.fits[-1] if self.fits else ""

    @property
    def fitted_from(self) -> tuple[int, int] | None:
        """The last destination's own (width, height) in pixels where it was fitted, else None."""
        return self.original_sizes[-1] if self.fitted and self.original_sizes else None

    @property
    def forward_start(self) -> int:
        """Plan index where the (first) hop's forward half starts."""
        return self.forward_starts[0]


@dataclass
class TransitionPlan:
    """Targets ``plan[T, C, H, W]`` to paint towards, starting from the canvas ``start[C, H, W]``.

    ``start`` is the source's final latent; ``plan[-1]`` is the (last) destination's
    final latent, exactly.
    """

    plan: torch.Tensor
    start: torch.Tensor
    meta: TransitionMeta

    def __len__(self) -> int:
        return self.plan.shape[0]


def _latent_size(trail: Trail) -> str:
    _, h, w = trail.latent_shape
    return f"{w}×{h}"


def _scaling_values(meta: TrailMeta) -> list[float]:
    values = [meta.scaling_factor, meta.shift_factor]
    if meta.latents_mean is not None and meta.latents_std is not None:
        values += [*meta.latents_mean, *meta.latents_std]
    return values


def _same_scaling(s: TrailMeta, d: TrailMeta) -> bool:
    a, b = _scaling_values(s), _scaling_values(d)
    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True))


def _scaling_text(meta: TrailMeta) -> str:
    text = f"{meta.scaling_factor:g}/shift {meta.shift_factor:g}"
    if meta.latents_mean is not None and meta.latents_std is not None:
        mean = ", ".join(f"{v:g}" for v in meta.latents_mean)
        std = ", ".join(f"{v:g}" for v in meta.latents_std)
        text += f"/per-channel mean [{mean}] std [{std}]"
    return text


def check_compatible(src: Trail, dst: Trail, *, resize: bool = False) -> None:
    """Raise :class:`TransitionError` unless ``dst`` can follow ``src`` in one animation.

    Compatible means: both trails are non-empty, in the same space, decode with the same
    VAE (same ``vae_id`` and latent scaling: ``scaling_factor``, ``shift_factor`` and any
    per-channel ``latents_mean``/``latents_std``), have the same number
    of latent channels, and the same spatial size (or ``resize`` allows resampling the
    destination). Different UNet checkpoints (``model_id``) are fine.
    """
    for role, trail in (("source", src), ("destination", dst)):
        if len(trail) == 0:
            raise TransitionError(f"cannot transition: the {role} trail is empty")
        if trail.meta.space == "latent" and not trail.meta.vae_id:
            # Without a VAE id nothing proves the two latents decode alike; refuse rather than guess.
            raise TransitionError(
                f"cannot transition: the {role} trail (model {trail.meta.model_id!r}) records no VAE id"
            )
    s, d = src.meta, dst.meta
    if s.space != d.space:
        raise TransitionError(
            f"cannot transition: the source is in {s.space} space (model {s.model_id!r}) and the "
            f"destination in {d.space} space (model {d.model_id!r})"
        )
    if s.vae_id != d.vae_id or not _same_scaling(s, d):
        detail = ""
        if s.vae_id == d.vae_id:
            detail = f" (same id, but latent scaling {_scaling_text(s)} vs {_scaling_text(d)})"
        raise TransitionError(
            f"cannot transition: the trails decode with different VAEs{detail} — source VAE {s.vae_id!r} "
            f"(model {s.model_id!r}) vs destination VAE {d.vae_id!r} (model {d.model_id!r}); "
            "a transition needs both results made with the same VAE"
        )
    (sc, sh, sw), (dc, dh, dw) = src.latent_shape, dst.latent_shape
    if sc != dc:
        raise TransitionError(
            f"cannot transition: latent channels differ ({sc} vs {dc}) although both name VAE {s.vae_id!r}"
        )
    if (sh, sw) != (dh, dw) and not resize:
        raise TransitionError(
            f"cannot transition: sizes differ ({_latent_size(src)} vs {_latent_size(dst)} latents); "
            "pass --resize to fit the destination to the source's size (scaled to cover it, "
            "keeping its aspect ratio, and centre-cropped)"
        )


def _cell_size(trail: Trail) -> tuple[float, float]:
    """Pixels per latent cell (height, width), from the trail's recorded size where it has one."""
    _, _, h, w = trail.latents.shape
    cell = _DEFAULT_CELL.get(trail.meta.space, 1)
    return (
        trail.meta.height / h if trail.meta.height else cell,
        trail.meta.width / w if trail.meta.width else cell,
    )


def pixel_size(trail: Trail) -> tuple[int, int]:
    """The (width, height) in pixels a trail's pictures decode to."""
    _, h, w = trail.latent_shape
    cell_h, cell_w = _cell_size(trail)
    return round(w * cell_w), round(h * cell_h)


def resize_trail(trail: Trail, size: tuple[int, int]) -> Trail:
    """Resample every latent of ``trail`` to ``size = (h, w)`` cells; width/height metadata follow.

    Bilinear with antialiasing, so shrinking averages cells instead of skipping them.
    The pixel size scales by the trail's own pixels-per-cell (8 for SD latents, 1 for
    pixel space), read from its metadata where it records a size. This stretches a
    trail of another shape: :func:`fit_trail` keeps the shape.
    """
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be at least 1×1 cells, got {w}×{h}")
    _, _, old_h, old_w = trail.latents.shape
    if (old_h, old_w) == (h, w):
        return trail
    cell_h, cell_w = _cell_size(trail)
    latents = F.interpolate(
        trail.latents.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
    ).to(trail.latents.dtype)
    extra = dict(trail.meta.extra)
    extra["resized_from"] = [old_h, old_w]
    meta = replace(trail.meta, width=round(w * cell_w), height=round(h * cell_h), extra=extra)
    return Trail(latents=latents, timesteps=trail.timesteps.clone(), meta=meta)


def cover_size(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(h, w)`` with ``shape``'s aspect ratio that covers ``size = (h, w)`` (cells).

    One side equals ``size``'s, the other is at least its; rounding to whole cells
    never leaves the other side short.
    """
    (h, w), (target_h, target_w) = shape, size
    if target_h * w >= target_w * h:  # as wide as the target or wider: the height binds
        return target_h, max(target_w, round(w * target_h / h))
    return max(target_h, round(h * target_w / w)), target_w


def fit_kind(shape: tuple[int, int], size: tuple[int, int]) -> str:
    """How :func:`fit_trail` fits a ``shape = (h, w)`` grid to ``size``: one of :data:`FITS`."""
    if tuple(shape) == tuple(size):
        return ""
    return "resized" if cover_size(shape, size) == tuple(size) else "cropped"


def fit_trail(trail: Trail, size: tuple[int, int]) -> Trail:
    """``trail`` on a grid of ``size = (h, w)`` cells, never stretched.

    Scaled (as :func:`resize_trail`) just enough to cover the grid while keeping its
    aspect ratio, then centre-cropped to it, so a circle stays a circle; a trail of the
    grid's shape is only scaled, and one already of ``size`` comes back as it is. The
    result's ``meta.extra`` records ``fitted`` (``"resized"`` or ``"cropped"``) and
    ``fitted_from`` (the trail's own [width, height] in pixels).
    """
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"fit target must be at least 1×1 cells, got {w}×{h}")
    shape = tuple(trail.latent_shape[1:])
    how = fit_kind(shape, size)
    if not how:
        return trail
    cell_h, cell_w = _cell_size(trail)
    scaled = resize_trail(trail, cover_size(shape, size))
    _, _, scaled_h, scaled_w = scaled.latents.shape
    top, left = (scaled_h - h) // 2, (scaled_w - w) // 2
    # A copy, also where only cropping was needed: the input trail is left alone.
    latents = scaled.latents[:, :, top : top + h, left : left + w].clone(
        memory_format=torch.contiguous_format
    )
    extra = dict(scaled.meta.extra)
    extra["fitted"] = how
    extra["fitted_from"] = list(pixel_size(trail))
    meta = replace(scaled.meta, width=round(w * cell_w), height=round(h * cell_h), extra=extra)
    return Trail(latents=latents, timesteps=trail.timesteps.clone(), meta=meta)


def _steps_along(depth: float, length: int) -> int:
    """Entries a ``depth`` fraction of a ``length``-entry trail spans (at least 1 where there is room)."""
    if length < 2:
        return 0
    return max(1, min(length - 1, math.floor(depth * (length - 1) + 0.5)))


def validate_options(depth: float, guidance: str = "schedule", interp_steps: int | None = None) -> None:
    """Raise ValueError, naming the allowed values, for options :func:`build_plan` would refuse.

    Callers that read the options from a user check them with this before loading trails.
    """
    if guidance not in GUIDANCES:
        raise ValueError(f"guidance must be one of {', '.join(GUIDANCES)}; got {guidance!r}")
    if not isinstance(depth, int | float) or isinstance(depth, bool) or not 0.0 < depth <= 1.0:
        raise ValueError(f"depth must be in (0, 1] (a fraction of the source trail); got {depth!r}")
    if interp_steps is not None:
        if guidance != "interpolate":
            raise ValueError("interp_steps applies only to guidance='interpolate'")
        if isinstance(interp_steps, bool) or not isinstance(interp_steps, int) or interp_steps < 1:
            raise ValueError(f"interp_steps must be a whole number ≥ 1; got {interp_steps!r}")


def _hop(
    src: Trail, dst: Trail, depth: float, guidance: str, interp_steps: int | None
) -> tuple[torch.Tensor, int]:
    """The targets of one hop (not repeating ``src.final``) and the offset of its forward half."""
    dst_latents = dst.latents.to(src.latents.dtype)
    if guidance == "interpolate":
        n = interp_steps if interp_steps is not None else len(dst)
        # Linear, not slerp: the L2 distance to the destination then falls strictly with
        # every entry, so the painter always moves towards it.
        weights = torch.arange(1, n + 1, dtype=torch.float64).div(n).to(src.latents.dtype)
        start, end = src.final.unsqueeze(0), dst_latents[-1].unsqueeze(0)
        targets = torch.lerp(start, end, weights.view(-1, 1, 1, 1))
        targets[-1] = dst_latents[-1]
        return targets, 0
    # Backward through the source, from the entry before its final down to the depth point.
    back = _steps_along(depth, len(src))
    backward = src.latents[len(src) - 1 - back : len(src) - 1].flip(0)
    # Forward through the destination from the *matching* depth point: a shallow transition
    # unpaints only the source's details and paints only the destination's, instead of
    # jumping to the destination's coarsest blobs from a still-detailed canvas.
    fwd = _steps_along(depth, len(dst))
    forward = dst_latents[len(dst) - 1 - fwd :]
    return torch.cat([backward, forward]), backward.shape[0]


def build_plan(
    src: Trail,
    dst: Trail,
    *,
    depth: float = 1.0,
    guidance: str = "schedule",
    resize: bool = False,
    interp_steps: int | None = None,
) -> TransitionPlan:
    """Build the plan that paints ``src``'s final image into ``dst``'s.

    ``guidance="schedule"`` (the paper's transition): the source's x0-hat trail backwards
    from the entry before its final, back ``depth`` of the trail (``depth=1`` reaches its
    first, coarsest x0-hat), then the destination's trail forwards from the same
    fraction ``depth`` before its end, ending on its final. The fraction counts trail
    entries, not visual change: x0-hat settles early, so ``depth=0.5`` already keeps
    most of both pictures' composition.

    ``guidance="interpolate"`` (Appendix D, for images that share content): ``interp_steps``
    (default ``len(dst)``) latents linearly interpolated from ``src.final`` to
    ``dst.final``; ``depth`` is checked but unused.

    ``resize`` fits ``dst`` to ``src``'s latent size when they differ (:func:`fit_trail`:
    scaled to cover it, keeping its aspect ratio, and centre-cropped); ``meta.fitted``
    says how.
    """
    validate_options(depth, guidance, interp_steps)
    return _join([src, dst], depth=depth, guidance=guidance, resize=resize, interp_steps=interp_steps)


def chain_plans(
    trails: list[Trail],
    *,
    depth: float = 1.0,
    guidance: str = "schedule",
    resize: bool = False,
    interp_steps: int | None = None,
) -> TransitionPlan:
    """One plan through several results in order (A → B → C …), each hop as :func:`build_plan`.

    Every hop ends exactly on its destination's final latent, which is where the next hop
    starts; ``meta.hop_ends`` holds those plan indices. With ``resize=True`` every trail
    after the first is fitted to the first trail's size as in :func:`build_plan`.
    """
    validate_options(depth, guidance, interp_steps)
    return _join(list(trails), depth=depth, guidance=guidance, resize=resize, interp_steps=interp_steps)


def _join(
    trails: list[Trail], *, depth: float, guidance: str, resize: bool, interp_steps: int | None
) -> TransitionPlan:
    if len(trails) < 2:
        raise TransitionError(f"a transition needs at least two trails, got {len(trails)}")
    # Check every pair before fitting anything, so the error names the original sizes.
    for hop, (src, dst) in enumerate(zip(trails, trails[1:], strict=False), start=1):
        try:
            check_compatible(src, dst, resize=resize)
        except TransitionError as exc:
            if len(trails) == 2:
                raise
            raise TransitionError(f"results {hop} → {hop + 1}: {exc}") from None
    first = trails[0]
    _, h, w = first.latent_shape
    fits = [fit_kind(t.latent_shape[1:], (h, w)) for t in trails]
    original_sizes = [pixel_size(t) for t in trails]
    trails = [first] + [fit_trail(t, (h, w)) for t in trails[1:]]

    pieces: list[torch.Tensor] = []
    forward_starts: list[int] = []
    hop_ends: list[int] = []
    offset = 0
    for src, dst in zip(trails, trails[1:], strict=False):
        targets, forward = _hop(src, dst, depth, guidance, interp_steps)
        pieces.append(targets)
        forward_starts.append(offset + forward)
        offset += targets.shape[0]
        hop_ends.append(offset - 1)

    m = first.meta
    meta = TransitionMeta(
        guidance=guidance,
        depth=float(depth),
        model_ids=[t.meta.model_id for t in trails],
        prompts=[t.meta.prompt for t in trails],
        seeds=[t.meta.seed for t in trails],
        forward_starts=forward_starts,
        hop_ends=hop_ends,
        vae_id=m.vae_id,
        scaling_factor=m.scaling_factor,
        shift_factor=m.shift_factor,
        latents_mean=m.latents_mean,
        latents_std=m.latents_std,
        space=m.space,
        width=m.width,
        height=m.height,
        resized=any(fits),
        fits=fits,
        original_sizes=original_sizes,
    )
    return TransitionPlan(plan=torch.cat(pieces).contiguous(), start=first.final.clone(), meta=meta)
