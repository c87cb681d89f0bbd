"""Text the bot shows: user-typed words made inert, lengths kept within Discord's limits.

A prompt is written by a member and shown by the bot in embeds, replies and error
messages. Shown raw, ``**bold**`` would format, ``@everyone`` or ``<@&role>`` would read
as a mention, a right-to-left override would reverse the bot's own words after it, and a
long prompt would break an embed's limits. :func:`quote` is the one way user text
reaches a message.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

import discord

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
CHOICE_NAME_LIMIT = 100

# Line-start markdown that escape_markdown leaves alone: headings, quotes, list bullets.
_LINE_START = re.compile(r"(?m)^(\s*)([#>\-*]|\d+\.)")

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the
# direction marks (U+200E, U+200F, U+061C). In a member's text they reorder what follows
# it, the bot's own words included ("… was cancelled." shown backwards); right-to-left
# scripts need none of them to read right. The zero-width joiner of emoji stays.
_BIDI_CONTROLS = dict.fromkeys(
    map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
)

# What a text that draws nothing is shown as, so "Your painting “”" never happens.
INVISIBLE_TEXT = "(invisible text)"
# Characters that draw nothing but are letters, symbols or marks to Unicode: the Hangul
# fillers, the blank braille pattern, the grapheme joiner, variation selectors and the
# Mongolian and Khmer ones that only shape their neighbours.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f")


def _draws(char: str) -> bool:
    if char in _BLANK or "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef":
        return False
    # Spaces, separators, controls and format characters (zero-width space, word joiner,
    # soft hyphen, tags...). Unassigned code points count as drawing: to this Python they
    # include emoji newer than its Unicode tables.
    return unicodedata.category(char) not in ("Zs", "Zl", "Zp", "Cc", "Cf", "Cs")


def visible(text: str | None) -> bool:
    """Whether ``text`` has a character that draws something (not only spaces and zero-width ones)."""
    return any(_draws(char) for char in str(text or ""))


def without_bidi_controls(text: str) -> str:
    """``text`` without the controls that would reorder the text around it."""
    return text.translate(_BIDI_CONTROLS)


def quote(text: str | None, limit: int = FIELD_VALUE_LIMIT) -> str:
    """``text`` made inert, cut to ``limit`` characters with an ellipsis.

    Markdown and mentions are escaped and bidirectional controls removed; a text of only
    invisible characters is shown as :data:`INVISIBLE_TEXT`. Escaping happens before
    cutting is measured, so the result never exceeds ``limit`` and never ends in half an
    escape sequence.
    """
    if not text:
        return ""
    plain = without_bidi_controls(str(text))
    if not visible(plain):
        escaped = INVISIBLE_TEXT
    else:
        escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(plain))
        escaped = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: max(0, limit - 1)]
    if cut.endswith("\\"):
        cut = cut[:-1]
    return cut + "…"


def one_line(text: str | None, limit: int) -> str:
    """Plain text on one line, cut to ``limit`` characters (for autocomplete labels, not markdown)."""
    flat = " ".join(without_bidi_controls(str(text or "")).split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)] + "…"


def listed(items: list[str], limit: int) -> str:
    """``a, b, c and 40 more``: as many of ``items`` as fit in ``limit`` characters, then a count.

    For lists of mentions or ids, which cannot be cut in the middle as :func:`quote` cuts text.
    """
    total = len(items)
    joined = ", ".join(items)
    if len(joined) <= limit:
        return joined
    # Longest first part that leaves room for its " and K more".
    length = -2  # no ", " before the first item
    shown = 0
    for item in items:
        longer = length + 2 + len(item)
        if longer + len(f" and {total - shown - 1} more") > limit:
            break
        length, shown = longer, shown + 1
    if shown == 0:
        return f"{total} (too many to list)"[:limit]
    return f"{', '.join(items[:shown])} and {total - shown} more"


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


def jump_link(guild_id: int | None, channel_id: int, message_id: int | None = None) -> str:
    """A link that opens a channel, or a message in it (``@me`` stands for direct messages)."""
    url = f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}"
    return f"{url}/{message_id}" if message_id else url


def timestamp(when: datetime, style: str = "R") -> str:
    """A Discord timestamp tag, shown in each reader's own time zone."""
    return discord.utils.format_dt(when, style=style)  # type: ignore[arg-type]
