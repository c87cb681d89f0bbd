"""A local stand-in for Discord: REST API and gateway on one loopback port, for end-to-end tests.

The real discord.py client talks to it unchanged once ``discord.http.Route.BASE`` is
``standin.api_base`` and ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` is
``yarl.URL(standin.gateway_url)`` (the bot's ``[discord] api_base`` / ``gateway_url``
settings, or :meth:`DiscordStandIn.pointed_here` in a test). Tests push interactions with
``send_slash`` / ``send_autocomplete`` / ``send_component`` / ``send_modal_submit`` and
assert on what the bot sent back through the recorded requests. See README.md here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .gateway import Gateway
from .interactions import (
    ALLOWED_CALLBACKS,
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    InteractionBuildError,
    InteractionHandle,
    InteractionState,
    StandInAttachment,
    command_data,
    command_path,
    new_state,
)
from .messages import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    ApiError,
    MessageStore,
    StoredAttachment,
    StoredMessage,
    content_type_for,
    form_error,
    validate_message_body,
)
from .recording import Predicate, RecordedFile, RecordedRequest, Recorder, clean_headers
from .world import (
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    Permission,
    Snowflakes,
    StandInChannel,
    StandInGuild,
    StandInMember,
    StandInUser,
    default_bot_user,
    default_guilds,
)

_log = logging.getLogger("discord_standin")

API_PREFIXES = ("/api/v10", "/api/v9")
MAX_INTERACTIONS = 5000
MAX_PROBLEMS = 1000
_DEFAULT = object()  # "use the default guild/channel/user" in the send_* helpers
_NAME = re.compile(r"^[-_'\w]{1,32}$")


@dataclass
class _ForcedLimit:
    """``rate_limit()``: answer the next ``remaining`` matching requests with 429."""

    match: str | Predicate
    remaining: int
    retry_after: float
    is_global: bool
    scope: str


@dataclass
class _Bucket:
    """``limit_route()``: a real fixed-window bucket (``limit`` requests per ``per`` seconds)."""

    match: str | Predicate
    limit: int
    per: float
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # major key -> (start, count)

    @property
    def name(self) -> str:
        return hashlib.sha1(repr(self.match).encode()).hexdigest()[:16]


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Callable[..., Any]
    bot_auth: bool


def _matches(match: str | Predicate, request: RecordedRequest) -> bool:
    if callable(match):
        return bool(match(request))
    # "POST /webhooks/{application_id}/{token}" names a route; anything else is a glob.
    return match == request.route or fnmatch.fnmatchcase(f"{request.method} {request.path}", match)


class DiscordStandIn:
    """Discord's REST API and gateway, served on 127.0.0.1, with a test API.

    Parameters:
        token: the bot token to accept (REST ``Authorization: Bot …`` and IDENTIFY); None
            accepts any. It is never recorded or logged.
        guilds: the guilds the bot is in (default :func:`world.default_guilds`).
        callback_deadline: seconds an interaction may go unanswered before its callback fails
            with 10062 "Unknown interaction", as on Discord (3 s); None disables.
        token_lifetime: seconds an interaction token stays valid for follow-ups (Discord: 15 min).
        allow_privileged_intents: when false (Discord's default for an unverified app's
            settings), IDENTIFY with members/presences/message-content intents is closed with 4014.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        guilds: Sequence[StandInGuild] | None = None,
        bot_user: StandInUser | None = None,
        application_id: int | None = None,
        heartbeat_interval_ms: int = 41250,
        callback_deadline: float | None = 3.0,
        token_lifetime: float = 15 * 60.0,
        allow_privileged_intents: bool = False,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._token = token
        self.bot_user = bot_user or default_bot_user()
        self.application_id = application_id or self.bot_user.id
        self.application_flags = 0
        self.guilds: list[StandInGuild] = list(guilds) if guilds is not None else default_guilds()
        self.callback_deadline = callback_deadline
        self.token_lifetime = token_lifetime
        self.max_body_bytes = max_body_bytes
        self.snowflakes = Snowflakes()
        self.recorder = Recorder()
        self.gateway = Gateway(
            self,
            heartbeat_interval_ms=heartbeat_interval_ms,
            allow_privileged_intents=allow_privileged_intents,
        )
        self.messages = MessageStore(self.snowflakes, "http://127.0.0.1:0")
        self.global_commands: list[dict] = []
        self.guild_commands: dict[int, list[dict]] = {}
        self.unknown_requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # stand-in faults (bugs here), reported by assert_clean()
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self._interactions: dict[int, InteractionState] = {}
        self._by_token: dict[str, InteractionState] = {}
        self._dm_channels: dict[int, StandInUser] = {}
        self._forced: list[_ForcedLimit] = []
        self._buckets: list[_Bucket] = []
        # Attachment (CDN) downloads: the paths served, in order, and a delay before each
        # answer (seconds), so a test can see how many pictures the bot fetched at once.
        self.attachment_downloads: list[str] = []
        self.attachment_delay = 0.0
        self._routes = self._route_table()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ================================================================ lifecycle

    async def start(self) -> DiscordStandIn:
        """Bind 127.0.0.1 on a free port and start serving."""
        if self._runner is not None:
            raise RuntimeError("stand-in already started")
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._entry)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        self.messages.base_url = self.base_url
        _log.info("stand-in listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        """Close gateway connections and the server (idempotent)."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gateway.close_all(), 3.0)
        await runner.cleanup()

    async def __aenter__(self) -> DiscordStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("stand-in not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (attachments are served under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The REST base for ``discord.http.Route.BASE`` / ``[discord] api_base``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The gateway URL for ``DiscordWebSocket.DEFAULT_GATEWAY`` / ``[discord] gateway_url``."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    def env(self) -> dict[str, str]:
        """Environment variables that point the bot's settings at this stand-in."""
        return {
            "LATENT_PAINTER_DISCORD_API_BASE": self.api_base,
            "LATENT_PAINTER_DISCORD_GATEWAY_URL": self.gateway_url,
        }

    @contextlib.contextmanager
    def pointed_here(self) -> Iterator[None]:
        """Point discord.py's class attributes at this stand-in for the block, then restore them."""
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # ================================================================ world lookups

    def token_matches(self, token: Any) -> bool:
        """Whether a presented token is the bot's (any token when none was configured)."""
        if not isinstance(token, str) or not token:
            return False
        if token.startswith("Bot "):
            token = token[4:]
        return self._token is None or secrets.compare_digest(token, self._token)

    def guild(self, guild_id: int) -> StandInGuild | None:
        """The configured guild with this id, or None."""
        return next((g for g in self.guilds if g.id == guild_id), None)

    def user(self, user_id: int) -> StandInUser | None:
        """Any known user (the bot, or a member of any guild) by id."""
        if user_id == self.bot_user.id:
            return self.bot_user
        for guild in self.guilds:
            member = guild.member(user_id)
            if member is not None:
                return member.user
        return self._dm_channels.get(user_id)

    def _users(self) -> dict[int, StandInUser]:
        users = {self.bot_user.id: self.bot_user}
        for guild in self.guilds:
            users.update({m.id: m.user for m in guild.members})
        return users

    def bot_member(self, guild: StandInGuild) -> StandInMember:
        """The bot's own member in ``guild`` (with the guild's bot roles)."""
        existing = guild.member(self.bot_user.id)
        return existing or StandInMember(self.bot_user, roles=list(guild.bot_role_ids))

    def bot_permissions(self, guild: StandInGuild) -> int:
        """The bot's resolved permissions in ``guild``."""
        return guild.permissions_of(self.bot_member(guild))

    def _channel(self, channel_id: int) -> tuple[StandInGuild | None, StandInChannel | None]:
        for guild in self.guilds:
            channel = guild.channel(channel_id)
            if channel is not None:
                return guild, channel
        return None, None

    def channel_messages(self, channel: int | str | StandInChannel) -> list[StoredMessage]:
        """Live non-ephemeral messages in a channel (id, name in the first guild, or object), oldest first."""
        channel_id = self._resolve_channel(self.guilds[0] if self.guilds else None, channel).id
        return [m for m in self.messages.in_channel(channel_id) if not m.ephemeral]

    def store_user_attachment(self, attachment: StandInAttachment) -> StoredAttachment:
        """Keep a file a user "uploaded" for an attachment option and serve it like a CDN file."""
        stored = StoredAttachment(
            id=self.snowflakes.next(),
            channel_id=0,
            filename=attachment.filename,
            content_type=content_type_for(attachment.filename),
            data=attachment.data,
        )
        if attachment.served:
            self.messages._attachments[stored.id] = stored
        return stored

    # ================================================================ recording / control API

    @property
    def requests(self) -> list[RecordedRequest]:
        """Everything recorded so far (429s included), oldest first."""
        return list(self.recorder)

    def mark(self) -> int:
        """A position in the request log; pass it as ``since`` to look only at later requests."""
        return self.recorder.mark()

    async def wait_for(
        self,
        predicate: Predicate,
        *,
        timeout: float = 10.0,
        since: int = 0,
        include_rate_limited: bool = False,
    ) -> RecordedRequest:
        """The first recorded request after ``since`` matching ``predicate``, waiting up to ``timeout``.

        Requests answered with 429 are skipped unless ``include_rate_limited``; already recorded
        requests count, so there is no race between an action and the wait.
        """
        hits = await self.recorder.wait_for(
            predicate, timeout=timeout, since=since, include_rate_limited=include_rate_limited
        )
        return hits[0]

    async def wait_for_all(
        self, predicate: Predicate, count: int, *, timeout: float = 10.0, since: int = 0
    ) -> list[RecordedRequest]:
        """The first ``count`` matching requests after ``since`` (429s skipped)."""
        return await self.recorder.wait_for(predicate, timeout=timeout, since=since, count=count)

    async def wait_for_commands(
        self, *names: str, guild_id: int | None = None, timeout: float = 10.0
    ) -> list[dict]:
        """Wait until top-level commands ``names`` are synced (globally, or to ``guild_id``); returns them."""

        def synced() -> list[dict] | None:
            pool = self.guild_commands.get(guild_id, []) if guild_id else self.global_commands
            found = [c for n in names for c in pool if c["name"] == n]
            return found if len(found) == len(names) else None

        since = 0
        deadline = time.monotonic() + timeout
        while (found := synced()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                where = f"guild {guild_id}" if guild_id else "global"
                raise TimeoutError(f"commands {list(names)} not synced ({where}) within {timeout:.1f}s")
            with contextlib.suppress(TimeoutError):
                hit = await self.wait_for(
                    lambda r: "/commands" in r.route and r.method != "GET", since=since, timeout=left
                )
                since = hit.seq
        return found

    def rate_limit(
        self,
        match: str | Predicate,
        *,
        times: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str = "user",
    ) -> None:
        """Answer the next ``times`` requests matching ``match`` with HTTP 429.

        ``match`` is a route template (``"POST /webhooks/{application_id}/{token}"``), a glob
        over ``"METHOD /path"`` (``"PATCH /webhooks/*/messages/@original"``), or a predicate
        on the :class:`RecordedRequest`. The answer carries Discord's headers (``Retry-After``,
        ``X-RateLimit-*``, ``Via``) and body ``{"message", "retry_after", "global"}``.
        """
        if times < 1 or retry_after < 0:
            raise ValueError("rate_limit needs times >= 1 and retry_after >= 0")
        self._forced.append(_ForcedLimit(match, times, retry_after, is_global, scope))

    def limit_route(self, match: str | Predicate, *, limit: int, per: float) -> None:
        """Enforce a real bucket: at most ``limit`` matching requests per ``per`` seconds.

        Answers carry ``X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket`` so the client
        can pace itself; requests over the limit get 429. Windows are per channel / token.
        """
        if limit < 1 or per <= 0:
            raise ValueError("limit_route needs limit >= 1 and per > 0")
        self._buckets.append(_Bucket(match, limit, per))

    def expire_token(self, token: str) -> None:
        """Invalidate an interaction token now (its webhook routes answer 401 50027)."""
        state = self._by_token.get(token)
        if state is None:
            raise KeyError("no interaction with that token was sent by this stand-in")
        state.expired = True

    def interaction(self, interaction_id: int) -> InteractionState | None:
        """The stand-in's state of a sent interaction (acknowledged, original message, …)."""
        return self._interactions.get(interaction_id)

    def assert_clean(self) -> None:
        """Fail when the client called routes the stand-in does not serve, or the stand-in erred."""
        problems = [f"unknown route {r.method} {r.path}" for r in self.unknown_requests] + self.errors
        if problems:
            raise AssertionError("stand-in saw problems:\n  " + "\n  ".join(problems))

    # ================================================================ gateway API

    async def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait until the client identified and got READY and its GUILD_CREATEs."""
        await self.gateway.wait_until_ready(timeout)

    async def dispatch(self, event: str, data: dict, *, timeout: float = 10.0) -> int:
        """Send any gateway DISPATCH event to the connected client; returns its sequence number."""
        return await self.gateway.dispatch(event, data, timeout=timeout)

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the client's websocket (it reconnects and RESUMEs; missed events are replayed)."""
        await self.gateway.drop(code)

    # ================================================================ sending interactions

    def command(self, name: str, *, guild_id: int | None = None) -> dict:
        """The synced definition of top-level command ``name`` (guild commands win over global)."""
        top = command_path(name)[0]
        pools = ([self.guild_commands.get(guild_id, [])] if guild_id else []) + [self.global_commands]
        for pool in pools:
            for command in pool:
                if command["name"] == top and command.get("type", 1) == 1:
                    return command
        synced = sorted({c["name"] for pool in pools for c in pool})
        raise InteractionBuildError(f"/{top} was not synced to the stand-in (synced: {synced})")

    def _resolve_guild(self, guild: Any) -> StandInGuild | None:
        if guild is _DEFAULT:
            return self.guilds[0] if self.guilds else None
        if guild is None:
            return None
        if isinstance(guild, StandInGuild):
            return guild
        found = self.guild(int(guild))
        if found is None:
            raise InteractionBuildError(f"unknown guild {guild}")
        return found

    def _resolve_channel(self, guild: StandInGuild | None, channel: Any) -> StandInChannel:
        if guild is None:
            raise InteractionBuildError("a guild channel needs a guild")
        if channel is _DEFAULT:
            if not guild.channels:
                raise InteractionBuildError(f"guild {guild.name!r} has no channels")
            return guild.channels[0]
        if isinstance(channel, StandInChannel):
            return channel
        if isinstance(channel, str) and not channel.isdigit():
            return guild.channel_named(channel)
        found = guild.channel(int(channel))
        if found is None:
            _, found = self._channel(int(channel))
        if found is None:
            raise InteractionBuildError(f"unknown channel {channel}")
        return found

    def _resolve_user(self, guild: StandInGuild | None, user: Any) -> StandInUser:
        if isinstance(user, StandInMember):
            return user.user
        if isinstance(user, StandInUser):
            return user
        if user is _DEFAULT:
            if guild is not None:
                members = [m for m in guild.members if m.id != guild.owner_id] or guild.members
                if members:
                    return members[0].user
            users = [u for u in self._users().values() if not u.bot]
            if not users:
                raise InteractionBuildError("no users in the stand-in world")
            return users[0]
        if isinstance(user, str) and not user.isdigit():
            for candidate in self._users().values():
                if candidate.username == user:
                    return candidate
            raise InteractionBuildError(f"no user named {user!r}")
        found = self.user(int(user))
        if found is None:
            raise InteractionBuildError(f"unknown user {user}")
        return found

    async def send_interaction(
        self,
        type: int,
        data: dict | None,
        *,
        guild: Any = _DEFAULT,
        channel: Any = _DEFAULT,
        user: Any = _DEFAULT,
        message: StoredMessage | dict | None = None,
        locale: str = "en-US",
        permissions: int | None = None,
        app_permissions: int | None = None,
        attachment_size_limit: int | None = None,
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Send a raw INTERACTION_CREATE of ``type`` with ``data`` and return its handle.

        ``guild``/``channel``/``user`` accept ids, names or stand-in objects (defaults: the first
        guild, its first channel, its first member who is not the owner — "alice" in the default
        world); ``guild=None`` sends a DM interaction. ``permissions`` overrides the member's
        resolved permissions; ``attachment_size_limit`` the guild's upload limit.
        """
        g = self._resolve_guild(guild)
        u = self._resolve_user(g, user)
        interaction_id = self.snowflakes.next()
        token = secrets.token_urlsafe(64)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": type,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": attachment_size_limit
            or (g.attachment_size_limit if g else DEFAULT_ATTACHMENT_SIZE_LIMIT),
        }
        if data is not None:
            payload["data"] = data
        if g is not None:
            ch = self._resolve_channel(g, channel)
            member = g.member(u.id) or StandInMember(u)
            perms = g.permissions_of(member) if permissions is None else permissions
            bot_perms = self.bot_permissions(g) if app_permissions is None else app_permissions
            payload.update(
                guild_id=str(g.id),
                guild={"id": str(g.id), "locale": g.locale, "features": []},
                guild_locale=g.locale,
                channel_id=str(ch.id),
                channel=ch.payload(g.id) | {"permissions": str(perms)},
                member=member.payload(permissions=perms),
                app_permissions=str(bot_perms),
                authorizing_integration_owners={"0": str(g.id)},
                context=0,
            )
            channel_id: int | None = ch.id
        else:
            dm_id = self._dm_channel_for(u)
            payload.update(
                channel_id=str(dm_id),
                channel={
                    "id": str(dm_id),
                    "type": 1,
                    "last_message_id": None,
                    "flags": 0,
                    "recipients": [u.payload()],
                },
                user=u.payload(),
                app_permissions=str(app_permissions if app_permissions is not None else Permission.BOT),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
            channel_id = dm_id
        if message is not None:
            payload["message"] = (
                message.payload(self.base_url, self._users())
                if isinstance(message, StoredMessage)
                else message
            )
        state = new_state(
            interaction_id=interaction_id,
            token=token,
            type=type,
            payload=payload,
            channel_id=channel_id,
            guild_id=g.id if g else None,
            user=u,
            size_limit=int(payload["attachment_size_limit"]),
        )
        if isinstance(message, StoredMessage):
            state.message_ids.add(message.id)
        self._interactions[interaction_id] = state
        self._by_token[token] = state
        while len(self._interactions) > MAX_INTERACTIONS:  # bounded: forget the oldest
            oldest = self._interactions.pop(next(iter(self._interactions)))
            self._by_token.pop(oldest.token, None)
        mark = self.recorder.mark()
        await self.gateway.wait_until_ready(timeout)
        state.sent_at = time.monotonic()
        await self.gateway.dispatch("INTERACTION_CREATE", payload, timeout=timeout)
        return InteractionHandle(self, state, mark)

    def _dm_channel_for(self, user: StandInUser) -> int:
        for channel_id, recipient in self._dm_channels.items():
            if recipient.id == user.id:
                return channel_id
        channel_id = self.snowflakes.next()
        self._dm_channels[channel_id] = user
        return channel_id

    def _check_can_use(
        self, command: dict, guild: StandInGuild | None, user: StandInUser, permissions: int | None
    ) -> None:
        """What the Discord client enforces before a command can be used at all."""
        if guild is None:
            contexts = command.get("contexts")
            if command.get("dm_permission") is False or (contexts is not None and 1 not in contexts):
                raise InteractionBuildError(
                    f"/{command['name']} is not usable in DMs (pass strict=False to send anyway)"
                )
            return
        required = command.get("default_member_permissions")
        if required is None:
            return
        member = guild.member(user.id) or StandInMember(user)
        have = guild.permissions_of(member) if permissions is None else permissions
        need = int(required)
        if have & Permission.ADMINISTRATOR:
            return
        if need == 0 or have & need != need:
            raise InteractionBuildError(
                f"Discord would not offer /{command['name']} to {user.username} "
                f"(needs permissions {need}); pass strict=False to send anyway"
            )

    async def send_slash(
        self, name: str, options: Mapping[str, Any] | None = None, *, strict: bool = True, **envelope: Any
    ) -> InteractionHandle:
        """Invoke a synced slash command: ``await standin.send_slash("paint", {"prompt": "a cat"})``.

        ``name`` may include subcommands (``"gallery submit"``). Option values are typed from
        the synced definition; users/roles/channels/attachments get ``resolved`` data. See
        :meth:`send_interaction` for the envelope arguments (guild, channel, user, …).
        """
        guild = self._resolve_guild(envelope.get("guild", _DEFAULT))
        command = self.command(name, guild_id=guild.id if guild else None)
        if strict:
            user = self._resolve_user(guild, envelope.get("user", _DEFAULT))
            self._check_can_use(command, guild, user, envelope.get("permissions"))
        data = command_data(self, command, command_path(name), options or {}, guild, strict=strict)
        return await self.send_interaction(APPLICATION_COMMAND, data, **envelope)

    async def send_autocomplete(
        self, name: str, options: Mapping[str, Any], focused: str, **envelope: Any
    ) -> InteractionHandle:
        """Ask for autocomplete of option ``focused`` (its value is the user's partial text)."""
        guild = self._resolve_guild(envelope.get("guild", _DEFAULT))
        command = self.command(name, guild_id=guild.id if guild else None)
        data = command_data(self, command, command_path(name), options, guild, strict=False, focused=focused)
        return await self.send_interaction(AUTOCOMPLETE, data, **envelope)

    async def send_component(
        self,
        custom_id: str,
        *,
        message: int | StoredMessage,
        values: Sequence[str] | None = None,
        strict: bool = True,
        **envelope: Any,
    ) -> InteractionHandle:
        """Click a button (or pick ``values`` in a select) on a message the bot sent.

        The component type is read from the stored message; with ``strict`` the component must
        exist and be enabled (the Discord client can only click what is shown).
        """
        stored = message if isinstance(message, StoredMessage) else self.messages.get(int(message))
        if stored is None:
            raise InteractionBuildError(f"message {message} is not a live message the bot sent")
        component = _find_component(stored.components, custom_id)
        if component is None and strict:
            ids = [c.get("custom_id") for c in _walk(stored.components) if c.get("custom_id")]
            raise InteractionBuildError(f"message {stored.id} has no component {custom_id!r} (has {ids})")
        if component is not None and component.get("disabled") and strict:
            raise InteractionBuildError(f"component {custom_id!r} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": (component or {}).get("type", 2)}
        if data["component_type"] != 2:
            data["values"] = list(values or [])
        envelope.setdefault("guild", stored.guild_id if stored.guild_id else None)
        envelope.setdefault("channel", stored.channel_id)
        return await self.send_interaction(MESSAGE_COMPONENT, data, message=stored, **envelope)

    async def send_modal_submit(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        message: int | StoredMessage | None = None,
        **envelope: Any,
    ) -> InteractionHandle:
        """Submit a modal: ``values`` maps text-input custom ids to what the user typed."""
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()
        ]
        stored = None
        if message is not None:
            stored = message if isinstance(message, StoredMessage) else self.messages.get(int(message))
        return await self.send_interaction(
            MODAL_SUBMIT, {"custom_id": custom_id, "components": rows}, message=stored, **envelope
        )

    # ================================================================ HTTP plumbing

    def _route_table(self) -> list[_Route]:
        table = [
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/users/@me", self._get_me, True),
            ("POST", "/users/@me/channels", self._create_dm, True),
            ("GET", "/users/{user_id}", self._get_user, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/applications/@me", self._get_application, True),
            ("GET", "/applications/{application_id}/commands", self._get_commands, True),
            ("PUT", "/applications/{application_id}/commands", self._put_commands, True),
            ("POST", "/applications/{application_id}/commands", self._post_command, True),
            ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands, True),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands, True),
            ("POST", "/applications/{application_id}/guilds/{guild_id}/commands", self._post_command, True),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands/permissions",
                self._empty_list,
                True,
            ),
            ("GET", "/guilds/{guild_id}", self._get_guild, True),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, True),
            ("GET", "/guilds/{guild_id}/roles", self._get_guild_roles, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, True),
            ("GET", "/channels/{channel_id}", self._get_channel, True),
            ("GET", "/channels/{channel_id}/messages", self._list_messages, True),
            ("POST", "/channels/{channel_id}/messages", self._create_message, True),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, True),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message, True),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message, True),
            ("POST", "/channels/{channel_id}/typing", self._no_content, True),
            (
                "PUT",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._no_content,
                True,
            ),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._no_content,
                True,
            ),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, False),
            ("POST", "/webhooks/{application_id}/{token}", self._followup, False),
            (
                "GET",
                "/webhooks/{application_id}/{token}/messages/{message_id}",
                self._get_webhook_message,
                False,
            ),
            (
                "PATCH",
                "/webhooks/{application_id}/{token}/messages/{message_id}",
                self._edit_webhook_message,
                False,
            ),
            (
                "DELETE",
                "/webhooks/{application_id}/{token}/messages/{message_id}",
                self._delete_webhook_message,
                False,
            ),
        ]
        routes = []
        for method, template, handler, bot_auth in table:
            regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            routes.append(_Route(method, re.compile(regex), f"{method} {template}", handler, bot_auth))
        return routes

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.gateway.handle(request)
        if request.method == "GET" and request.path.startswith("/attachments/"):
            self.attachment_downloads.append(request.path)
            if self.attachment_delay > 0:
                await asyncio.sleep(self.attachment_delay)
            return self._serve_attachment(request)
        prefix = next((p for p in API_PREFIXES if request.path.startswith(p + "/")), None)
        path = request.path[len(prefix) :] if prefix else request.path
        record = self.recorder.new(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=clean_headers(request.headers),
            authorized=request.headers.get("Authorization", "").startswith("Bot "),
        )
        try:
            response = await self._serve(request, record, api=prefix is not None)
        except Exception as exc:  # a fault in the stand-in itself: answer so the client does not retry
            _log.exception("stand-in fault on %s %s", record.method, record.path)
            if len(self.errors) < MAX_PROBLEMS:
                self.errors.append(f"{record.method} {record.path}: {exc!r}")
            record.status, record.response = 400, {"message": f"stand-in fault: {exc!r}", "code": 0}
            response = _json_response(record.response, status=400)
        await self.recorder.add(record)
        return response

    async def _serve(self, request: web.Request, record: RecordedRequest, *, api: bool) -> web.StreamResponse:
        route, params = None, {}
        if api:
            for candidate in self._routes:
                if candidate.method == request.method:
                    m = candidate.pattern.match(record.path)
                    if m:
                        route, params = candidate, m.groupdict()
                        break
        if route is None:
            _log.warning("stand-in: UNKNOWN ROUTE %s %s (answered 404)", record.method, record.path)
            if len(self.unknown_requests) < MAX_PROBLEMS:
                self.unknown_requests.append(record)
            record.status, record.response = 404, {"message": "404: Not Found", "code": 0}
            return _json_response(record.response, status=404)
        record.route, record.params = route.template, params
        length = request.content_length or 0
        if length > self.max_body_bytes:
            record.status, record.response = 413, {"message": "Request entity too large", "code": 40005}
            return _json_response(record.response, status=413)
        await self._read_body(request, record)
        if route.bot_auth and not self.token_matches(request.headers.get("Authorization")):
            record.status, record.response = 401, {"message": "401: Unauthorized", "code": 0}
            return _json_response(record.response, status=401)
        limited = self._rate_limited(record)
        if limited is not None:
            return limited
        headers = self._bucket_headers(record)
        try:
            status, body = await route.handler(record, **params)
        except ApiError as error:
            status, body = error.status, error.body()
        record.status, record.response = status, body
        if status == 204:
            return web.Response(status=204, headers=headers)
        return _json_response(body, status=status, headers=headers)

    async def _read_body(self, request: web.Request, record: RecordedRequest) -> None:
        if not request.can_read_body:
            return
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part is None:
                    break
                if part.filename is not None:
                    data = await part.read(decode=False)
                    record.files.append(
                        RecordedFile(
                            field=part.name or "",
                            filename=part.filename,
                            content_type=part.headers.get("Content-Type", "application/octet-stream"),
                            data=bytes(data),
                        )
                    )
                elif part.name == "payload_json":
                    record.json = json.loads(await part.text())
                else:
                    record.body += await part.read(decode=False)
            return
        raw = await request.read()
        if request.content_type == "application/json" and raw:
            record.json = json.loads(raw)
        else:
            record.body = raw

    def _serve_attachment(self, request: web.Request) -> web.Response:
        parts = request.path.split("/")
        if len(parts) == 5 and parts[3].isdigit():
            attachment = self.messages.attachment(int(parts[3]))
            if attachment is not None and attachment.filename == parts[4]:
                return web.Response(body=attachment.data, content_type=attachment.content_type)
        return web.Response(status=404, text="asset not found")

    # ---------------------------------------------------------------- rate limits

    def _rate_limited(self, record: RecordedRequest) -> web.Response | None:
        for rule in self._forced:
            if rule.remaining > 0 and _matches(rule.match, record):
                rule.remaining -= 1
                return self._too_many(
                    record, rule.retry_after, is_global=rule.is_global, scope=rule.scope, bucket="forced"
                )
        now = time.monotonic()
        for bucket in self._buckets:
            if _matches(bucket.match, record):
                key = _major_key(record)
                start, count = bucket.windows.get(key, (now, 0))
                if now - start >= bucket.per:
                    start, count = now, 0
                if count >= bucket.limit:
                    return self._too_many(
                        record, start + bucket.per - now, is_global=False, scope="user", bucket=bucket.name
                    )
                bucket.windows[key] = (start, count + 1)
        return None

    def _bucket_headers(self, record: RecordedRequest) -> dict[str, str]:
        for bucket in self._buckets:
            if _matches(bucket.match, record):
                start, count = bucket.windows[_major_key(record)]
                reset_after = max(0.0, start + bucket.per - time.monotonic())
                return {
                    "X-RateLimit-Limit": str(bucket.limit),
                    "X-RateLimit-Remaining": str(max(0, bucket.limit - count)),
                    "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                    "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                    "X-RateLimit-Bucket": bucket.name,
                }
        return {}

    def _too_many(
        self, record: RecordedRequest, retry_after: float, *, is_global: bool, scope: str, bucket: str
    ) -> web.Response:
        retry_after = round(max(retry_after, 0.0), 3)
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        headers = {
            "Retry-After": str(max(1, int(-(-retry_after // 1)))),  # whole seconds, rounded up, like Discord
            "X-RateLimit-Limit": "1",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Scope": scope,
            # discord.py treats a 429 without Via as a Cloudflare ban; Discord's answers carry it.
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        record.status, record.response = 429, body
        _log.info("stand-in: 429 for %s %s (retry after %.3fs)", record.method, record.path, retry_after)
        return _json_response(body, status=429, headers=headers)

    # ================================================================ REST handlers

    def _check_application(self, application_id: str) -> None:
        if application_id != str(self.application_id):
            raise ApiError(403, 50001, "Missing Access")

    async def _no_content(self, record: RecordedRequest, **_: str) -> tuple[int, Any]:
        return 204, None

    async def _empty_list(self, record: RecordedRequest, **_: str) -> tuple[int, Any]:
        return 200, []

    async def _get_gateway(self, record: RecordedRequest) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, record: RecordedRequest) -> tuple[int, Any]:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    async def _get_me(self, record: RecordedRequest) -> tuple[int, Any]:
        return 200, self.bot_user.payload() | {
            "verified": True,
            "mfa_enabled": False,
            "email": None,
            "locale": "en-US",
        }

    async def _get_user(self, record: RecordedRequest, user_id: str) -> tuple[int, Any]:
        user = self.user(int(user_id)) if user_id.isdigit() else None
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return 200, user.payload()

    async def _create_dm(self, record: RecordedRequest) -> tuple[int, Any]:
        recipient = str((record.json or {}).get("recipient_id", ""))
        user = self.user(int(recipient)) if recipient.isdigit() else None
        if user is None or user.bot:
            raise form_error("recipient_id", "Value is not a valid user")
        channel_id = self._dm_channel_for(user)
        return 200, {
            "id": str(channel_id),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [user.payload()],
        }

    async def _get_application(self, record: RecordedRequest) -> tuple[int, Any]:
        owner = self.user(self.guilds[0].owner_id) if self.guilds else None
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user.global_name or self.bot_user.username,
            "icon": None,
            "description": "Latent Painter (stand-in)",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": self.application_flags,
            "owner": (owner or self.bot_user).payload(),
            "team": None,
            "bot": self.bot_user.payload(),
            "approximate_guild_count": len(self.guilds),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
            "install_params": {
                "scopes": ["bot", "applications.commands"],
                "permissions": str(Permission.BOT),
            },
            "integration_types_config": {"0": {}},
        }

    # ---------------------------------------------------------------- application commands

    def _command_pool(self, guild_id: str | None) -> tuple[int | None, list[dict]]:
        if guild_id is None:
            return None, self.global_commands
        gid = int(guild_id)
        if self.guild(gid) is None:
            raise ApiError(403, 50001, "Missing Access")
        return gid, self.guild_commands.setdefault(gid, [])

    def _store_command(self, guild_id: int | None, body: dict) -> dict:
        kind = int(body.get("type", 1))
        key = (guild_id, kind, body["name"])
        command_id = self._command_ids.setdefault(key, self.snowflakes.next())  # ids survive re-syncs
        stored = {
            "id": str(command_id),
            "application_id": str(self.application_id),
            "version": str(self.snowflakes.next()),
            "type": kind,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            **body,
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    async def _get_commands(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> tuple[int, Any]:
        self._check_application(application_id)
        _, pool = self._command_pool(guild_id)
        return 200, pool

    async def _put_commands(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> tuple[int, Any]:
        self._check_application(application_id)
        gid, _ = self._command_pool(guild_id)
        body = record.json
        if not isinstance(body, list):
            raise form_error("_root", "Must be an array")
        validate_commands(body)
        stored = [self._store_command(gid, c) for c in body]
        if gid is None:
            self.global_commands = stored
        else:
            self.guild_commands[gid] = stored
        return 200, stored

    async def _post_command(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> tuple[int, Any]:
        self._check_application(application_id)
        gid, pool = self._command_pool(guild_id)
        body = record.json or {}
        validate_commands([body])
        stored = self._store_command(gid, body)
        pool[:] = [c for c in pool if (c["name"], c.get("type", 1)) != (stored["name"], stored["type"])] + [
            stored
        ]
        return 201, stored

    # ---------------------------------------------------------------- guilds, channels

    def _guild_or_404(self, guild_id: str) -> StandInGuild:
        guild = self.guild(int(guild_id)) if guild_id.isdigit() else None
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    async def _get_guild(self, record: RecordedRequest, guild_id: str) -> tuple[int, Any]:
        guild = self._guild_or_404(guild_id)
        payload = guild.payload(bot_member=self.bot_member(guild), include_members=False)
        for key in (
            "channels",
            "members",
            "threads",
            "voice_states",
            "presences",
            "joined_at",
            "large",
            "lazy",
        ):
            payload.pop(key, None)
        return 200, payload

    async def _get_guild_channels(self, record: RecordedRequest, guild_id: str) -> tuple[int, Any]:
        guild = self._guild_or_404(guild_id)
        return 200, [c.payload(guild.id) for c in guild.channels]

    async def _get_guild_roles(self, record: RecordedRequest, guild_id: str) -> tuple[int, Any]:
        return 200, [r.payload() for r in self._guild_or_404(guild_id).roles]

    async def _get_member(self, record: RecordedRequest, guild_id: str, user_id: str) -> tuple[int, Any]:
        guild = self._guild_or_404(guild_id)
        member = self.bot_member(guild) if user_id == str(self.bot_user.id) else guild.member(int(user_id))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return 200, member.payload()

    def _text_channel(self, channel_id: str) -> tuple[StandInGuild | None, int]:
        cid = int(channel_id) if channel_id.isdigit() else 0
        guild, channel = self._channel(cid)
        if channel is None and cid not in self._dm_channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return guild, cid

    async def _get_channel(self, record: RecordedRequest, channel_id: str) -> tuple[int, Any]:
        guild, cid = self._text_channel(channel_id)
        if guild is None:
            user = self._dm_channels[cid]
            return 200, {
                "id": str(cid),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user.payload()],
            }
        channel = guild.channel(cid)
        assert channel is not None
        return 200, channel.payload(guild.id)

    def _render(self, message: StoredMessage) -> dict:
        return message.payload(self.base_url, self._users())

    def _channel_message(self, channel_id: str, message_id: str) -> StoredMessage:
        _, cid = self._text_channel(channel_id)
        message = self.messages.get(int(message_id)) if message_id.isdigit() else None
        if message is None or message.channel_id != cid or message.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    async def _list_messages(self, record: RecordedRequest, channel_id: str) -> tuple[int, Any]:
        _, cid = self._text_channel(channel_id)
        limit = max(1, min(100, int(record.query.get("limit", 50))))
        found = [m for m in self.messages.in_channel(cid) if not m.ephemeral]
        if "before" in record.query:
            found = [m for m in found if m.id < int(record.query["before"])]
        if "after" in record.query:
            found = [m for m in found if m.id > int(record.query["after"])]
            return 200, [self._render(m) for m in found[:limit]][::-1]
        return 200, [self._render(m) for m in reversed(found)][:limit]

    async def _create_message(self, record: RecordedRequest, channel_id: str) -> tuple[int, Any]:
        guild, cid = self._text_channel(channel_id)
        body = record.json if isinstance(record.json, dict) else {}
        limit = guild.attachment_size_limit if guild else DEFAULT_ATTACHMENT_SIZE_LIMIT
        if guild is not None:
            perms = self.bot_permissions(guild)
            if not perms & Permission.SEND_MESSAGES or (record.files and not perms & Permission.ATTACH_FILES):
                raise ApiError(403, 50013, "Missing Permissions")
        elif not self._dm_channels[cid].accepts_dms:
            # The recipient's privacy settings (or a block) keep the bot out of their DMs.
            raise ApiError(403, 50007, "Cannot send messages to this user")
        validate_message_body(body, record.files, size_limit=limit, creating=True)
        flags = int(body.get("flags") or 0) & ~(
            FLAG_EPHEMERAL | FLAG_LOADING
        )  # not settable on channel messages
        message = self.messages.create(
            channel_id=cid,
            guild=guild,
            author=self.bot_user,
            body=body,
            files=record.files,
            flags=flags,
            type=19 if body.get("message_reference") else 0,
            can_mention_everyone=self._may_ping_everyone(guild),
        )
        return 200, self._render(message)

    async def _get_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> tuple[int, Any]:
        return 200, self._render(self._channel_message(channel_id, message_id))

    async def _edit_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> tuple[int, Any]:
        message = self._channel_message(channel_id, message_id)
        if message.author.id != self.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body = record.json if isinstance(record.json, dict) else {}
        guild = self.guild(message.guild_id) if message.guild_id else None
        limit = guild.attachment_size_limit if guild else DEFAULT_ATTACHMENT_SIZE_LIMIT
        validate_message_body(body, record.files, size_limit=limit, creating=False)
        return 200, self._render(self._apply_edit(message, body, record.files))

    async def _delete_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> tuple[int, Any]:
        self._channel_message(channel_id, message_id).deleted = True
        return 204, None

    def _may_ping_everyone(self, guild: StandInGuild | None) -> bool:
        return guild is not None and bool(self.bot_permissions(guild) & Permission.MENTION_EVERYONE)

    def _apply_edit(self, message: StoredMessage, body: dict, files: list[RecordedFile]) -> StoredMessage:
        was_loading = message.loading
        before = (message.content, list(message.embeds), list(message.attachments), list(message.components))
        self.messages.edit(message, body, files)
        if not (message.content or message.embeds or message.attachments or message.components):
            message.content, message.embeds, message.attachments, message.components = before
            if was_loading:
                message.flags |= FLAG_LOADING
            raise ApiError(400, 50006, "Cannot send an empty message")
        return message

    # ---------------------------------------------------------------- interactions

    def _state_for_callback(self, interaction_id: str, token: str) -> InteractionState:
        state = self._interactions.get(int(interaction_id)) if interaction_id.isdigit() else None
        if state is None or not secrets.compare_digest(state.token, token):
            raise ApiError(404, 10062, "Unknown interaction")
        if state.acknowledged:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        late = (
            self.callback_deadline is not None and time.monotonic() - state.sent_at > self.callback_deadline
        )
        if state.expired or late:
            raise ApiError(404, 10062, "Unknown interaction")
        return state

    def _interaction_message(
        self, state: InteractionState, body: dict, files: list[RecordedFile], flags: int
    ) -> StoredMessage:
        guild = self.guild(state.guild_id) if state.guild_id else None
        metadata = {
            "id": str(state.id),
            "type": state.type,
            "user": state.user.payload(),
            "authorizing_integration_owners": state.payload.get("authorizing_integration_owners", {}),
        }
        if state.original_id is not None:
            metadata["original_response_message_id"] = str(state.original_id)
        message = self.messages.create(
            channel_id=state.channel_id or 0,
            guild=guild,
            author=self.bot_user,
            body=body,
            files=files,
            flags=flags,
            type=20 if state.type == APPLICATION_COMMAND and state.original_id is None else 0,
            webhook_id=self.application_id,
            application_id=self.application_id,
            interaction_metadata=metadata,
            interaction_token=state.token,
            can_mention_everyone=self._may_ping_everyone(guild),
        )
        state.message_ids.add(message.id)
        return message

    def _interacted_message(self, state: InteractionState) -> StoredMessage:
        raw = state.payload.get("message")
        message = self.messages.get(int(raw["id"])) if raw else None
        if message is None:
            raise ApiError(
                400,
                50035,
                "Invalid Form Body",
                {
                    "type": {
                        "_errors": [
                            {
                                "code": "INTERACTION_NO_MESSAGE",
                                "message": "This interaction has no message to update",
                            }
                        ]
                    }
                },
            )
        return message

    async def _callback(self, record: RecordedRequest, interaction_id: str, token: str) -> tuple[int, Any]:
        state = self._state_for_callback(interaction_id, token)
        body = record.json if isinstance(record.json, dict) else {}
        kind = body.get("type")
        if kind not in ALLOWED_CALLBACKS.get(state.type, set()):
            raise form_error("type", f"Callback type {kind!r} is not valid for interaction type {state.type}")
        data = body.get("data") or {}
        message: StoredMessage | None = None
        if kind == 4:
            validate_message_body(data, record.files, size_limit=state.size_limit, creating=True)
            flags = int(data.get("flags") or 0)
            message = self._interaction_message(state, data, record.files, flags)
            state.original_id = message.id
        elif kind == 5:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._interaction_message(state, {}, [], flags)
            state.original_id = message.id
        elif kind in (6, 7):
            target = self._interacted_message(state)
            if kind == 7:
                validate_message_body(data, record.files, size_limit=state.size_limit, creating=False)
                self._apply_edit(target, data, record.files)
            state.original_id = target.id
            message = target if kind == 7 else None
        elif kind == 8:
            state.autocomplete_choices = validate_choices(data)
        elif kind == 9:
            validate_modal(data)
            state.modal = data
        state.acknowledged = True
        state.callback_type = kind
        if record.query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        result: dict[str, Any] = {"interaction": {"id": str(state.id), "type": state.type}}
        if message is not None:
            result["interaction"].update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            result["resource"] = {"type": kind, "message": self._render(message)}
        elif kind is not None:
            result["resource"] = {"type": kind}
        return 200, result

    def _state_for_webhook(self, application_id: str, token: str) -> InteractionState:
        if application_id != str(self.application_id):
            raise ApiError(404, 10015, "Unknown Webhook")
        state = self._by_token.get(token)
        if state is None:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if state.expired or time.monotonic() - state.sent_at > self.token_lifetime:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not state.acknowledged:
            raise ApiError(404, 10015, "Unknown Webhook")
        return state

    def _webhook_message(self, state: InteractionState, message_id: str) -> StoredMessage:
        if message_id == "@original":
            target = state.original_id
        else:
            target = (
                int(message_id) if message_id.isdigit() and int(message_id) in state.message_ids else None
            )
        message = self.messages.get(target) if target is not None else None
        if message is None:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    async def _followup(self, record: RecordedRequest, application_id: str, token: str) -> tuple[int, Any]:
        state = self._state_for_webhook(application_id, token)
        body = record.json if isinstance(record.json, dict) else {}
        validate_message_body(body, record.files, size_limit=state.size_limit, creating=True)
        original = self.messages.get(state.original_id) if state.original_id is not None else None
        if original is not None and original.loading and original.interaction_token == state.token:
            # Discord: the first follow-up after a deferral replaces the "thinking…" message,
            # which keeps the deferral's ephemeral flag.
            self.messages.edit(
                original,
                {k: v for k, v in body.items() if k != "flags"}
                | {"attachments": body.get("attachments") or []},
                record.files,
            )
            message = original
        else:
            message = self._interaction_message(state, body, record.files, int(body.get("flags") or 0))
        if record.query.get("wait") in ("1", "true", "True"):
            return 200, self._render(message)
        return 204, None

    async def _get_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> tuple[int, Any]:
        state = self._state_for_webhook(application_id, token)
        return 200, self._render(self._webhook_message(state, message_id))

    async def _edit_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> tuple[int, Any]:
        state = self._state_for_webhook(application_id, token)
        message = self._webhook_message(state, message_id)
        body = record.json if isinstance(record.json, dict) else {}
        validate_message_body(body, record.files, size_limit=state.size_limit, creating=False)
        return 200, self._render(self._apply_edit(message, body, record.files))

    async def _delete_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> tuple[int, Any]:
        state = self._state_for_webhook(application_id, token)
        self._webhook_message(state, message_id).deleted = True
        return 204, None


# ==================================================================== helpers


def _json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer with exactly ``Content-Type: application/json``, as Discord sends it
    (discord.py only parses bodies whose content type is that exact string)."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def _major_key(record: RecordedRequest) -> str:
    """Discord's buckets are per major parameter (channel, guild, webhook/token)."""
    p = record.params
    return p.get("channel_id") or p.get("guild_id") or p.get("token") or ""


def _walk(components: list[dict]) -> Iterator[dict]:
    for component in components:
        yield component
        children = component.get("components")
        if isinstance(children, list):
            yield from _walk(children)
        if isinstance(component.get("accessory"), dict):
            yield component["accessory"]
        if isinstance(component.get("component"), dict):
            yield component["component"]


def _find_component(components: list[dict], custom_id: str) -> dict | None:
    return next((c for c in _walk(components) if c.get("custom_id") == custom_id), None)


def validate_choices(data: dict) -> list[dict]:
    """Autocomplete results: at most 25 choices, names 1-100 chars, string values at most 100."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise form_error("data.choices", "This field is required", "BASE_TYPE_REQUIRED")
    if len(choices) > 25:
        raise form_error("data.choices", "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    for i, choice in enumerate(choices):
        name, value = choice.get("name"), choice.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error(
                f"data.choices.{i}.name", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
            )
        if isinstance(value, str) and len(value) > 100:
            raise form_error(
                f"data.choices.{i}.value", "Must be 100 or fewer in length.", "BASE_TYPE_MAX_LENGTH"
            )
        if value is None:
            raise form_error(f"data.choices.{i}.value", "This field is required", "BASE_TYPE_REQUIRED")
    return choices


def validate_modal(data: dict) -> None:
    """A modal needs a custom id, a title of at most 45 characters and 1-5 components."""
    if not isinstance(data.get("custom_id"), str) or not 1 <= len(data["custom_id"]) <= 100:
        raise form_error("data.custom_id", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH")
    if not isinstance(data.get("title"), str) or not 1 <= len(data["title"]) <= 45:
        raise form_error("data.title", "Must be between 1 and 45 in length.", "BASE_TYPE_BAD_LENGTH")
    components = data.get("components")
    if not isinstance(components, list) or not 1 <= len(components) <= 5:
        raise form_error("data.components", "Must be between 1 and 5 in length.", "BASE_TYPE_BAD_LENGTH")


def validate_commands(commands: list[Any]) -> None:
    """The checks Discord applies to a command sync (names, descriptions, option order, choices)."""
    seen: set[tuple[int, str]] = set()
    for i, command in enumerate(commands):
        if not isinstance(command, dict):
            raise form_error(str(i), "Must be an object")
        kind = int(command.get("type", 1))
        name = command.get("name")
        if not isinstance(name, str) or not name:
            raise form_error(f"{i}.name", "This field is required", "BASE_TYPE_REQUIRED")
        if kind == 1:
            if not _NAME.match(name) or name != name.lower():
                raise form_error(f"{i}.name", "Command name is invalid", "APPLICATION_COMMAND_INVALID_NAME")
            description = command.get("description")
            if not isinstance(description, str) or not 1 <= len(description) <= 100:
                raise form_error(
                    f"{i}.description", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
                )
            _validate_options(command.get("options") or [], f"{i}.options")
        elif len(name) > 32:
            raise form_error(f"{i}.name", "Must be between 1 and 32 in length.", "BASE_TYPE_BAD_LENGTH")
        if (kind, name) in seen:
            raise form_error(
                f"{i}.name", "Application command names must be unique", "APPLICATION_COMMANDS_DUPLICATE_NAME"
            )
        seen.add((kind, name))
    if sum(1 for c in commands if int(c.get("type", 1)) == 1) > 100:
        raise form_error("_root", "Must be 100 or fewer in length.", "BASE_TYPE_MAX_LENGTH")


def _validate_options(options: list[dict], where: str) -> None:
    if len(options) > 25:
        raise form_error(where, "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    names: set[str] = set()
    optional_seen = False
    for j, option in enumerate(options):
        at = f"{where}.{j}"
        name, description = option.get("name"), option.get("description")
        if not isinstance(name, str) or not _NAME.match(name) or name != name.lower():
            raise form_error(f"{at}.name", "Command name is invalid", "APPLICATION_COMMAND_INVALID_NAME")
        if name in names:
            raise form_error(
                f"{at}.name", "Option names must be unique", "APPLICATION_COMMAND_OPTIONS_DUPLICATE_NAME"
            )
        names.add(name)
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            raise form_error(
                f"{at}.description", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
            )
        if option.get("type") in (1, 2):
            _validate_options(option.get("options") or [], f"{at}.options")
            continue
        if option.get("required"):
            if optional_seen:
                raise form_error(
                    at,
                    "Required options must be placed before non-required options",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                )
        else:
            optional_seen = True
        choices = option.get("choices") or []
        if len(choices) > 25:
            raise form_error(f"{at}.choices", "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        if choices and option.get("autocomplete"):
            raise form_error(
                f"{at}.autocomplete",
                "Autocomplete cannot be set with choices",
                "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID",
            )
        for k, choice in enumerate(choices):
            if not isinstance(choice.get("name"), str) or not 1 <= len(choice["name"]) <= 100:
                raise form_error(
                    f"{at}.choices.{k}.name", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
                )
            # A string choice's value has the same limit as its name (a long checkpoint path
            # as a value gets the whole sync refused).
            value = choice.get("value")
            if value is None:
                raise form_error(f"{at}.choices.{k}.value", "This field is required", "BASE_TYPE_REQUIRED")
            if isinstance(value, str) and len(value) > 100:
                raise form_error(
                    f"{at}.choices.{k}.value", "Must be 100 or fewer in length.", "BASE_TYPE_MAX_LENGTH"
                )
