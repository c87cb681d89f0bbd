"""The Discord "world" the stand-in serves: the bot user, guilds, channels, roles and members.

Everything here is plain data with one method each that renders the JSON Discord would send
for it (API v10 field names), so the real discord.py client parses it exactly as it parses
Discord's own payloads.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

DISCORD_EPOCH_MS = 1420070400000
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # Discord's limit for guilds without boosts.
JOINED_AT = "2024-01-01T00:00:00.000000+00:00"


class Permission:
    """The permission bits the stand-in uses (Discord's values)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    ALL = (1 << 53) - 1

    # What @everyone may do on a fresh server (a sensible subset of Discord's default).
    EVERYONE = (
        CREATE_INSTANT_INVITE
        | ADD_REACTIONS
        | VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | MENTION_EVERYONE
        | USE_EXTERNAL_EMOJIS
        | USE_APPLICATION_COMMANDS
    )
    # The bot's role: what the README asks server owners to grant, plus what lets a careless bot
    # ping @everyone, so a test notices when allowed_mentions is missing.
    BOT = VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY | MENTION_EVERYONE


class Snowflakes:
    """Makes Discord-style snowflake ids (time-ordered, unique within this process)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> int:
        """A new snowflake id, larger than every id made before."""
        with self._lock:
            increment = next(self._counter) & 0xFFF
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            return (ms << 22) | (1 << 17) | increment


@dataclass
class StandInUser:
    """A Discord user (or the bot's own user when ``bot`` is true)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    # False: the user's privacy settings refuse direct messages from the bot (403 50007).
    accepts_dms: bool = True

    def payload(self) -> dict:
        """The user object as Discord sends it."""
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass
class StandInRole:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = False

    def payload(self) -> dict:
        """The role object as Discord sends it."""
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": self.mentionable,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class StandInChannel:
    """A guild channel: text (type 0) by default; ``nsfw`` marks an age-restricted channel.

    Threads (types 10-12) need ``parent_id`` and ``owner_id``; they are sent under the
    guild's ``threads`` and carry the thread fields discord.py reads.
    """

    id: int
    name: str
    nsfw: bool = False
    position: int = 0
    type: int = 0
    parent_id: int | None = None
    owner_id: int | None = None

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def payload(self, guild_id: int) -> dict:
        """The channel object as Discord sends it (inside GUILD_CREATE or from GET /channels/{id})."""
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None if self.parent_id is None else str(self.parent_id),
            "flags": 0,
        } | (self._thread_fields() if self.is_thread else {})

    def _thread_fields(self) -> dict:
        return {
            "owner_id": str(self.owner_id),
            "member_count": 1,
            "message_count": 0,
            "total_message_sent": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": JOINED_AT,
                "locked": False,
            },
        }


@dataclass
class StandInMember:
    """A guild member: a user with roles; ``permissions`` overrides the role-derived value."""

    user: StandInUser
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    permissions: int | None = None

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict:
        """The member object; ``permissions`` is added as Discord does inside interactions."""
        data: dict = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": JOINED_AT,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class StandInGuild:
    """A guild with its channels, roles and members (the bot's member is added by the stand-in)."""

    id: int
    name: str
    owner_id: int
    channels: list[StandInChannel] = field(default_factory=list)
    roles: list[StandInRole] = field(default_factory=list)
    members: list[StandInMember] = field(default_factory=list)
    bot_role_ids: list[int] = field(default_factory=list)
    attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT
    locale: str = "en-US"

    def channel(self, channel_id: int) -> StandInChannel | None:
        """The channel with this id, or None."""
        return next((c for c in self.channels if c.id == channel_id), None)

    def channel_named(self, name: str) -> StandInChannel:
        """The channel with this name; KeyError naming the known channels when there is none."""
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(
            f"no channel {name!r} in guild {self.name!r}; known: {[c.name for c in self.channels]}"
        )

    def role(self, role_id: int) -> StandInRole | None:
        """The role with this id, or None."""
        return next((r for r in self.roles if r.id == role_id), None)

    def member(self, user_id: int) -> StandInMember | None:
        """The member with this user id, or None."""
        return next((m for m in self.members if m.id == user_id), None)

    def member_named(self, username: str) -> StandInMember:
        """The member whose username is ``username``; KeyError naming the known ones otherwise."""
        for member in self.members:
            if member.user.username == username:
                return member
        raise KeyError(
            f"no member {username!r} in guild {self.name!r}; known: {[m.user.username for m in self.members]}"
        )

    def permissions_of(self, member: StandInMember) -> int:
        """The member's resolved permissions (no channel overwrites exist in the stand-in)."""
        if member.permissions is not None:
            return member.permissions
        if member.id == self.owner_id:
            return Permission.ALL
        value = 0
        for role in self.roles:
            if role.id == self.id or role.id in member.roles:
                value |= role.permissions
        if value & Permission.ADMINISTRATOR:
            return Permission.ALL
        return value

    def payload(self, *, bot_member: StandInMember, include_members: bool) -> dict:
        """The GUILD_CREATE payload; other members are only included with the members intent."""
        members = [bot_member] + (
            [m for m in self.members if m.id != bot_member.id] if include_members else []
        )
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "preferred_locale": self.locale,
            "features": [],
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "roles": [r.payload() for r in self.roles],
            "emojis": [],
            "stickers": [],
            "channels": [c.payload(self.id) for c in self.channels if not c.is_thread],
            "threads": [c.payload(self.id) for c in self.channels if c.is_thread],
            "members": [m.payload() for m in members],
            "member_count": len({m.id for m in self.members} | {bot_member.id}),
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": JOINED_AT,
            "large": False,
            "lazy": True,
            "unavailable": False,
        }


# Fixed ids of the default world, so tests can name them. They are real-sized snowflakes
# (19 digits) so code that mangles large integers fails here as it would on Discord.
BOT_ID = 1_300_000_000_000_000_001
GUILD_ID = 1_300_000_000_000_000_100
OTHER_GUILD_ID = 1_300_000_000_000_000_200
GENERAL_ID = 1_300_000_000_000_000_101
GALLERY_ID = 1_300_000_000_000_000_102
NSFW_ID = 1_300_000_000_000_000_103
HALL_ID = 1_300_000_000_000_000_104
THREAD_ID = 1_300_000_000_000_000_105
MODS_ROLE_ID = 1_300_000_000_000_000_110
ARTISTS_ROLE_ID = 1_300_000_000_000_000_111
BOT_ROLE_ID = 1_300_000_000_000_000_112
OWNER_ID = 1_300_000_000_000_000_300
ALICE_ID = 1_300_000_000_000_000_301
BOB_ID = 1_300_000_000_000_000_302
MOD_ID = 1_300_000_000_000_000_303
OTHER_GENERAL_ID = 1_300_000_000_000_000_201


def default_bot_user() -> StandInUser:
    """The bot's own user ("Latent Painter"); its id is also the application id."""
    return StandInUser(id=BOT_ID, username="latent-painter", global_name="Latent Painter", bot=True)


def default_guilds() -> list[StandInGuild]:
    """Two guilds: "Paint Club" (the main test server) and "Elsewhere" (for cross-guild checks).

    Paint Club has channels ``general``, ``gallery``, ``nsfw-art`` (age-restricted) and
    ``hall-of-fame``, and a public thread ``lighthouses`` in ``general``; members ``owner``
    (guild owner), ``alice`` and ``bob`` (plain members), and ``mod`` (Manage Server through
    the ``mods`` role). Roles: @everyone, ``mods``, ``artists`` (mentionable, to test role
    pings) and the bot's managed role.
    """
    owner = StandInUser(OWNER_ID, "owner", "Owner")
    alice = StandInUser(ALICE_ID, "alice", "Alice")
    bob = StandInUser(BOB_ID, "bob", "Bob")
    mod = StandInUser(MOD_ID, "mod", "Mod")
    paint_club = StandInGuild(
        id=GUILD_ID,
        name="Paint Club",
        owner_id=OWNER_ID,
        channels=[
            StandInChannel(GENERAL_ID, "general", position=0),
            StandInChannel(GALLERY_ID, "gallery", position=1),
            StandInChannel(NSFW_ID, "nsfw-art", nsfw=True, position=2),
            StandInChannel(HALL_ID, "hall-of-fame", position=3),
            StandInChannel(THREAD_ID, "lighthouses", type=11, parent_id=GENERAL_ID, owner_id=ALICE_ID),
        ],
        roles=[
            StandInRole(GUILD_ID, "@everyone", Permission.EVERYONE, position=0),
            StandInRole(MODS_ROLE_ID, "mods", Permission.EVERYONE | Permission.MANAGE_GUILD, position=2),
            StandInRole(ARTISTS_ROLE_ID, "artists", Permission.EVERYONE, position=1, mentionable=True),
            StandInRole(BOT_ROLE_ID, "Latent Painter", Permission.BOT, position=3),
        ],
        members=[
            StandInMember(owner),
            StandInMember(alice, roles=[ARTISTS_ROLE_ID]),
            StandInMember(bob),
            StandInMember(mod, roles=[MODS_ROLE_ID]),
        ],
        bot_role_ids=[BOT_ROLE_ID],
    )
    elsewhere = StandInGuild(
        id=OTHER_GUILD_ID,
        name="Elsewhere",
        owner_id=BOB_ID,
        channels=[StandInChannel(OTHER_GENERAL_ID, "general")],
        roles=[StandInRole(OTHER_GUILD_ID, "@everyone", Permission.EVERYONE)],
        members=[StandInMember(bob), StandInMember(alice)],
    )
    return [paint_club, elsewhere]
