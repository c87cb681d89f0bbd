"""The ``latent-painter`` command: paint, demo, and the queue, transition and bot subcommands.

User errors end the command with one line on stderr naming the problem and a
non-zero exit code; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bot.config import EFFECTS, FORMATS, SCHEDULERS, ConfigError, Settings, load_settings  # noqa: E402
from bot.quiet import quiet_libraries  # noqa: E402
from bot.redact import install_log_redaction  # noqa: E402

log = logging.getLogger("latent_painter")

# Subcommands that live in their own modules, each exposing add_subcommands(subparsers).
SUBCOMMAND_MODULES = ("bot.cli_transition", "bot.cli_queue", "bot.cli_bot")

EXIT_USER_ERROR = 2


class UsageError(ValueError):
    """A bad flag value found after parsing; reported like an argparse error."""


class FileError(Exception):
    """A file or directory the command could not use, with what it was doing."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(describe_os_error(error, what))


EXIT_UNREACHABLE = 1  # the database server could not be reached (the network, not the command)


def is_unreachable(error: OSError) -> bool:
    """A network error: refused, no route, unknown host, timed out.

    Only the database is on the network for the commands that report these (the bot reports
    an unreachable Discord itself, first).
    """
    if error.filename is not None:
        return False
    network = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET}
    return isinstance(error, ConnectionError | socket.gaierror | TimeoutError) or error.errno in network


def os_error_line(error: OSError) -> tuple[str, int]:
    """The one line an OSError that ended a command is reported as, and the exit status."""
    if is_unreachable(error):
        reason = error.strerror or str(error) or type(error).__name__
        return f"cannot reach the database ([database] url): {reason}", EXIT_UNREACHABLE
    return describe_os_error(error), EXIT_USER_ERROR


def database_error_line(error: Exception) -> str | None:
    """The one line a database driver's error that ended a command is reported as.

    asyncpg reports an unreachable server as an OSError (see :func:`os_error_line`);
    psycopg's and SQLite's errors arrive wrapped in SQLAlchemy's ``DBAPIError`` with a
    multi-line message and a link. None: not a database error.
    """
    from sqlalchemy.exc import DBAPIError

    from db.engine import mask_password

    if not isinstance(error, DBAPIError):
        return None
    cause = error.orig if error.orig is not None else error
    text = mask_password(str(cause).strip()).splitlines()
    reason = " ".join(line.strip() for line in text[:2] if line.strip()) or type(cause).__name__
    if type(cause).__name__ == "OperationalError" and "connect" in reason.lower():
        return f"cannot reach the database ([database] url): {reason}"
    return f"database error ([database] url): {reason}"


def describe_os_error(error: OSError, what: str = "file system error") -> str:
    """``<what>: <path>: <strerror>``, the one line an OSError is reported as."""
    parts = [what]
    if error.filename is not None:
        parts.append(str(error.filename))
    parts.append(error.strerror or str(error) or type(error).__name__)
    return ": ".join(parts)


def parse_size(text: str) -> tuple[int, int]:
    """``512x768`` → (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 512x512 (WIDTHxHEIGHT)") from None
    return width, height


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (see config.toml)")


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that writes an animation."""
    parser.add_argument("--effect", choices=EFFECTS, help="painting effect (default from [painter] effect)")
    parser.add_argument("--fps", type=int, help="frames per second of the animation")
    parser.add_argument("--duration", type=float, help="animation length in seconds")
    parser.add_argument("--format", choices=FORMATS, help="animation format (default from the --out suffix)")
    parser.add_argument("--max-bytes", type=int, help="size budget of the animation file in bytes")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """Flags of a generation: model, sampler and picture size."""
    parser.add_argument("--model", help="hub id, local pipeline directory, 'tiny' or 'analytic'")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    parser.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, multiples of 8")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="sampler")
    parser.add_argument("--image", type=Path, help="paint from this picture (SDEdit, or the analytic model)")
    parser.add_argument("--strength", type=float, help="how much of --image is repainted, in (0, 1]")
    parser.add_argument(
        "--start-from-image", action="store_true", help="start the canvas at --image instead of blank paper"
    )


def format_from_out(out: Path | None, fmt: str | None) -> str | None:
    """The format the --out suffix implies, refusing a contradiction.

    An --out without a .mp4, .gif or .webp suffix needs --format: otherwise MP4 data would
    land silently in ``a.txt`` (or ``a.gif.bak``), which nothing opens as a video.
    """
    if out is None:
        return fmt
    suffix = out.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        if fmt is not None and fmt != suffix:
            raise UsageError(f"--format {fmt} contradicts --out {out} (a .{suffix} file)")
        return suffix
    if fmt is None and not out.is_dir():  # a directory gets its own message from the writer
        raise UsageError(
            f"--out {out} does not end in .mp4, .gif or .webp; name the file so, "
            "or give --format to write that format under this name"
        )
    return fmt


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Flags → settings overrides (the highest precedence)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    size = get("size")
    return {
        "model": {"id": get("model"), "scheduler": get("scheduler")},
        "painter": {
            "effect": get("effect"),
            "steps": get("steps"),
            "guidance": get("guidance"),
            "width": size[0] if size else None,
            "height": size[1] if size else None,
            "fps": get("fps"),
            "duration": get("duration"),
            "strength": get("strength"),
        },
        "render": {"format": get("format"), "max_bytes": get("max_bytes")},
    }


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), overrides=overrides_from_args(args))


class Progress:
    """A two-phase progress bar on stderr: generation steps, then frames."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty() or os.environ.get("LATENT_PAINTER_PROGRESS") == "1"
        self._bar: Any = None
        self._phase = ""

    def _update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._phase != phase:
            self.close()
            self._bar = tqdm(total=total, desc=phase, unit="", file=sys.stderr, leave=True)
            self._phase = phase
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def step(self, done: int, total: int) -> None:
        self._update("generating", done, total)

    def frame(self, done: int, total: int, _image: Any = None) -> None:
        self._update("painting", done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def save_trail_or_remove(outputs: Any, path: Path) -> None:
    """Write the trail to ``path``; if that fails, remove the job's other files too (all or nothing)."""
    try:
        outputs.trail.save(path)
    except BaseException as exc:
        for written in (*outputs.paths(), path):
            written.unlink(missing_ok=True)
        if isinstance(exc, OSError | KeyboardInterrupt):
            raise
        # safetensors reports I/O errors as its own SafetensorError.
        raise UsageError(f"cannot write the trail {path}: {exc}") from None


def cmd_paint(args: argparse.Namespace) -> int:
    from bot.paint_job import PaintRequest, check_not_the_picture, check_writable, run_paint

    args.format = format_from_out(args.out, args.format)
    settings = settings_from_args(args)
    out = args.out or Path(f"painting.{settings.render.format}")
    if args.start_from_image and args.image is None:
        raise UsageError("--start-from-image needs --image")
    if args.strength is not None and args.image is None:
        raise UsageError("--strength needs --image (it says how much of the picture is repainted)")
    if args.strength is not None and settings.model.id == "analytic":
        raise UsageError("--strength does not apply to the analytic model: it paints the picture itself")
    request = PaintRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        seed=args.seed,
        image=args.image,
        start_from_image=args.start_from_image,
        save_trail=False,
    )
    if not args.prompt.strip() and settings.model.id != "analytic":
        raise UsageError("the prompt is empty: describe the picture to paint")
    # Checked before any work: the trail is written last, after the animation.
    check_writable(out)
    if args.save_trail is not None:
        check_writable(args.save_trail, "the trail")
        check_not_the_picture(args.image, (args.save_trail,))
    progress = Progress()
    try:
        outputs = run_paint(settings, request, out, on_step=progress.step, on_frame=progress.frame)
        if args.save_trail is not None:
            save_trail_or_remove(outputs, args.save_trail)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename).is_relative_to(settings.data_dir):
            raise FileError("cannot write in the data directory ([storage] data_dir)", exc) from None
        raise
    finally:
        progress.close()
    report_outputs(outputs, args.save_trail)
    return 0


def report_outputs(outputs: Any, trail_path: Path | None) -> None:
    video = outputs.animation.video
    meta = outputs.trail.meta
    seed = f"seed {meta.seed}, " if meta.space != "pixel" else ""  # the closed form has no noise
    print(f"{seed}model {meta.model_id}, {len(outputs.trail)} steps")
    print(
        f"animation: {video.path} ({video.frames} frames, {video.fps:g} fps, "
        f"{video.width}x{video.height}, {video.bytes / 1e6:.2f} MB)"
    )
    print(f"final image: {outputs.image}")
    print(f"heatmap: {outputs.heatmap}")
    if trail_path is not None:
        print(f"trail: {trail_path}")
    if getattr(outputs, "flagged", None):
        print("warning: the model's safety checker flagged this picture or its animation", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    """Paint a recognisable picture offline with the closed-form model."""
    from bot.paint_job import PaintRequest, run_paint
    from painter.sample_image import sample_picture

    args.model = args.model or "analytic"
    settings = settings_from_args(args)
    out_dir: Path = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} exists and is not a directory")
    if args.image is not None:
        # A bad picture is refused before the output directory is made.
        from painter.images import load_image

        load_image(args.image, settings.painter.width, settings.painter.height)
    image: Any = args.image
    name = None
    if image is None and settings.model.id == "analytic":
        import io

        buffer = io.BytesIO()
        sample_picture(settings.painter.width, settings.painter.height).save(buffer, format="PNG")
        image, name = buffer.getvalue(), "sample picture"
    prompt = args.prompt if args.prompt else "a lighthouse on a rock at sunset"
    # A pixel-space trail of a 512² picture is ~100 MB: the demo writes the pictures only.
    request = PaintRequest(prompt=prompt, seed=args.seed or 0, image=image, image_name=name, save_trail=False)
    progress = Progress()
    try:
        with directory_made_for(out_dir):
            outputs = run_paint(
                settings,
                request,
                out_dir / f"demo.{settings.render.format}",
                on_step=progress.step,
                on_frame=progress.frame,
            )
    finally:
        progress.close()
    report_outputs(outputs, outputs.trail_path)
    return 0


@contextmanager
def directory_made_for(path: Path) -> Iterator[None]:
    """Create ``path`` (and missing parents) for the body; if the body fails, remove what was
    created here, so a refused job leaves no empty directory behind."""
    created: list[Path] = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        created.append(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileError("cannot create the output directory", exc) from None
    try:
        yield
    except BaseException:
        for directory in created:  # deepest first
            with suppress(OSError):
                directory.rmdir()  # only if empty: never a file the user put there meanwhile
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent-painter",
        description="Turn Stable Diffusion's denoising into a painting animation (Latent Painter).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    paint = sub.add_parser("paint", help="generate a picture and write its painting animation")
    paint.add_argument("prompt", help="what to paint")
    add_generation_options(paint)
    add_render_options(paint)
    paint.add_argument("--out", type=Path, help="animation file (default painting.mp4)")
    paint.add_argument("--save-trail", type=Path, help="also write the x0-hat trail (safetensors)")
    add_config_option(paint)
    paint.set_defaults(func=cmd_paint)

    demo = sub.add_parser("demo", help="paint a picture offline into ./latent-painter-demo/")
    demo.add_argument("--image", type=Path, help="paint this picture instead of the built-in one")
    demo.add_argument("--prompt", default="", help="prompt (used by pipeline models)")
    demo.add_argument("--model", help="model (default: analytic, the closed-form painter)")
    demo.add_argument("--seed", type=int, help="random seed (pipeline models only)")
    demo.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT (default from [painter])")
    demo.add_argument("--steps", type=int, help="painting steps (default from [painter] steps)")
    add_render_options(demo)
    demo.add_argument("--out-dir", type=Path, default=Path("latent-painter-demo"))
    add_config_option(demo)
    demo.set_defaults(func=cmd_demo)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_subcommands(sub)
    # `latent-painter bot -v` as well as `latent-painter -v bot` (and for `db upgrade -v`).
    _accept_verbose_after(sub)
    return parser


def _accept_verbose_after(subparsers: Any) -> None:
    for command in subparsers.choices.values():
        if "-v" not in command._option_string_actions:
            command.add_argument(
                "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
            )
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_verbose_after(action)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: one line, non-zero exit."""
    from painter import input_errors

    return (UsageError, FileError, ConfigError, *input_errors())


# One-shot commands: a SIGTERM (timeout, systemd, docker stop) cleans up as Ctrl-C does.
# The worker and the bot handle SIGTERM themselves (finish or release the job, then stop).
ONE_SHOT_COMMANDS = ("paint", "demo", "transition")
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM during a one-shot command: unwinds like Ctrl-C, so no half-written file stays."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextmanager
def terminate_cleanly(command: str | None) -> Iterator[None]:
    """While a one-shot command runs, turn SIGTERM into :class:`Terminated`."""
    if command not in ONE_SHOT_COMMANDS or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()
    if not args.verbose:
        quiet_libraries()
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with terminate_cleanly(args.command):
            return int(func(args) or 0)
    except (*user_errors(), ValueError) as exc:
        # Effects and plans raise plain ValueError for bad parameters given on the command line.
        print(f"latent-painter: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # A directory that cannot be made or written (the data directory, --out, --out-dir),
        # or a database server that cannot be reached: one line; the job's files are removed.
        line, status = os_error_line(exc)
        print(f"latent-painter: error: {line}", file=sys.stderr)
        return status
    except Exception as exc:
        line = database_error_line(exc)
        if line is None:
            raise
        print(f"latent-painter: error: {line}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Terminated:
        print("latent-painter: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("latent-painter: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
