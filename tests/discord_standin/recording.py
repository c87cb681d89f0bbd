"""What the bot sent: every REST request, recorded, with waiting helpers for tests.

The bot's token is never recorded: the Authorization header is dropped (only whether one was
present is kept), and IDENTIFY/RESUME payloads are stored without their ``token`` field.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Headers that carry credentials or are transport noise; never stored.
_DROPPED_HEADERS = {"authorization", "cookie", "proxy-authorization"}


@dataclass(frozen=True)
class RecordedFile:
    """One uploaded file of a multipart request (``files[n]`` part)."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class RecordedRequest:
    """One REST request the client made, and what the stand-in answered.

    ``path`` is relative to the API base (``/interactions/1/tok/callback``); ``route`` is the
    template it matched (``POST /interactions/{interaction_id}/{token}/callback``, or
    ``UNKNOWN`` for a route the stand-in does not serve); ``json`` is the JSON body, or the
    parsed ``payload_json`` part of a multipart body; ``at`` is ``time.monotonic()`` on arrival.
    """

    seq: int
    at: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    authorized: bool
    json: Any = None
    files: list[RecordedFile] = field(default_factory=list)
    body: bytes = b""
    route: str = "UNKNOWN"
    params: dict[str, str] = field(default_factory=dict)
    status: int = 0
    response: Any = None

    @property
    def rate_limited(self) -> bool:
        """True when the stand-in answered this request with 429."""
        return self.status == 429

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def token(self) -> str | None:
        """The interaction/webhook token in the path, if the route has one."""
        return self.params.get("token")

    @property
    def message(self) -> dict:
        """The message part of the body: ``data`` of an interaction callback, else the body itself."""
        body = self.json if isinstance(self.json, dict) else {}
        if self.route.endswith("/callback"):
            return body.get("data") or {}
        return body

    @property
    def callback_type(self) -> int | None:
        """The interaction callback type (4 message, 5 deferred, 6, 7, 8 autocomplete, 9 modal)."""
        if self.route.endswith("/callback") and isinstance(self.json, dict):
            return self.json.get("type")
        return None

    @property
    def flags(self) -> int:
        return int(self.message.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        """Whether the message flags ask for an ephemeral message (64)."""
        return bool(self.flags & 64)

    @property
    def content(self) -> str:
        return self.message.get("content") or ""

    @property
    def embeds(self) -> list[dict]:
        return self.message.get("embeds") or []

    @property
    def allowed_mentions(self) -> dict | None:
        return self.message.get("allowed_mentions")

    @property
    def file_names(self) -> list[str]:
        return [f.filename for f in self.files]

    def file(self, name: str) -> RecordedFile:
        """The uploaded file named ``name``; KeyError listing the uploaded names otherwise."""
        for f in self.files:
            if f.filename == name:
                return f
        raise KeyError(f"no file {name!r} in {self.method} {self.path}; uploaded: {self.file_names}")

    def files_ending(self, suffix: str) -> list[RecordedFile]:
        """The uploaded files whose names end with ``suffix`` (e.g. ``".mp4"``)."""
        return [f for f in self.files if f.filename.lower().endswith(suffix.lower())]

    def __repr__(self) -> str:  # Short: a failing assert prints lists of these.
        files = f" files={self.file_names}" if self.files else ""
        return f"<#{self.seq} {self.method} {self.path} -> {self.status}{files}>"


def clean_headers(headers: Any) -> dict[str, str]:
    """The request headers without credentials (keys lower-cased)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS}


Predicate = Callable[[RecordedRequest], bool]


class Recorder:
    """A bounded log of requests with ``wait_for`` for tests.

    At most ``max_requests`` requests and ``max_bytes`` of file data are kept; the oldest are
    dropped first (their ``seq`` numbers keep counting, so marks stay valid).
    """

    def __init__(self, *, max_requests: int = 5000, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._items: deque[RecordedRequest] = deque()
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._bytes = 0
        self._seq = 0
        self._changed = asyncio.Condition()

    def new(self, **fields: Any) -> RecordedRequest:
        """A request record with the next sequence number (not yet visible to waiters)."""
        self._seq += 1
        return RecordedRequest(seq=self._seq, at=time.monotonic(), **fields)

    async def add(self, request: RecordedRequest) -> None:
        """Store a finished request (status and response set) and wake the waiters."""
        self._items.append(request)
        self._bytes += sum(f.size for f in request.files) + len(request.body)
        while len(self._items) > self._max_requests or (
            self._bytes > self._max_bytes and len(self._items) > 1
        ):
            old = self._items.popleft()
            self._bytes -= sum(f.size for f in old.files) + len(old.body)
        async with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """The sequence number after which new requests will be numbered (use as ``since``)."""
        return self._seq

    def __iter__(self) -> Iterator[RecordedRequest]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def matching(
        self, predicate: Predicate | None = None, *, since: int = 0, include_rate_limited: bool = False
    ) -> list[RecordedRequest]:
        """Recorded requests after ``since`` that satisfy ``predicate``, oldest first."""
        return [
            r
            for r in self._items
            if r.seq > since
            and (include_rate_limited or not r.rate_limited)
            and (predicate is None or predicate(r))
        ]

    async def wait_for(
        self,
        predicate: Predicate,
        *,
        timeout: float = 10.0,
        since: int = 0,
        count: int = 1,
        include_rate_limited: bool = False,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` requests after ``since`` match; returns the first ``count`` of them.

        Requests answered with 429 are skipped unless ``include_rate_limited``. On timeout,
        raises ``TimeoutError`` listing what was recorded, so the failure says what the bot did.
        """

        def found() -> list[RecordedRequest] | None:
            hits = self.matching(predicate, since=since, include_rate_limited=include_rate_limited)
            return hits[:count] if len(hits) >= count else None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(found), timeout)
            except TimeoutError:
                recent = [r for r in self._items if r.seq > since][-25:]
                raise TimeoutError(
                    f"no {count} matching request(s) within {timeout:.1f}s; recorded since #{since}: {recent}"
                ) from None
        result = found()
        assert result is not None
        return result
