"""INTERACTION_CREATE payloads, built from the commands the bot synced, and handles to await replies.

A slash command is only sendable once the bot has synced it to the stand-in (``PUT
/applications/{id}/commands`` or the guild variant), and option values are typed from that
synced definition, exactly as the Discord client would send them. ``strict`` (the default)
also applies the checks the Discord client makes before sending (required options, choices,
ranges, lengths); pass ``strict=False`` to send what a modified client could send.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .recording import RecordedRequest
from .world import StandInChannel, StandInGuild, StandInMember, StandInRole, StandInUser

if TYPE_CHECKING:
    from .messages import StoredMessage
    from .server import DiscordStandIn

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Callback types the API accepts for each interaction type.
ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {4, 5, 9},
    MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
    AUTOCOMPLETE: {8},
    MODAL_SUBMIT: {4, 5, 6, 7},
}
# Option types.
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11


class InteractionBuildError(ValueError):
    """The test asked for an interaction the Discord client could not send (message says why)."""


@dataclass
class StandInAttachment:
    """A file a user attaches to an attachment option (``{"image": StandInAttachment(name, data)}``).

    ``served=False`` makes its URL answer 404, as an expired or deleted CDN file does.
    """

    filename: str
    data: bytes
    served: bool = True


@dataclass
class InteractionState:
    """What the stand-in knows about one interaction it sent (the API's side of it)."""

    id: int
    token: str
    type: int
    payload: dict
    sent_at: float
    channel_id: int | None
    guild_id: int | None
    user: StandInUser
    size_limit: int
    acknowledged: bool = False
    callback_type: int | None = None
    original_id: int | None = None  # the @original message once there is one
    message_ids: set[int] = field(default_factory=set)  # messages this token may edit/delete
    expired: bool = False
    modal: dict | None = None  # the modal the bot opened (callback type 9)
    autocomplete_choices: list[dict] | None = None


def _snowflake_of(value: Any) -> int:
    if isinstance(value, StandInMember | StandInUser | StandInChannel | StandInRole):
        return value.id
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise InteractionBuildError(f"expected an id or a stand-in object, got {value!r}")


def command_path(name: str) -> list[str]:
    """``"gallery submit"`` → ``["gallery", "submit"]`` (slashes and extra spaces ignored)."""
    parts = name.strip().lstrip("/").split()
    if not parts:
        raise InteractionBuildError("empty command name")
    return parts


class OptionBuilder:
    """Turns ``{"prompt": "a cat", "steps": 20}`` into typed interaction options plus ``resolved``."""

    def __init__(self, standin: DiscordStandIn, guild: StandInGuild | None, *, strict: bool) -> None:
        self._standin = standin
        self._guild = guild
        self._strict = strict
        self.resolved: dict[str, dict] = {}

    def _resolve_user(self, user_id: int) -> None:
        user = self._standin.user(user_id)
        if user is None:
            raise InteractionBuildError(f"unknown user id {user_id}")
        self.resolved.setdefault("users", {})[str(user_id)] = user.payload()
        member = self._guild.member(user_id) if self._guild else None
        if member is not None:
            perms = self._guild.permissions_of(member) if self._guild else 0
            self.resolved.setdefault("members", {})[str(user_id)] = member.payload(
                with_user=False, permissions=perms
            )

    def _value(self, definition: dict, value: Any, where: str) -> Any:
        kind = definition["type"]
        if kind == STRING:
            if not isinstance(value, str):
                raise InteractionBuildError(f"{where}: expected text, got {value!r}")
            if self._strict:
                low, high = definition.get("min_length", 0), definition.get("max_length", 6000)
                if not low <= len(value) <= high:
                    raise InteractionBuildError(f"{where}: length {len(value)} outside {low}..{high}")
            return value
        if kind in (INTEGER, NUMBER):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InteractionBuildError(f"{where}: expected a number, got {value!r}")
            if kind == INTEGER and not float(value).is_integer():
                raise InteractionBuildError(f"{where}: expected an integer, got {value!r}")
            if self._strict:
                low, high = definition.get("min_value"), definition.get("max_value")
                if (low is not None and value < low) or (high is not None and value > high):
                    raise InteractionBuildError(f"{where}: {value} outside {low}..{high}")
            return int(value) if kind == INTEGER else float(value)
        if kind == BOOLEAN:
            if not isinstance(value, bool):
                raise InteractionBuildError(f"{where}: expected True/False, got {value!r}")
            return value
        if kind in (USER, MENTIONABLE) and not isinstance(value, StandInRole):
            if isinstance(value, str) and not value.isdigit():
                value = self._standin._resolve_user(self._guild, value)  # a username
            user_id = _snowflake_of(value)
            if kind == MENTIONABLE and self._guild and self._guild.role(user_id):
                self.resolved.setdefault("roles", {})[str(user_id)] = self._guild.role(user_id).payload()
            else:
                self._resolve_user(user_id)
            return str(user_id)
        if kind in (ROLE, MENTIONABLE):
            role_id = _snowflake_of(value)
            role = self._guild.role(role_id) if self._guild else None
            if role is None:
                raise InteractionBuildError(f"{where}: unknown role {role_id}")
            self.resolved.setdefault("roles", {})[str(role_id)] = role.payload()
            return str(role_id)
        if kind == CHANNEL:
            if isinstance(value, str) and not value.isdigit() and self._guild is not None:
                value = self._guild.channel_named(value)
            channel_id = _snowflake_of(value)
            channel = self._guild.channel(channel_id) if self._guild else None
            if channel is None:
                raise InteractionBuildError(f"{where}: unknown channel {channel_id}")
            data = channel.payload(self._guild.id) | {"permissions": str(2**53 - 1)}  # type: ignore[union-attr]
            self.resolved.setdefault("channels", {})[str(channel_id)] = data
            return str(channel_id)
        if kind == ATTACHMENT:
            if not isinstance(value, StandInAttachment):
                raise InteractionBuildError(f"{where}: expected StandInAttachment, got {value!r}")
            stored = self._standin.store_user_attachment(value)
            self.resolved.setdefault("attachments", {})[str(stored.id)] = stored.payload(
                self._standin.base_url, ephemeral=True
            )
            return str(stored.id)
        raise InteractionBuildError(f"{where}: option type {kind} is not supported by the stand-in")

    def options(
        self, definitions: list[dict], values: Mapping[str, Any], where: str, *, focused: str | None = None
    ) -> list[dict]:
        """Typed options for one command level, in the order of the definition."""
        by_name = {d["name"]: d for d in definitions}
        unknown = set(values) - set(by_name)
        if unknown:
            raise InteractionBuildError(
                f"{where}: unknown option(s) {sorted(unknown)}; the command has {sorted(by_name)}"
            )
        out = []
        for definition in definitions:
            name = definition["name"]
            if name not in values:
                if self._strict and definition.get("required") and focused is None:
                    raise InteractionBuildError(f"{where}: required option {name!r} missing")
                continue
            if name == focused:
                # The Discord client sends the user's partial input as text, whatever the type.
                out.append(
                    {"name": name, "type": definition["type"], "value": str(values[name]), "focused": True}
                )
                continue
            value = self._value(definition, values[name], f"{where} {name}")
            choices = definition.get("choices")
            if self._strict and choices and value not in [c["value"] for c in choices]:
                raise InteractionBuildError(
                    f"{where} {name}: {value!r} is not one of the choices {[c['value'] for c in choices]}"
                )
            out.append({"name": name, "type": definition["type"], "value": value})
        return out


def command_data(
    standin: DiscordStandIn,
    command: dict,
    path: list[str],
    values: Mapping[str, Any],
    guild: StandInGuild | None,
    *,
    strict: bool,
    focused: str | None = None,
) -> dict:
    """The ``data`` of an APPLICATION_COMMAND / AUTOCOMPLETE interaction for a synced command."""
    builder = OptionBuilder(standin, guild, strict=strict)
    definitions = command.get("options") or []
    where = "/" + path[0]
    chain: list[dict] = []
    for part in path[1:]:
        sub = next(
            (d for d in definitions if d["name"] == part and d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)),
            None,
        )
        if sub is None:
            names = [d["name"] for d in definitions if d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)]
            raise InteractionBuildError(f"{where}: no subcommand {part!r}; synced: {names}")
        chain.append({"name": part, "type": sub["type"]})
        definitions = sub.get("options") or []
        where += " " + part
    if any(d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for d in definitions):
        raise InteractionBuildError(f"{where} is a group; name a subcommand")
    if focused is not None and focused not in {d["name"] for d in definitions}:
        raise InteractionBuildError(f"{where}: focused option {focused!r} is not an option of the command")
    options = builder.options(definitions, values, where, focused=focused)
    for level in reversed(chain):
        level["options"] = options
        options = [level]
    data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": command.get("type", 1)}
    if options:
        data["options"] = options
    if builder.resolved:
        data["resolved"] = builder.resolved
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    return data


class InteractionHandle:
    """A sent interaction: await what the bot answered, or expire its token.

    Every wait has a ``timeout`` (seconds) and raises ``TimeoutError`` listing what the bot sent
    instead, so a failing test explains itself.
    """

    def __init__(self, standin: DiscordStandIn, state: InteractionState, mark: int) -> None:
        self._standin = standin
        self.state = state
        self._mark = mark

    @property
    def id(self) -> int:
        return self.state.id

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def payload(self) -> dict:
        """The INTERACTION_CREATE payload that was sent."""
        return self.state.payload

    @property
    def sent_at(self) -> float:
        """``time.monotonic()`` when the event was written to the gateway."""
        return self.state.sent_at

    def delay(self, request: RecordedRequest) -> float:
        """Seconds between sending the interaction and ``request`` arriving."""
        return request.at - self.state.sent_at

    def _mine(self, request: RecordedRequest) -> bool:
        return request.token == self.state.token

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every recorded request made with this interaction's token (429s included), oldest first."""
        return self._standin.recorder.matching(self._mine, since=self._mark, include_rate_limited=True)

    async def wait_for(
        self,
        predicate: Any = None,
        *,
        timeout: float = 10.0,
        count: int = 1,
        include_rate_limited: bool = False,
    ) -> list[RecordedRequest]:
        """Wait for ``count`` requests with this token that satisfy ``predicate``."""
        return await self._standin.recorder.wait_for(
            lambda r: self._mine(r) and (predicate is None or predicate(r)),
            timeout=timeout,
            since=self._mark,
            count=count,
            include_rate_limited=include_rate_limited,
        )

    async def response(self, *, timeout: float = 10.0) -> RecordedRequest:
        """The interaction callback (``POST /interactions/{id}/{token}/callback``) the bot made first."""
        hits = await self.wait_for(lambda r: r.route.endswith("/callback"), timeout=timeout)
        return hits[0]

    async def followup(self, index: int = 0, *, timeout: float = 10.0) -> RecordedRequest:
        """The ``index``-th follow-up (``POST /webhooks/{app}/{token}``), counting from 0."""
        hits = await self.wait_for(
            lambda r: r.method == "POST" and r.route == "POST /webhooks/{application_id}/{token}",
            timeout=timeout,
            count=index + 1,
        )
        return hits[index]

    async def edit(self, index: int = 0, *, timeout: float = 10.0) -> RecordedRequest:
        """The ``index``-th edit of the original response (``PATCH .../messages/@original``)."""
        hits = await self.wait_for(
            lambda r: r.method == "PATCH" and r.path.endswith("/messages/@original"),
            timeout=timeout,
            count=index + 1,
        )
        return hits[index]

    async def choices(self, *, timeout: float = 10.0) -> list[dict]:
        """The autocomplete choices the bot answered with (callback type 8)."""
        response = await self.response(timeout=timeout)
        if response.callback_type != 8:
            raise AssertionError(f"expected an autocomplete result (type 8), got {response.json!r}")
        return list((response.json.get("data") or {}).get("choices") or [])

    def expire(self) -> None:
        """Make this interaction's token invalid from now on (as after Discord's 15 minutes)."""
        self.state.expired = True

    @property
    def original(self) -> StoredMessage | None:
        """The original response message as it is now (None before there is one)."""
        if self.state.original_id is None:
            return None
        return self._standin.messages.get(self.state.original_id)

    @property
    def messages(self) -> list[StoredMessage]:
        """Live messages created with this token (original response and follow-ups), oldest first."""
        found = [self._standin.messages.get(i) for i in sorted(self.state.message_ids)]
        return [m for m in found if m is not None and m.interaction_token == self.state.token]

    async def submit_modal(self, values: Mapping[str, str], *, timeout: float = 10.0) -> InteractionHandle:
        """Fill in the modal the bot opened (callback type 9) and submit it as the same user."""
        await self.wait_for(lambda r: r.callback_type == 9 and r.ok, timeout=timeout)
        modal = self.state.modal or {}
        return await self._standin.send_modal_submit(
            modal.get("custom_id", ""),
            values,
            user=self.state.user.id,
            channel=self.state.channel_id,
            guild=self.state.guild_id,
        )


def new_state(
    *,
    interaction_id: int,
    token: str,
    type: int,
    payload: dict,
    channel_id: int | None,
    guild_id: int | None,
    user: StandInUser,
    size_limit: int,
) -> InteractionState:
    """The stand-in's record of an interaction it is about to send."""
    return InteractionState(
        id=interaction_id,
        token=token,
        type=type,
        payload=payload,
        sent_at=time.monotonic(),
        channel_id=channel_id,
        guild_id=guild_id,
        user=user,
        size_limit=size_limit,
    )
