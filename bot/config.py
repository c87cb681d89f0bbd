"""Settings: built-in defaults < ``--config`` file < environment < command-line flags.

Every key of every section can be set from the environment as
``LATENT_PAINTER_<SECTION>_<KEY>`` (``LATENT_PAINTER_MODEL_ID=tiny``). Values are
checked once, here, and a bad one fails start-up naming its key and what is allowed; an
empty variable for a number or a switch leaves that key as the file or default has it.
Another ``LATENT_PAINTER_`` variable is refused as an unknown key in the file is (a
misspelt one would otherwise leave its setting silently at the default), except the few
that are not settings (:data:`OTHER_VARIABLES`) and the test harness's ``LATENT_PAINTER_TEST_*``.
The Discord token is never a setting: it is read from ``DISCORD_TOKEN`` only.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

ENV_PREFIX = "LATENT_PAINTER_"
EFFECTS = ("strokes", "glow", "flip", "fade", "dissolve", "sharpen")
SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp", "pndm", "heun")
FORMATS = ("mp4", "gif", "webp")
# Variables under the prefix that are not settings; each is read where it is used.
OTHER_VARIABLES = (
    f"{ENV_PREFIX}CONFIG",  # the config file when no --config is given (load_settings)
    f"{ENV_PREFIX}PROGRESS",  # "1": progress bars on a stderr that is not a terminal (bot/cli.py)
    f"{ENV_PREFIX}PLANNER",  # the strokes planner, auto | numpy | compiled (painter/effects/strokes.py)
)
# The test suite's and CI's own variables (LATENT_PAINTER_TEST_POSTGRES_URL, ...).
TEST_VARIABLE_PREFIX = f"{ENV_PREFIX}TEST_"
# Discord refuses a command option with more choices than this (the whole sync fails).
MAX_CHOICES = 25


class ConfigError(ValueError):
    """A setting with a value that is not allowed; the message names the key."""


@dataclass(frozen=True)
class ModelSettings:
    # Hub id, local directory, "tiny" (built-in offline test model) or "analytic" (closed-form, no weights).
    id: str = "tiny"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on CUDA, else fp32) | float32 | float16 | bfloat16
    scheduler: str = "default"
    decoder: str = "vae"  # vae | taesd
    taesd_id: str = ""  # hub id or local directory of an AutoencoderTiny, used when decoder = "taesd"


@dataclass(frozen=True)
class PainterSettings:
    effect: str = "strokes"
    steps: int = 30
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    max_side: int = 1024
    max_steps: int = 100
    fps: int = 30
    duration: float = 15.0
    theta: float = 0.08
    neighbourhood: int = 3
    release: float = 0.35
    move_sigma: float = 6.0
    pacing: float = 0.5
    strength: float = 0.6


@dataclass(frozen=True)
class RenderSettings:
    format: str = "mp4"
    max_bytes: int = 10 * 1024 * 1024
    paper_color: str = "#f5f0e6"
    crf: int = 20
    batch_size: int = 8
    compile: str = "auto"
    decode_memory_mb: int = 2048
    mode: str = "adaptive"
    tolerance_db: float = 35.0
    encoder_processes: int = 1


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = "./data"
    # Workers take no job while less than this many MB are free under data_dir (0: no check).
    min_free_mb: int = 1024


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # empty: SQLite file latent-painter.db under [storage] data_dir


@dataclass(frozen=True)
class QueueSettings:
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    per_user_cap: int = 3
    poll_seconds: float = 1.0
    backoff_seconds: float = 5.0


@dataclass(frozen=True)
class DiscordSettings:
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    sync_guild: int = 0
    max_prompt_length: int = 500
    sizes: str = "512x512,512x768,768x512"
    upload_limit: int = 10 * 1024 * 1024
    progress_seconds: float = 3.0
    preview_seconds: float = 6.0  # least seconds between preview pictures in a progress reply
    models: str = ""  # checkpoints /paint offers, comma separated; empty: only [model] id
    max_image_bytes: int = 8 * 1024 * 1024  # largest picture /paint accepts as an attachment
    run_worker: bool = True  # run one worker task inside the bot process


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    painter: PainterSettings = field(default_factory=PainterSettings)
    render: RenderSettings = field(default_factory=RenderSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).expanduser()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'latent-painter.db').resolve()}"


CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "dtype"): ("auto", "float32", "float16", "bfloat16"),
    ("model", "scheduler"): SCHEDULERS,
    ("model", "decoder"): ("vae", "taesd"),
    ("painter", "effect"): EFFECTS,
    ("render", "format"): FORMATS,
    ("render", "compile"): ("auto", "always", "never"),
    ("render", "mode"): ("adaptive", "exact"),
}

# Largest picture side any setting or request may ask for, in pixels.
LARGEST_SIDE = 4096

# (section, key) -> (low, high), inclusive; None for an open end.
RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("painter", "steps"): (1, 500),
    ("painter", "guidance"): (0.0, 50.0),
    ("painter", "width"): (8, LARGEST_SIDE),
    ("painter", "height"): (8, LARGEST_SIDE),
    ("painter", "max_side"): (8, LARGEST_SIDE),
    ("painter", "max_steps"): (1, 500),
    ("painter", "fps"): (1, 120),
    ("painter", "duration"): (0.5, 600.0),
    ("painter", "theta"): (0.0, None),
    ("painter", "neighbourhood"): (1, 64),
    ("painter", "release"): (0.0, 1.0),
    ("painter", "move_sigma"): (0.0, None),
    ("painter", "pacing"): (0.0, 1.0),
    ("painter", "strength"): (0.01, 1.0),
    ("render", "max_bytes"): (10_000, None),
    ("render", "crf"): (0, 51),
    ("render", "batch_size"): (1, 256),
    ("render", "decode_memory_mb"): (0, None),
    ("render", "tolerance_db"): (20.0, 99.0),
    ("render", "encoder_processes"): (0, 16),
    ("storage", "min_free_mb"): (0, None),
    ("queue", "lease_seconds"): (1.0, None),
    ("queue", "heartbeat_seconds"): (0.1, None),
    ("queue", "max_attempts"): (1, 100),
    ("queue", "per_user_cap"): (1, 1000),
    ("queue", "poll_seconds"): (0.01, None),
    ("queue", "backoff_seconds"): (0.0, None),
    ("discord", "sync_guild"): (0, None),
    ("discord", "max_prompt_length"): (1, 2000),
    ("discord", "upload_limit"): (100_000, None),
    ("discord", "progress_seconds"): (1.0, None),
    ("discord", "preview_seconds"): (1.0, None),
    ("discord", "max_image_bytes"): (1024, None),
}


def _coerce(section: str, key: str, kind: type, value: Any) -> Any:
    name = f"[{section}] {key}"
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            # NaN passes every range check (each comparison is False) and inf passes the
            # open-ended ones; both then fail far away (timedelta(seconds=nan), int(nan)).
            if not math.isfinite(number):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return number
        if not isinstance(value, str | int | float):
            raise ValueError
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}") from None


# (section, key) -> (the whole value must match this, what such a value looks like).
# Checked here so a bad value stops start-up rather than the first job: the painter
# reads them (painter.decode.parse_colour, painter.models.resolve_device) only then.
FORMS: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("model", "device"): (re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?"), "auto, cpu, cuda, cuda:N or mps"),
    ("render", "paper_color"): (re.compile(r"\s*#?[0-9a-fA-F]{6}\s*"), "a colour #rrggbb, like #f5f0e6"),
}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"512x512,512x768"`` → ``[(512, 512), (512, 768)]``, the sizes /paint offers.

    A bad entry raises :class:`ConfigError` naming ``[discord] sizes`` and the entry;
    a size given twice is offered once.
    """
    sizes: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            width, height = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ConfigError(f"[discord] sizes: {part!r} must look like 512x512") from None
        # Beyond [painter] width/height's range every request for the size would be refused.
        if width % 8 or height % 8 or min(width, height) < 64 or max(width, height) > LARGEST_SIDE:
            raise ConfigError(
                f"[discord] sizes: {part!r} must be multiples of 8, 64 to {LARGEST_SIDE} a side"
            )
        if (width, height) not in sizes:
            sizes.append((width, height))
    if not sizes:
        raise ConfigError("[discord] sizes lists no size")
    if len(sizes) > MAX_CHOICES:
        raise ConfigError(
            f"[discord] sizes lists {len(sizes)} sizes; Discord offers at most {MAX_CHOICES} choices"
        )
    return sizes


# (section, key) -> a parser whose errors name the key; the parsed value is not kept.
PARSERS: dict[tuple[str, str], Callable[[str], object]] = {("discord", "sizes"): parse_sizes}

# (section, key) -> the URL schemes it accepts.
URL_SCHEMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("discord", "api_base"): ("http", "https"),
    ("discord", "gateway_url"): ("ws", "wss"),
}


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"{name} is not a URL") from None
    if parts.scheme.lower() not in schemes or not host:
        wanted = " or ".join(f"{scheme}://HOST/…" for scheme in schemes)
        # Only the scheme and host are echoed: a proxy URL may carry a password.
        shown = f"{parts.scheme}://{host}" if parts.scheme and host else "no scheme or host"
        raise ConfigError(f"{name} must be a URL like {wanted}; got {shown}")


def _check(section: str, key: str, value: Any) -> None:
    name = f"[{section}] {key}"
    allowed = CHOICES.get((section, key))
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    form = FORMS.get((section, key))
    if form is not None and not form[0].fullmatch(value):
        raise ConfigError(f"{name} must be {form[1]}; got {value!r}")
    parser = PARSERS.get((section, key))
    if parser is not None:
        parser(value)
    schemes = URL_SCHEMES.get((section, key))
    if schemes is not None:
        _check_url(name, value, schemes)
    bounds = RANGES.get((section, key))
    if bounds is not None:
        low, high = bounds
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise ConfigError(f"{name} must be in {span}; got {value!r}")


def _section_types(section_cls: type) -> dict[str, type]:
    hints = get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in fields(section_cls)}


def _apply(settings: Settings, updates: Mapping[str, Mapping[str, Any]], origin: str) -> Settings:
    sections = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    for section, values in updates.items():
        if section not in sections:
            raise ConfigError(f"{origin}: unknown section [{section}]; sections are {', '.join(sections)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        types = _section_types(type(sections[section]))
        changed = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{origin}: unknown key [{section}] {key}; keys are {', '.join(types)}")
            coerced = _coerce(section, key, types[key], value)
            _check(section, key, coerced)
            changed[key] = coerced
        sections[section] = replace(sections[section], **changed)
    return Settings(**sections)


def _check_together(settings: Settings) -> None:
    """Checks that need two keys, once every source has had its say."""
    if settings.model.decoder == "taesd" and not settings.model.taesd_id.strip():
        raise ConfigError(
            "[model] decoder = taesd needs [model] taesd_id (a hub id or local directory of a TAESD)"
        )


def _env_names() -> dict[str, tuple[str, str, type]]:
    """``LATENT_PAINTER_<SECTION>_<KEY>`` -> (section, key, type), for every setting."""
    names = {}
    for f in fields(Settings):
        for key, kind in _section_types(type(getattr(Settings(), f.name))).items():
            names[f"{ENV_PREFIX}{f.name.upper()}_{key.upper()}"] = (f.name, key, kind)
    return names


def _unknown_variable(name: str, known: list[str]) -> ConfigError:
    # Compared without the common prefix, which would make every name look alike.
    suffixes = [k.removeprefix(ENV_PREFIX) for k in known]
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
    hint = (
        f"did you mean {ENV_PREFIX}{close[0]}?"
        if close
        else f"settings are {ENV_PREFIX}<SECTION>_<KEY>, e.g. {ENV_PREFIX}MODEL_ID (see config.toml)"
    )
    # The value is not shown: it may be a password in a database URL.
    return ConfigError(f"environment: unknown variable {name}; {hint}")


def _env_updates(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    names = _env_names()
    updates: dict[str, dict[str, str]] = {}
    for name in sorted(env):
        not_a_setting = name in OTHER_VARIABLES or name.startswith(TEST_VARIABLE_PREFIX)
        if not name.startswith(ENV_PREFIX) or not_a_setting:
            continue
        if name not in names:
            raise _unknown_variable(name, [*names, *OTHER_VARIABLES])
        section, key, kind = names[name]
        # An empty number or switch (``VAR=`` in a compose file) means "not set here";
        # an empty text can be meant (an empty database url is SQLite).
        if env[name].strip() or kind is str:
            updates.setdefault(section, {})[key] = env[name]
    return updates


def load_settings(
    config_path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings from a TOML file, the environment and flag overrides, in that order."""
    env = os.environ if env is None else env
    settings = Settings()
    if config_path is None and env.get(f"{ENV_PREFIX}CONFIG"):
        config_path = env[f"{ENV_PREFIX}CONFIG"]
    if config_path is not None:
        path = Path(config_path).expanduser()
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        settings = _apply(settings, data, str(path))
    settings = _apply(settings, _env_updates(env), "environment")
    if overrides:
        settings = with_overrides(settings, overrides, "command line")
    _check_together(settings)
    return settings


def with_overrides(
    settings: Settings, overrides: Mapping[str, Mapping[str, Any]], origin: str = "request"
) -> Settings:
    """``settings`` with some keys replaced (None values ignored), checked like every other source."""
    cleaned = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
    settings = _apply(settings, {s: v for s, v in cleaned.items() if v}, origin)
    _check_together(settings)
    return settings


def discord_token(env: Mapping[str, str] | None = None) -> str:
    """The bot token from ``DISCORD_TOKEN``; never logged, never stored in settings."""
    env = os.environ if env is None else env
    token = env.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set: export the bot token in the environment")
    return token
