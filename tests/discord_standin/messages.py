"""Messages as Discord keeps them: validation of what the bot sends, mentions, attachments, storage.

The checks mirror the real API's limits (content length, embeds, components, empty messages,
file sizes), so a bot that passes against the stand-in does not fail on Discord for these
reasons. Errors are raised as :class:`ApiError` with Discord's status, code and message.
"""

from __future__ import annotations

import mimetypes
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .recording import RecordedFile
from .world import StandInGuild, StandInUser

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_FILES = 10
FLAG_EPHEMERAL = 64
FLAG_LOADING = 128
_EXTRA_TYPES = {".webp": "image/webp", ".mp4": "video/mp4", ".gif": "image/gif", ".png": "image/png"}


class ApiError(Exception):
    """An error answer of the API: HTTP status plus Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict:
        """The JSON body Discord sends with this error."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def form_error(field_path: str, message: str, code: str = "BASE_TYPE_INVALID") -> ApiError:
    """A 400 "Invalid Form Body" (50035) naming the offending field, like Discord's."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_path.split(".")):
        errors = {part: errors}
    return ApiError(400, 50035, "Invalid Form Body", errors)


def timestamp() -> str:
    """Now, as Discord writes timestamps."""
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------- validation


def validate_embeds(embeds: Any) -> None:
    """Discord's embed limits: 10 embeds, title 256, description 4096, 25 fields, 6000 in total."""
    if not isinstance(embeds, list):
        raise form_error("embeds", "Must be an array")
    if len(embeds) > MAX_EMBEDS:
        raise form_error("embeds", f"Must be {MAX_EMBEDS} or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    total = 0
    for i, embed in enumerate(embeds):
        limits = {"title": 256, "description": 4096}
        for key, limit in limits.items():
            text = embed.get(key) or ""
            total += len(text)
            if len(text) > limit:
                raise form_error(
                    f"embeds.{i}.{key}", f"Must be {limit} or fewer in length.", "BASE_TYPE_MAX_LENGTH"
                )
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise form_error(f"embeds.{i}.fields", "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        for j, f in enumerate(fields):
            name, value = f.get("name") or "", f.get("value") or ""
            if not name or not value:
                raise form_error(f"embeds.{i}.fields.{j}", "This field is required", "BASE_TYPE_REQUIRED")
            if len(name) > 256 or len(value) > 1024:
                raise form_error(
                    f"embeds.{i}.fields.{j}", "Must be 1024 or fewer in length.", "BASE_TYPE_MAX_LENGTH"
                )
            total += len(name) + len(value)
        footer = (embed.get("footer") or {}).get("text") or ""
        author = (embed.get("author") or {}).get("name") or ""
        if len(footer) > 2048 or len(author) > 256:
            raise form_error(f"embeds.{i}", "Footer or author too long.", "BASE_TYPE_MAX_LENGTH")
        total += len(footer) + len(author)
    if total > MAX_EMBED_TOTAL:
        raise form_error("embeds", "Embed size exceeds maximum size of 6000", "MAX_EMBED_SIZE_EXCEEDED")


def validate_components(components: Any) -> None:
    """Action rows with buttons and selects: 5 rows, 5 buttons a row, unique custom ids of 1-100 chars."""
    if not isinstance(components, list):
        raise form_error("components", "Must be an array")
    seen: set[str] = set()

    def check_item(item: dict, where: str) -> None:
        kind = item.get("type")
        if kind == 2:  # button
            label = item.get("label") or ""
            if len(label) > 80:
                raise form_error(f"{where}.label", "Must be 80 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
            style = item.get("style")
            if style == 5:
                if not item.get("url") or item.get("custom_id"):
                    raise form_error(where, "Link buttons need a url and no custom_id")
                return
            if style == 6:  # premium button
                return
        elif kind not in (3, 4, 5, 6, 7, 8):
            return  # layout components (v2) are passed through unchecked
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
            raise form_error(
                f"{where}.custom_id", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
            )
        if custom_id in seen:
            raise form_error(
                f"{where}.custom_id",
                "Component custom id cannot be duplicated",
                "COMPONENT_CUSTOM_ID_DUPLICATED",
            )
        seen.add(custom_id)

    rows = [c for c in components if c.get("type") == 1]
    if len(rows) > 5:
        raise form_error("components", "Must be 5 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    for i, component in enumerate(components):
        if component.get("type") == 1:
            children = component.get("components") or []
            if not children or len(children) > 5:
                raise form_error(f"components.{i}.components", "Must be between 1 and 5 in length.")
            for j, child in enumerate(children):
                check_item(child, f"components.{i}.components.{j}")
        else:
            check_item(component, f"components.{i}")


def validate_allowed_mentions(allowed: Any) -> None:
    """Discord rejects ``parse: ["users"]`` together with a ``users`` list (same for roles)."""
    if allowed is None:
        return
    if not isinstance(allowed, dict):
        raise form_error("allowed_mentions", "Must be an object")
    parse = allowed.get("parse") or []
    for kind in ("users", "roles"):
        if kind in parse and allowed.get(kind):
            raise form_error(
                f"allowed_mentions.{kind}",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
            )


def validate_message_body(body: dict, files: list[RecordedFile], *, size_limit: int, creating: bool) -> None:
    """Check a message create/edit body and its files against Discord's limits.

    ``creating`` adds the empty-message rule: a new message needs content, an embed, a file, a
    component, a poll or a sticker.
    """
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise form_error("content", "Must be a string")
    if content and len(content) > MAX_CONTENT:
        raise form_error("content", f"Must be {MAX_CONTENT} or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    if "embeds" in body and body["embeds"] is not None:
        validate_embeds(body["embeds"])
    if "components" in body and body["components"] is not None:
        validate_components(body["components"])
    validate_allowed_mentions(body.get("allowed_mentions"))
    if len(files) > MAX_FILES:
        raise form_error("files", f"Must be {MAX_FILES} or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    # Discord's limit is on the whole upload, not on each file.
    if sum(f.size for f in files) > size_limit:
        raise ApiError(413, 40005, "Request entity too large")
    if creating and not (
        content
        or body.get("embeds")
        or files
        or body.get("components")
        or body.get("poll")
        or body.get("sticker_ids")
    ):
        raise ApiError(400, 50006, "Cannot send an empty message")


# ---------------------------------------------------------------- mentions

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


@dataclass(frozen=True)
class Mentions:
    """Who a message actually pings after ``allowed_mentions`` is applied."""

    users: tuple[int, ...] = ()
    roles: tuple[int, ...] = ()
    everyone: bool = False


def resolve_mentions(content: str, allowed: dict | None, *, can_mention_everyone: bool = True) -> Mentions:
    """Apply Discord's rules: without ``allowed_mentions`` every mention in the content pings;
    with it, only the kinds in ``parse`` and the listed ids do. Embeds never ping."""
    content = content or ""
    user_ids = [int(x) for x in _USER_MENTION.findall(content)]
    role_ids = [int(x) for x in _ROLE_MENTION.findall(content)]
    has_everyone = "@everyone" in content or "@here" in content
    if allowed is None:
        return Mentions(
            tuple(dict.fromkeys(user_ids)),
            tuple(dict.fromkeys(role_ids)),
            has_everyone and can_mention_everyone,
        )
    parse = allowed.get("parse") or []
    allowed_users = {int(x) for x in allowed.get("users") or []}
    allowed_roles = {int(x) for x in allowed.get("roles") or []}
    users = [u for u in dict.fromkeys(user_ids) if "users" in parse or u in allowed_users]
    roles = [r for r in dict.fromkeys(role_ids) if "roles" in parse or r in allowed_roles]
    return Mentions(tuple(users), tuple(roles), has_everyone and "everyone" in parse and can_mention_everyone)


# ---------------------------------------------------------------- attachments


def content_type_for(filename: str) -> str:
    """The content type Discord would assign from the file name."""
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG or GIF (what Discord reports for images), else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


@dataclass
class StoredAttachment:
    """An uploaded file kept so tests and the bot can download it again from its URL."""

    id: int
    channel_id: int
    filename: str
    content_type: str
    data: bytes
    description: str | None = None

    def payload(self, base_url: str, *, ephemeral: bool) -> dict:
        """The attachment object Discord returns inside a message."""
        url = f"{base_url}/attachments/{self.channel_id}/{self.id}/{self.filename}"
        data = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": url,
            "proxy_url": url,
            "content_type": self.content_type,
            "description": self.description,
            "ephemeral": ephemeral,
            "flags": 0,
        }
        size = image_size(self.data)
        if size is not None:
            data["width"], data["height"] = size
        return data


# ---------------------------------------------------------------- messages


@dataclass
class StoredMessage:
    """A message as the stand-in keeps it; ``payload()`` renders Discord's message object."""

    id: int
    channel_id: int
    guild_id: int | None
    author: StandInUser
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    mentions: Mentions = field(default_factory=Mentions)
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict | None = None
    message_reference: dict | None = None
    created: str = field(default_factory=timestamp)
    edited: str | None = None
    interaction_token: str | None = None  # the token it was sent with (interaction messages)
    can_mention_everyone: bool = True  # whether the author may ping @everyone where it was sent
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred response's "is thinking…" placeholder, not yet replaced."""
        return bool(self.flags & FLAG_LOADING)

    def attachment(self, filename: str) -> StoredAttachment:
        """The attachment named ``filename``; KeyError listing the names otherwise."""
        for a in self.attachments:
            if a.filename == filename:
                return a
        raise KeyError(
            f"message {self.id} has no attachment {filename!r}: {[a.filename for a in self.attachments]}"
        )

    def payload(self, base_url: str, users: dict[int, StandInUser]) -> dict:
        """The message object as Discord returns it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.created,
            "edited_timestamp": self.edited,
            "tts": False,
            "mention_everyone": self.mentions.everyone,
            "mentions": [users[u].payload() for u in self.mentions.users if u in users],
            "mention_roles": [str(r) for r in self.mentions.roles],
            "attachments": [a.payload(base_url, ephemeral=self.ephemeral) for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data


def _number_components(components: list[dict], counter: list[int]) -> list[dict]:
    """Give every component Discord's numeric ``id`` (as the API does on send)."""
    out = []
    for component in components:
        component = dict(component)
        counter[0] += 1
        component.setdefault("id", counter[0])
        if isinstance(component.get("components"), list):
            component["components"] = _number_components(component["components"], counter)
        out.append(component)
    return out


def _resolve_attachment_refs(
    embeds: list[dict], attachments: list[StoredAttachment], base_url: str
) -> list[dict]:
    """Turn ``attachment://name`` embed images into the uploaded file's URL, as Discord does."""
    by_name = {a.filename: a for a in attachments}
    out = []
    for embed in embeds:
        embed = {**embed, "type": embed.get("type", "rich")}
        for key in ("image", "thumbnail"):
            part = embed.get(key)
            url = (part or {}).get("url") or ""
            if url.startswith("attachment://") and url[len("attachment://") :] in by_name:
                a = by_name[url[len("attachment://") :]]
                resolved = a.payload(base_url, ephemeral=False)
                embed[key] = {**part, "url": resolved["url"], "proxy_url": resolved["proxy_url"]}
        out.append(embed)
    return out


class MessageStore:
    """All messages and attachments the bot created, bounded (oldest dropped first)."""

    def __init__(self, snowflakes: Any, base_url: str, *, max_messages: int = 5000) -> None:
        self._snowflakes = snowflakes
        self.base_url = base_url
        self._messages: OrderedDict[int, StoredMessage] = OrderedDict()
        self._attachments: dict[int, StoredAttachment] = {}
        self._max_messages = max_messages

    def get(self, message_id: int) -> StoredMessage | None:
        """The live (not deleted) message with this id, or None."""
        message = self._messages.get(message_id)
        return None if message is None or message.deleted else message

    def attachment(self, attachment_id: int) -> StoredAttachment | None:
        return self._attachments.get(attachment_id)

    def in_channel(self, channel_id: int) -> list[StoredMessage]:
        """Live messages in a channel, oldest first."""
        return [m for m in self._messages.values() if m.channel_id == channel_id and not m.deleted]

    def all(self) -> list[StoredMessage]:
        return [m for m in self._messages.values() if not m.deleted]

    def _store_files(
        self, channel_id: int, body: dict, files: list[RecordedFile]
    ) -> dict[int, StoredAttachment]:
        """New attachments by upload index; descriptions come from the body's attachments list."""
        descriptions = {}
        for item in body.get("attachments") or []:
            if isinstance(item, dict) and "description" in item:
                descriptions[str(item.get("id"))] = item["description"]
        new: dict[int, StoredAttachment] = {}
        for index, f in enumerate(files):
            match = re.fullmatch(r"files\[(\d+)\]", f.field)
            upload_index = int(match.group(1)) if match else index
            attachment = StoredAttachment(
                id=self._snowflakes.next(),
                channel_id=channel_id,
                filename=f.filename,
                content_type=content_type_for(f.filename),
                data=f.data,
                description=descriptions.get(str(upload_index)),
            )
            self._attachments[attachment.id] = attachment
            new[upload_index] = attachment
        return new

    def create(
        self,
        *,
        channel_id: int,
        guild: StandInGuild | None,
        author: StandInUser,
        body: dict,
        files: list[RecordedFile],
        flags: int | None = None,
        type: int = 0,
        can_mention_everyone: bool = True,
        **extra: Any,
    ) -> StoredMessage:
        """Store a new message from a validated create body."""
        attachments = list(self._store_files(channel_id, body, files).values())
        content = body.get("content") or ""
        message = StoredMessage(
            id=self._snowflakes.next(),
            channel_id=channel_id,
            guild_id=guild.id if guild else None,
            author=author,
            content=content,
            embeds=_resolve_attachment_refs(body.get("embeds") or [], attachments, self.base_url),
            components=_number_components(body.get("components") or [], [0]),
            attachments=attachments,
            flags=int(body.get("flags") or 0) if flags is None else flags,
            type=type,
            mentions=resolve_mentions(
                content, body.get("allowed_mentions"), can_mention_everyone=can_mention_everyone
            ),
            message_reference=body.get("message_reference"),
            can_mention_everyone=can_mention_everyone,
            **extra,
        )
        self._messages[message.id] = message
        while len(self._messages) > self._max_messages:
            _, old = self._messages.popitem(last=False)
            for a in old.attachments:
                self._attachments.pop(a.id, None)
        return message

    def edit(self, message: StoredMessage, body: dict, files: list[RecordedFile]) -> StoredMessage:
        """Apply a PATCH body: only the fields present change; ``attachments`` lists what stays."""
        new = self._store_files(message.channel_id, body, files)
        if "attachments" in body and body["attachments"] is not None:
            kept: list[StoredAttachment] = []
            existing = {str(a.id): a for a in message.attachments}
            for item in body["attachments"]:
                key = str(item.get("id"))
                if key in existing:
                    kept.append(existing[key])
                elif key.isdigit() and int(key) in new:
                    kept.append(new.pop(int(key)))
            message.attachments = kept + list(new.values())
        else:
            message.attachments = message.attachments + list(new.values())
        if "content" in body:
            message.content = body["content"] or ""
            message.mentions = resolve_mentions(
                message.content,
                body.get("allowed_mentions"),
                can_mention_everyone=message.can_mention_everyone,
            )
        if "embeds" in body:
            message.embeds = _resolve_attachment_refs(
                body["embeds"] or [], message.attachments, self.base_url
            )
        if "components" in body:
            message.components = _number_components(body["components"] or [], [0])
        if "flags" in body and body["flags"] is not None:
            # Only SUPPRESS_EMBEDS (4) may change on edit; ephemeral stays as it was.
            message.flags = (message.flags & ~4) | (int(body["flags"]) & 4)
        message.flags &= ~FLAG_LOADING
        message.edited = timestamp()
        return message
