"""``bot.text``: member text made inert before the bot shows it."""

from __future__ import annotations

import pytest

from bot.text import INVISIBLE_TEXT, listed, one_line, quote, visible

# Every control that reorders text around it: embeddings, overrides, isolates and marks.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_quote_makes_member_text_inert_and_short() -> None:
    text = quote("# Title\n> @everyone **bold** <@&123> `code`", 1000)
    assert "@\u200beveryone" in text and "\\*\\*bold\\*\\*" in text and "\\`code\\`" in text
    assert text.startswith("\\# Title") and "\n\\> " in text
    long = quote("*" * 50, 20)
    assert len(long) <= 20 and long.endswith("…") and not long[:-1].endswith("\\")


def test_quote_drops_the_controls_that_would_reverse_the_bots_own_words() -> None:
    # Shown raw, U+202E would make "” was cancelled." read backwards after the prompt.
    assert quote("a cat \u202eyrtnuoc eht ni esuoh") == "a cat yrtnuoc eht ni esuoh"
    assert quote(f"a{BIDI_CONTROLS}b") == "ab"
    # A mark cannot hide a mention from the escaping either.
    assert quote("@\u200eeveryone") == "@\u200beveryone"
    # Right-to-left scripts read right without them, and emoji keep their joiners.
    assert quote("עברית والعربية") == "עברית والعربية"
    assert quote("👩\u200d🎨 ❤\ufe0f") == "👩\u200d🎨 ❤\ufe0f"
    assert one_line("K3F97QXM · a\u202eb\u2066c", 100) == "K3F97QXM · abc"


@pytest.mark.parametrize(
    "invisible",
    [
        "\u200b\u200b",  # zero-width spaces
        " \u2060\ufeff\u00ad ",  # word joiner, BOM, soft hyphen
        "\u3164\u2800\u115f",  # Hangul filler, blank braille pattern
        "\u202e\u2066",  # only bidi controls
        "\ufe0f\U000e0020\n\t",  # a variation selector, a tag, whitespace
    ],
)
def test_text_that_draws_nothing_is_quoted_as_something_visible(invisible: str) -> None:
    assert not visible(invisible)
    assert quote(invisible) == INVISIBLE_TEXT
    assert quote(invisible, 10) == INVISIBLE_TEXT[:9] + "…"


def test_visible_text_counts_as_visible() -> None:
    for text in ("a", "\u200bcat\u200b", "🎨", "\u0301", "\U0001fae8"):  # a lone accent; a newer emoji
        assert visible(text), ascii(text)
    assert quote("") == "" and quote(None) == "" and not visible(None)


def test_listed_shows_what_fits_then_counts_the_rest() -> None:
    channels = [f"<#{1_300_000_000_000_009_000 + i}>" for i in range(60)]
    shown = listed(channels, 1024)
    assert len(shown) <= 1024 and shown.endswith(" and 18 more")
    assert shown.removesuffix(" and 18 more").split(", ") == channels[:42]
    assert listed(["a", "b"], 4) == "a, b"  # what fits is not counted
    assert listed(["aaaa", "bbbb", "cccc", "dddd"], 20) == "aaaa and 3 more"
    assert listed([], 10) == ""
