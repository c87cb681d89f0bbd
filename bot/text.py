"""Text the bot shows: user-typed words made inert, lengths kept within Discord's limits.

A prompt is written by a member and shown by the bot in embeds, replies and error
messages. Shown raw, ``**bold**`` would format, ``@everyone`` or ``<@&role>`` would read
as a mention, and a long prompt would break an embed's limits. :func:`quote` is the one
way user text reaches a message.
"""

from __future__ import annotations

import re
from datetime import datetime

import discord

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
CHOICE_NAME_LIMIT = 100

# Line-start markdown that escape_markdown leaves alone: headings, quotes, list bullets.
_LINE_START = re.compile(r"(?m)^(\s*)([#>\-*]|\d+\.)")


def quote(text: str | None, limit: int = FIELD_VALUE_LIMIT) -> str:
    """``text`` with markdown and mentions escaped, cut to ``limit`` characters with an ellipsis.

    Escaping happens before cutting is measured, so the result never exceeds ``limit``
    and never ends in half an escape sequence.
    """
    if not text:
        return ""
    escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(str(text)))
    escaped = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: max(0, limit - 1)]
    if cut.endswith("\\"):
        cut = cut[:-1]
    return cut + "…"


def one_line(text: str | None, limit: int) -> str:
    """Plain text on one line, cut to ``limit`` characters (for autocomplete labels, not markdown)."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)] + "…"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def size(nbytes: int) -> str:
    """``512 bytes``, ``4 KB``, ``8.0 MB`` (decimal units, as Discord shows upload limits)."""
    if nbytes < 1000:
        return f"{nbytes} bytes"
    if nbytes < 1_000_000:
        return f"{nbytes / 1000:.0f} KB"
    return f"{nbytes / 1e6:.1f} MB"


def seconds(value: float) -> str:
    """A rough human duration: ``about 40 s``, ``about 3 min``."""
    value = max(0.0, float(value))
    if value < 90:
        return f"about {max(1, round(value))} s"
    if value < 90 * 60:
        return f"about {round(value / 60)} min"
    return f"about {value / 3600:.1f} h"


def timestamp(when: datetime, style: str = "R") -> str:
    """A Discord timestamp tag, shown in each reader's own time zone."""
    return discord.utils.format_dt(when, style=style)  # type: ignore[arg-type]
