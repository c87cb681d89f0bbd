"""What a job may ask for: the parameters of each job kind, checked before a row is written.

Bad input raises ``ValueError`` with a message meant for the person who typed it. The
checked parameters are what the worker's runner receives as ``params``; a parameter left
out (or None) means "use the worker's configured default".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from db.models import JobKind

# Kept equal to bot.config's lists by a test (db/ cannot import bot/).
EFFECTS = ("strokes", "glow", "flip", "fade", "dissolve", "sharpen")
SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp", "pndm", "heun")
FORMATS = ("mp4", "gif", "webp")

MAX_PROMPT = 2000
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Field:
    """One parameter: its type, whether it is required, and its allowed values."""

    kind: type
    required: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None


def _multiple_of_8(value: int) -> str | None:
    return None if value % 8 == 0 else "must be a multiple of 8"


def _not_blank(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _key_problem(value: str) -> str | None:
    # The artifact store checks keys fully when it reads them; this keeps obvious
    # path tricks out of the job table in the first place.
    if not value or value.startswith("/") or "\\" in value or ".." in value.split("/"):
        return f"must be an artifact key like uploads/1/2.png, got {value!r}"
    return None


def _in_unit_interval(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


# An artifact store key (e.g. a stored trail or an uploaded picture), never a path.
_ARTIFACT_KEY = Field(str, high=512, check=_key_problem)


_COMMON: dict[str, Field] = {
    "effect": Field(str, choices=EFFECTS),
    "format": Field(str, choices=FORMATS),
    "fps": Field(int, low=1, high=120),
    "duration": Field(float, low=0.5, high=600.0),
    "theta": Field(float, low=0.0, high=1e6),
    "neighbourhood": Field(int, low=1, high=64),
    "release": Field(float, low=0.0, high=1.0),
    "move_sigma": Field(float, low=0.0, high=1e6),
    "max_bytes": Field(int, low=10_000, high=2**40),
}

SCHEMAS: dict[str, dict[str, Field]] = {
    JobKind.PAINT.value: {
        "prompt": Field(str, required=True, high=MAX_PROMPT, check=_not_blank),
        "negative_prompt": Field(str, high=MAX_PROMPT),
        "seed": Field(int, low=0, high=MAX_SEED),
        "steps": Field(int, low=1, high=500),
        "guidance": Field(float, low=0.0, high=50.0),
        "width": Field(int, low=64, high=4096, check=_multiple_of_8),
        "height": Field(int, low=64, high=4096, check=_multiple_of_8),
        "scheduler": Field(str, choices=SCHEDULERS),
        "model": Field(str, high=500, check=_not_blank),
        # "Repaint with…": paint this stored trail again, no new generation; the result it
        # came from (its public id), to name it if it is deleted before the job runs.
        "trail_key": _ARTIFACT_KEY,
        "from_result": Field(str, high=32, check=_not_blank),
        # Paint from a picture (SDEdit): the uploaded image, how much is repainted, and
        # whether the canvas starts at the picture instead of blank paper.
        "image_key": _ARTIFACT_KEY,
        # The member's own name of that picture, for the result's text.
        "image_name": Field(str, high=255),
        "strength": Field(float, low=0.0, high=1.0, check=_in_unit_interval),
        "start_from_image": Field(bool),
        # A repaint of a result the safety checker flagged: the repaint is flagged too.
        "flagged": Field(bool),
        **_COMMON,
    },
    JobKind.TRANSITION.value: {
        # Public result ids (what /history shows), checked for existence by the caller.
        "from_result": Field(str, required=True, high=32, check=_not_blank),
        "to_result": Field(str, required=True, high=32, check=_not_blank),
        # Their trails' artifact keys, resolved from the result rows when the job is queued.
        "from_trail": _ARTIFACT_KEY,
        "to_trail": _ARTIFACT_KEY,
        # Interpolated-latent guidance between the two trails (Appendix D).
        "interpolate": Field(bool),
        # How far back through the source's trail the transition goes, in (0, 1].
        "depth": Field(float, low=0.0, high=1.0, check=_in_unit_interval),
        # Resample the destination to the source's size when they differ.
        "resize": Field(bool),
        # One of the two results was flagged by the safety checker: so is the transition.
        "flagged": Field(bool),
        **_COMMON,
    },
}


def validate_kind(kind: object) -> str:
    """The job kind, or a ``ValueError`` naming the kinds there are."""
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise ValueError(f"unknown job kind {kind!r}; kinds are {', '.join(SCHEMAS)}")
    return kind


def _coerce(name: str, spec: Field, value: Any) -> Any:
    wanted = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[spec.kind]
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be {wanted}, got {value!r}")
        return value
    if spec.kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be {wanted}, got {value!r}")
        if spec.high is not None and len(value) > spec.high:
            raise ValueError(f"{name} is {len(value)} characters long; the limit is {int(spec.high)}")
        if "\x00" in value:
            raise ValueError(f"{name} must not contain NUL characters")
        return value
    # Numbers: bools are ints in Python but never what someone meant here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    if spec.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be {wanted}, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ValueError(f"{name} must be between {spec.low:g} and {spec.high:g}, got {value!r}")
    return value


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` for a job of ``kind``; returns a clean copy without None values."""
    kind = validate_kind(kind)
    if not isinstance(params, Mapping):
        raise ValueError(f"job parameters must be a mapping, got {type(params).__name__}")
    schema = SCHEMAS[kind]
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for a {kind} job; parameters are {', '.join(schema)}"
        )
    clean: dict[str, Any] = {}
    for name, spec in schema.items():
        value = params.get(name)
        if value is None:
            if spec.required:
                raise ValueError(f"a {kind} job needs {name}")
            continue
        value = _coerce(name, spec, value)
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
        if spec.check is not None and (problem := spec.check(value)):
            raise ValueError(f"{name} {problem}")
        clean[name] = value
    if kind == JobKind.PAINT.value:
        clean["prompt"] = clean["prompt"].strip()
    elif "from_trail" not in clean or "to_trail" not in clean:
        # The runner animates between trails; a job without them could only fail later.
        raise ValueError("a transition job needs from_trail and to_trail (the results' trail keys)")
    return clean
