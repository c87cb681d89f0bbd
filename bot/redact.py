"""Keep secrets out of the logs, whatever logger writes them and at whatever level.

With ``-v`` every library logs at DEBUG, and discord.py then logs each request's URL:
an interaction's follow-ups and edits go to ``/webhooks/<application>/<interaction
token>/…``, and anyone holding that token can post as the bot in the channel for 15
minutes; the gateway logs each interaction event, token included. Redaction happens
where log records are made (the log record factory), so it covers every handler,
including ones a library adds later, and exception text too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

REDACTED = "<redacted>"

_PATTERNS = (
    # Interaction tokens in REST routes: /webhooks/<id>/<token>, /interactions/<id>/<token>.
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}"), r"\1" + REDACTED),
    # A token under its name, as in a logged gateway event: {'token': '…'} or "token": "…".
    (
        re.compile(r"""(["']?\b(?:token|interaction_token)["']?\s*[:=]\s*["'])[^"']{8,}(?=["'])"""),
        r"\1" + REDACTED,
    ),
    # A password in a URL: postgresql+asyncpg://user:password@host/db.
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE), r"\1" + REDACTED + "@"),
    # A password as a URL's query parameter (libpq and psycopg take ?password=…).
    (re.compile(r"([?&](?:ssl)?password=)[^&#\s'\"]+", re.IGNORECASE), r"\1" + REDACTED),
)

_secrets: set[str] = set()
_installed = False


def redact(text: str) -> str:
    """``text`` with interaction tokens, URL passwords and the known secrets replaced."""
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def add_secrets(secrets: Iterable[str | None]) -> None:
    """Redact these exact strings too (short ones are ignored: they would redact words)."""
    _secrets.update(s for s in secrets if s and len(s) >= 8)


def install_log_redaction() -> None:
    """Redact every log record from now on (idempotent); the bot token from the environment included."""
    global _installed
    add_secrets([os.environ.get("DISCORD_TOKEN", "").strip()])
    # aiosqlite logs every statement with its parameters at DEBUG (a queued job's row holds
    # its interaction token); nothing in it is worth a secret.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format is the handler's to report, as without us
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters use exc_text when it is set; exception messages can carry URLs.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacting_record)
