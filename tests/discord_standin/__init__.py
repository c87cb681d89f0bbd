"""A local stand-in for Discord (REST API + gateway on 127.0.0.1) for end-to-end tests.

Start it, point discord.py at it, push interactions, assert on what the bot sent::

    async with DiscordStandIn(token="test-token") as standin:
        with standin.pointed_here():  # or the bot's settings: standin.env()
            ...start the bot...
        await standin.wait_until_ready()
        handle = await standin.send_slash("paint", {"prompt": "a lighthouse"})
        deferral = await handle.response(timeout=3)
        assert deferral.callback_type == 5 and handle.delay(deferral) < 3

See README.md in this directory for the whole API.
"""

from .interactions import InteractionBuildError, InteractionHandle, InteractionState, StandInAttachment
from .messages import ApiError, Mentions, StoredAttachment, StoredMessage
from .recording import RecordedFile, RecordedRequest
from .server import DiscordStandIn
from .world import (
    Permission,
    StandInChannel,
    StandInGuild,
    StandInMember,
    StandInRole,
    StandInUser,
    default_bot_user,
    default_guilds,
)

__all__ = [
    "ApiError",
    "DiscordStandIn",
    "InteractionBuildError",
    "InteractionHandle",
    "InteractionState",
    "Mentions",
    "Permission",
    "RecordedFile",
    "RecordedRequest",
    "StandInAttachment",
    "StandInChannel",
    "StandInGuild",
    "StandInMember",
    "StandInRole",
    "StandInUser",
    "StoredAttachment",
    "StoredMessage",
    "default_bot_user",
    "default_guilds",
]
