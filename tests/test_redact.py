"""Secrets never reach the logs: tokens in URLs and events, database passwords, the bot token."""

from __future__ import annotations

import logging

import pytest

from bot.redact import REDACTED, add_secrets, install_log_redaction, redact

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQtdG9rZW4tdmFsdWU"


@pytest.mark.parametrize(
    "text",
    [
        f"PATCH https://discord.com/api/v10/webhooks/1300000000000000001/{TOKEN}/messages/%40original",
        f"POST /interactions/1574273751342776330/{TOKEN}/callback",
        f"WebSocket Event: {{'op': 0, 'd': {{'id': '1', 'token': '{TOKEN}', 'version': 1}}}}",
        f'{{"interaction_token": "{TOKEN}"}}',
    ],
)
def test_interaction_tokens_are_redacted(text: str) -> None:
    cleaned = redact(text)
    assert TOKEN not in cleaned and REDACTED in cleaned


def test_database_password_is_redacted_and_the_rest_kept() -> None:
    url = "postgresql+asyncpg://painter:s3cret-pw@db.internal:5432/painter"
    assert (
        redact(f"cannot reach {url}")
        == f"cannot reach postgresql+asyncpg://painter:{REDACTED}@db.internal:5432/painter"
    )

    # libpq (psycopg) takes it as a query parameter too.
    url = "postgresql+psycopg://painter@db.internal/painter?password=s3cret-pw&sslmode=require"
    assert redact(f"starting: database {url}, data directory /data") == (
        f"starting: database postgresql+psycopg://painter@db.internal/painter?password={REDACTED}"
        "&sslmode=require, data directory /data"
    )


def test_ordinary_messages_are_unchanged() -> None:
    text = "job 12 (paint) queued for user 1300000000000000301: 'a lighthouse', token expires at 12:00"
    assert redact(text) == text


def test_records_and_their_exceptions_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    add_secrets(["bot-token.that-is-secret"])
    log = logging.getLogger("discord.http")
    with caplog.at_level(logging.DEBUG):
        log.debug("connecting with %s and %s", "bot-token.that-is-secret", f"/webhooks/1/{TOKEN}")
        try:
            raise RuntimeError(f"404 for https://discord.com/api/v10/webhooks/1/{TOKEN}")
        except RuntimeError:
            log.exception("follow-up failed")
    assert "bot-token.that-is-secret" not in caplog.text and TOKEN not in caplog.text
    assert caplog.text.count(REDACTED) == 3
