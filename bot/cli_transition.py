"""``latent-painter transition``: animate saved results into one another (Appendix D).

SOURCE, DEST and any further trails are files written by ``paint --save-trail``.
The plan comes from :mod:`painter.transition`; painting, decoding and encoding are
the paint command's own (:func:`painter.animate.animate`), decoded with the VAE the
trails share, loaded through the model recorded in them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.cli import (
    Progress,
    UsageError,
    add_config_option,
    add_render_options,
    format_from_out,
    settings_from_args,
)
from bot.config import Settings

if TYPE_CHECKING:
    # The painter (torch, diffusers) is imported when a transition runs, not when the
    # command line is parsed, as for `paint`.
    from bot.paint_job import FrameCallback, ModelCache
    from painter.animate import Animation
    from painter.trail import Trail
    from painter.transition import TransitionMeta, TransitionPlan

# The choices of --guidance, as painter.transition.GUIDANCES (checked by the plan builder too).
GUIDANCES = ("schedule", "interpolate")


@dataclass
class TransitionOutputs:
    """The files a transition wrote, and the plan they were painted from."""

    video: Path
    image: Path
    heatmap: Path
    plan: TransitionPlan
    animation: Animation

    def paths(self) -> list[Path]:
        return [self.video, self.image, self.heatmap]


def run_transition(
    settings: Settings,
    trails: Sequence[str | Path | Trail],
    out: str | Path,
    *,
    depth: float = 1.0,
    guidance: str = "schedule",
    resize: bool = False,
    models: ModelCache | None = None,
    on_frame: FrameCallback | None = None,
) -> TransitionOutputs:
    """Paint the transition through ``trails`` (files or loaded trails) and write its outputs.

    Writes the animation to ``out``, the destination's final image beside it
    (``<stem>.png``) and the update heatmap (``<stem>.heatmap.png``). Every input is
    checked before any output is written, and on any error no output is left.
    With ``resize``, results of another size are shown at the first one's, scaled to
    cover it and centre-cropped; ``outputs.plan.meta.fits`` says which were.
    """
    from bot.paint_job import (
        ModelCache,
        all_or_nothing,
        animation_spec,
        check_writable,
        decoder_for_trails,
        files_beside,
        output_paths,
        write_heatmap,
    )
    from painter.animate import animate, decode_image
    from painter.trail import Trail
    from painter.transition import chain_plans, validate_options

    validate_options(depth, guidance)
    video_path, image_path, heatmap_path, _ = output_paths(out)
    check_writable(video_path)
    loaded = [t if isinstance(t, Trail) else Trail.load(t) for t in trails]
    plan = chain_plans(loaded, depth=depth, guidance=guidance, resize=resize)
    models = models or ModelCache()
    meta = plan.meta
    decoder = decoder_for_trails(settings, meta.model_ids, meta.vae_id, meta.space, models)
    effect = settings.painter.effect
    # Open on the source picture for half a second before the first stroke lands.
    spec = replace(animation_spec(settings, effect, analytic=meta.space == "pixel"), lead_in=0.5)
    with all_or_nothing() as written:
        image_decoder = decoder_for_trails(
            settings, meta.model_ids, meta.vae_id, meta.space, models, image=True
        )
        final = decode_image(image_decoder, plan.plan[-1])
        text = transition_png_text(loaded, effect, guidance=guidance, depth=depth, shown=meta)
        with files_beside(written, final, image_path, text):
            animation = animate(
                plan.plan.to(decoder.device),
                decoder,
                spec,
                video_path,
                start=plan.start.to(decoder.device),
                space=meta.space,
                on_frame=on_frame,
                # The heatmap shows how the last destination was painted, not the un-painting.
                heat_from=meta.forward_starts[-1],
            )
            written.append(video_path)
        write_heatmap(written, animation, heatmap_path)
    return TransitionOutputs(video_path, image_path, heatmap_path, plan, animation)


def describe_result(trail: Trail) -> str:
    """One result of a transition in a few words: its prompt, seed and model, or the
    picture an analytic paint painted."""
    from bot.paint_job import is_analytic

    meta = trail.meta
    if is_analytic(meta):
        picture = meta.extra.get("picture")
        return f"analytic painting of {picture}" if picture else "analytic painting"
    return f'"{meta.prompt}" (Seed: {meta.seed}, Model: {meta.model_id})'


def size_text(size: tuple[int, int]) -> str:
    """A (width, height) pair as the PNG text and messages write it: ``64x128``."""
    return f"{size[0]}x{size[1]}"


def fit_note(meta: TransitionMeta, index: int = -1) -> str:
    """What fitting did to result ``index`` of a transition, in words; "" where nothing.

    ``cropped from 64x128 to 128x128 (scaled to 128x256, top and bottom cut)``, or
    ``resized from 256x256 to 128x128``.
    """
    from painter.transition import cover_size

    how = meta.fits[index] if meta.fits else ""
    if not how:
        return ""
    (width, height), shown = meta.original_sizes[index], (meta.width, meta.height)
    note = f"{how} from {size_text((width, height))} to {size_text(shown)}"
    if how == "cropped":
        scaled_h, scaled_w = cover_size((height, width), (shown[1], shown[0]))
        # Wider than the shown shape loses its sides; taller loses its top and bottom.
        cut = "left and right" if scaled_w > shown[0] else "top and bottom"
        scaled = (
            ""
            if (scaled_w, scaled_h) == (width, height)
            else f"scaled to {size_text((scaled_w, scaled_h))}, "
        )
        note += f" ({scaled}{cut} cut)"
    return note


def transition_png_text(
    trails: Sequence[Trail],
    effect: str,
    *,
    guidance: str = "schedule",
    depth: float = 1.0,
    shown: TransitionMeta | None = None,
) -> dict[str, Any]:
    """PNG text of a transition's final picture, which is the last result's picture.

    The destination's own generation parameters (without an effect: the effect is the
    transition's), then a ``Transition:`` line naming where it came from and how.
    ``shown``, the plan's metadata, tells where the destination was fitted to the
    source's size: its ``Size`` is then the size delivered, and the ``Transition``
    line ends ``Destination: cropped from WxH …`` (or ``resized from``).
    """
    from bot.paint_job import generation_text, png_text

    destination = trails[-1]
    fitted = shown is not None and bool(shown.fitted)
    if fitted:
        # The picture is the fitted one: its size, not the destination's own, is true of it.
        destination = replace(
            destination, meta=replace(destination.meta, width=shown.width, height=shown.height)
        )
    text = png_text(destination, effect)
    route = f"from {describe_result(trails[0])}"
    if len(trails) > 2:
        route += " via " + "; ".join(describe_result(t) for t in trails[1:-1])
    how = f"Effect: {effect}, Guidance: {guidance}"
    if guidance == "schedule":  # depth: how far back the source's trail is walked
        how += f", Depth: {depth:g}"
    if fitted:
        how += f", Destination: {fit_note(shown)}"
    text["parameters"] = f"{generation_text(destination.meta)}\nTransition: {route}, {how}"
    text["transition_from"] = describe_result(trails[0])
    if len(trails) > 2:
        text["transition_via"] = "; ".join(describe_result(t) for t in trails[1:-1])
    text["transition_guidance"] = guidance
    if fitted:
        text["transition_fitted"] = shown.fitted
        text["transition_fitted_from"] = size_text(shown.fitted_from or (0, 0))
    return text


def resolve_trails(settings: Settings, given: Sequence[Path]) -> list[Path]:
    """Trail files as given, with result ids (``K3F97QXM``) replaced by their stored trails.

    A name that is an existing file is a file; otherwise, if it reads as a result id,
    the result's trail is taken from the queue's database and artifact store.
    """
    from db.results import normalize_public_id

    ids: dict[int, str] = {}
    for index, item in enumerate(given):
        if item.exists():
            continue
        try:
            ids[index] = normalize_public_id(str(item))
        except ValueError:
            continue  # not an id either: Trail.load names the missing file
    if not ids:
        return list(given)
    resolved = list(given)
    for index, path in asyncio.run(_stored_trails(settings, ids)).items():
        resolved[index] = path
    return resolved


async def _stored_trails(settings: Settings, ids: dict[int, str]) -> dict[int, Path]:
    from bot.artifacts import LocalArtifactStore
    from bot.storage_identity import check_data_dir
    from db.engine import Database, sqlite_path
    from db.migrate import ensure_schema_current
    from db.results import ResultNotFound, get_result

    url = settings.database_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise UsageError(f"no result with id {next(iter(ids.values()))}: the queue's database is empty")
    await ensure_schema_current(url, upgrade_if_old=path is not None)
    db = Database.from_url(url)
    store = LocalArtifactStore(settings.data_dir / "artifacts")
    try:
        # Another database's store would hand over another job's trail under this key.
        await check_data_dir(db, store.root, data_dir=settings.data_dir)
        found: dict[int, Path] = {}
        for index, public_id in ids.items():
            try:
                result = await get_result(db, public_id)
            except ResultNotFound as exc:
                raise UsageError(str(exc)) from None
            if not result.trail_key or not store.exists(result.trail_key):
                raise UsageError(f"result {public_id} has no stored trail (transitions keep none)")
            found[index] = store.path(result.trail_key)
        return found
    finally:
        await db.dispose()


def cmd_transition(args: argparse.Namespace) -> int:
    """Run ``latent-painter transition`` from parsed arguments."""
    from painter.transition import validate_options

    args.format = format_from_out(args.out, args.format)
    validate_options(args.depth, args.transition_guidance)
    settings = settings_from_args(args)
    out = args.out or Path(f"transition.{settings.render.format}")
    given = [args.source, args.dest, *args.more]
    paths = resolve_trails(settings, given)
    if len(set(paths)) < 2:
        raise UsageError("SOURCE and DEST are the same trail: give two different results")
    progress = Progress()
    try:
        outputs = run_transition(
            settings,
            paths,
            out,
            depth=args.depth,
            guidance=args.transition_guidance,
            resize=args.resize,
            on_frame=progress.frame,
        )
    finally:
        progress.close()
    video = outputs.animation.video
    meta = outputs.plan.meta
    models = " → ".join(meta.model_ids)
    print(f"transition through {len(paths)} results ({models}), {len(outputs.plan)} plan steps")
    for index, name in enumerate(given):
        if note := fit_note(meta, index):
            print(f"{name}: {note}")
    print(
        f"animation: {video.path} ({video.frames} frames, {video.fps:g} fps, "
        f"{video.width}x{video.height}, {video.bytes / 1e6:.2f} MB)"
    )
    print(f"final image: {outputs.image}")
    print(f"heatmap: {outputs.heatmap}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``transition`` on the ``latent-painter`` command."""
    parser = subparsers.add_parser(
        "transition",
        help="animate one saved result into another (or through several, in order)",
        description=(
            "Paint SOURCE's final image into DEST's (and on through MORE), from trail files written by "
            "`paint --save-trail` or result ids from the queue (`latent-painter results`): the "
            "source's trail backwards, then the destination's forwards."
        ),
    )
    parser.add_argument(
        "source", type=Path, metavar="SOURCE", help="trail file, or result id, of the first result"
    )
    parser.add_argument(
        "dest", type=Path, metavar="DEST", help="trail file, or result id, of the next result"
    )
    parser.add_argument("more", type=Path, nargs="*", metavar="MORE", help="further results, in order")
    add_render_options(parser)
    parser.add_argument(
        "--depth",
        type=float,
        default=1.0,
        help="how far back through the source's trail to go, in (0, 1]; smaller keeps more of it (default 1)",
    )
    # Its own dest: bot.cli reads args.guidance as the classifier-free guidance scale.
    parser.add_argument(
        "--guidance",
        dest="transition_guidance",
        choices=GUIDANCES,
        default="schedule",
        help="schedule: through both denoising trails; interpolate: straight between the two "
        "pictures, for results that share content (default schedule)",
    )
    parser.add_argument(
        "--resize",
        action="store_true",
        help="show later results of another size at the first one's: scaled to cover it, keeping "
        "their aspect ratio, and centre-cropped where their shape differs",
    )
    parser.add_argument("--out", type=Path, help="animation file (default transition.mp4)")
    add_config_option(parser)
    parser.set_defaults(func=cmd_transition)
