"""The gateway websocket: HELLO, IDENTIFY → READY + GUILD_CREATE, heartbeats, RESUME, dispatch.

Frames go out as plain JSON text; discord.py asks for ``compress=zlib-stream`` in the URL
but only decompresses binary frames, and parses text frames as they are, which Discord
itself allows (the transport compression is optional).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import DiscordStandIn

_log = logging.getLogger("discord_standin.gateway")

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE, RESUME, RECONNECT = 0, 1, 2, 3, 4, 6, 7
REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 8, 9, 10, 11

INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Close codes Discord uses.
CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_INVALID_API_VERSION = 4012
CLOSE_DISALLOWED_INTENTS = 4014


@dataclass
class GatewaySession:
    """One identified session; it outlives its websocket so the client can RESUME it."""

    session_id: str
    intents: int
    identify: dict = field(repr=False)  # the IDENTIFY payload without its token
    seq: int = 0
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    # (seq, frame) of recent dispatches, replayed on RESUME.
    sent: deque = field(default_factory=lambda: deque(maxlen=1000), repr=False)
    heartbeats: int = 0
    resumes: int = 0
    connected_at: float = field(default_factory=time.monotonic)

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed


class Gateway:
    """The gateway side of the stand-in (one per stand-in; the newest session receives events)."""

    def __init__(
        self, standin: DiscordStandIn, *, heartbeat_interval_ms: int, allow_privileged_intents: bool
    ) -> None:
        self._standin = standin
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allow_privileged_intents = allow_privileged_intents
        self.sessions: dict[str, GatewaySession] = {}
        self.received: deque[dict] = deque(maxlen=2000)  # client→server frames, tokens removed
        self.connections = 0
        self.heartbeats = 0  # heartbeats answered, on any connection
        self._ready = asyncio.Event()
        self._sockets: set[web.WebSocketResponse] = set()
        self._send_lock = asyncio.Lock()

    @property
    def current(self) -> GatewaySession | None:
        """The newest connected session (the one events are sent to), or None."""
        connected = [s for s in self.sessions.values() if s.connected]
        return max(connected, key=lambda s: s.connected_at) if connected else None

    # ------------------------------------------------------------ test API

    async def wait_until_ready(self, timeout: float = 10.0) -> GatewaySession:
        """Wait until a client has identified (or resumed) and its guilds were sent."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no client identified on the stand-in gateway within {timeout:.1f}s "
                f"({self.connections} websocket connection(s) so far)"
            ) from None
        session = self.current
        if session is None:  # closed between the event and now; wait for the reconnect
            self._ready.clear()
            return await self.wait_until_ready(timeout)
        return session

    async def dispatch(self, event: str, data: dict, *, timeout: float = 10.0) -> int:
        """Send a DISPATCH event to the current session; returns its sequence number."""
        session = await self.wait_until_ready(timeout)
        return await self._send_dispatch(session, event, data)

    async def drop(self, code: int = 4000) -> None:
        """Close the current websocket with ``code`` (the client reconnects and RESUMEs)."""
        session = self.current
        if session is None or session.ws is None:
            raise RuntimeError("no connected gateway session to drop")
        ws, session.ws = session.ws, None
        if self.current is None:
            self._ready.clear()
        await ws.close(code=code, message=b"stand-in dropped the connection")

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT (the client closes and RESUMEs)."""
        session = self.current
        if session is None or session.ws is None:
            raise RuntimeError("no connected gateway session")
        # Events sent before the client reconnects are replayed on RESUME.
        await self._send(session.ws, {"op": RECONNECT, "d": None})

    async def close_all(self) -> None:
        """Close every open websocket (stand-in shutdown)."""
        self._ready.clear()
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"stand-in stopping")

    # ------------------------------------------------------------ websocket

    async def _send(self, ws: web.WebSocketResponse, frame: dict) -> None:
        if ws.closed:
            return
        async with self._send_lock:
            await ws.send_str(json.dumps(frame))

    async def _send_dispatch(self, session: GatewaySession, event: str, data: Any) -> int:
        session.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.sent.append((session.seq, frame))
        if session.ws is not None:
            await self._send(session.ws, frame)
        return session.seq

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``/gateway`` websocket endpoint."""
        ws = web.WebSocketResponse(compress=True, max_msg_size=4 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self._sockets.add(ws)
        session: GatewaySession | None = None
        try:
            if request.query.get("encoding", "json") != "json":
                await ws.close(code=CLOSE_DECODE_ERROR, message=b"only encoding=json is served")
                return ws
            if request.query.get("v", "10") not in ("9", "10"):
                await ws.close(code=CLOSE_INVALID_API_VERSION, message=b"Invalid API version")
                return ws
            await self._send(ws, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    if msg.type is WSMsgType.BINARY:
                        await ws.close(code=CLOSE_DECODE_ERROR, message=b"binary frames are not understood")
                    break
                try:
                    frame = json.loads(msg.data)
                    op = frame["op"]
                except (ValueError, KeyError, TypeError):
                    await ws.close(code=CLOSE_DECODE_ERROR, message=b"Decode error")
                    break
                data = frame.get("d")
                self.received.append({"op": op, "d": _without_token(data)})
                if op == HEARTBEAT:
                    self.heartbeats += 1
                    if session is not None:
                        session.heartbeats += 1
                    await self._send(ws, {"op": HEARTBEAT_ACK})
                elif op == IDENTIFY:
                    if session is not None:
                        await ws.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated")
                        break
                    session = await self._identify(ws, data or {})
                    if session is None:
                        break
                elif op == RESUME:
                    if session is not None:
                        await ws.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated")
                        break
                    session = await self._resume(ws, data or {})
                    if session is None and ws.closed:
                        break
                elif session is None:
                    await ws.close(code=CLOSE_NOT_AUTHENTICATED, message=b"Not authenticated")
                    break
                elif op == REQUEST_MEMBERS:
                    await self._members_chunk(session, data or {})
                elif op in (PRESENCE, VOICE_STATE):
                    pass  # recorded above; nothing to answer
                else:
                    await ws.close(code=CLOSE_UNKNOWN_OPCODE, message=b"Unknown opcode")
                    break
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            if self.current is None:
                self._ready.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict) -> GatewaySession | None:
        standin = self._standin
        if not standin.token_matches(data.get("token")):
            await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS and not self.allow_privileged_intents:
            await ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return None
        session = GatewaySession(
            session_id=secrets.token_hex(16), intents=intents, identify=_without_token(data)
        )
        session.ws = ws
        # Several sessions may be open at once (a restarted bot before the old one closed), as on
        # Discord; events go to the newest connected one.
        self.sessions[session.session_id] = session
        ready: dict[str, Any] = {
            "v": 10,
            "user": standin.bot_user.payload() | {"verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in standin.guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": standin.gateway_url,
            "application": {"id": str(standin.application_id), "flags": standin.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._send_dispatch(session, "READY", ready)
        include_members = bool(intents & INTENT_GUILD_MEMBERS)
        for guild in standin.guilds:
            payload = guild.payload(bot_member=standin.bot_member(guild), include_members=include_members)
            await self._send_dispatch(session, "GUILD_CREATE", payload)
        self._ready.set()
        _log.info("gateway: session %s identified (intents=%d)", session.session_id[:8], intents)
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict) -> GatewaySession | None:
        if not self._standin.token_matches(data.get("token")):
            await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        session = self.sessions.get(str(data.get("session_id")))
        if session is None:
            # Unknown session: not resumable; the client re-identifies.
            await self._send(ws, {"op": INVALID_SESSION, "d": False})
            return None
        if session.ws is not None and session.ws is not ws:
            await session.ws.close(code=4000, message=b"resumed elsewhere")
        session.ws = ws
        session.connected_at = time.monotonic()
        session.resumes += 1
        last = int(data.get("seq") or 0)
        for seq, frame in list(session.sent):
            if seq > last:
                await self._send(ws, frame)
        await self._send_dispatch(session, "RESUMED", {})
        self._ready.set()
        _log.info("gateway: session %s resumed from seq %d", session.session_id[:8], last)
        return session

    async def _members_chunk(self, session: GatewaySession, data: dict) -> None:
        guild = self._standin.guild(int(data.get("guild_id") or 0))
        if guild is None:
            return
        members = [self._standin.bot_member(guild)] + [
            m for m in guild.members if m.id != self._standin.bot_user.id
        ]
        wanted = data.get("user_ids")
        if wanted:
            ids = {int(u) for u in (wanted if isinstance(wanted, list) else [wanted])}
            members = [m for m in members if m.id in ids]
        elif data.get("query"):
            members = [m for m in members if m.user.username.startswith(str(data["query"]))]
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)


def _without_token(data: Any) -> Any:
    if isinstance(data, dict) and "token" in data:
        return {k: v for k, v in data.items() if k != "token"}
    return data
