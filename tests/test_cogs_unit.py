"""The cogs one interaction at a time, the way discord.py tests its own commands.

Each test builds a :class:`discord.Interaction` from a raw payload (as the gateway would
deliver it) and hands it to ``bot.tree._call``. The bot is logged in to the Discord
stand-in's REST API only — no gateway, no worker, no model — so these run in
milliseconds. The stand-in never sent these interactions, so it answers their callbacks
with 404 Unknown interaction; the tests read what the bot *sent*, and the 404 doubles as
a check that a failing interaction never takes the bot down.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import pytest_asyncio

from bot.cogs.paint import PaintCog
from bot.config import load_settings
from bot.discord_bot import LatentPainterBot, create_bot
from db.gallery import update_settings
from db.results import NewResult
from tests.discord_standin import DiscordStandIn, RecordedRequest
from tests.discord_standin.messages import validate_embeds
from tests.discord_standin.world import (
    ALICE_ID,
    BOT_ID,
    GALLERY_ID,
    GENERAL_ID,
    GUILD_ID,
    MOD_ID,
    THREAD_ID,
    Permission,
    default_guilds,
)
from tests.test_bot_e2e import TOKEN, bot_env, new_data_dir

# The interaction tests share one logged-in bot (one event loop) per module.
on_bot = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(1_400_000_000_000_000_000)


class Harness:
    def __init__(self, standin: DiscordStandIn, bot: LatentPainterBot) -> None:
        self.standin = standin
        self.bot = bot
        self.guild = default_guilds()[0]

    def payload(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user_id: int = ALICE_ID,
        channel_id: int = GENERAL_ID,
        resolved: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE payload in the default stand-in guild."""
        interaction_id = next(_ids)
        member = self.guild.member(user_id)
        channel = self.guild.channel(channel_id)
        assert member is not None and channel is not None
        permissions = self.guild.permissions_of(member)
        if resolved:
            data = {**data, "resolved": resolved}
        return {
            "id": str(interaction_id),
            "application_id": str(BOT_ID),
            "type": kind,
            "token": f"unit-token-{interaction_id}",
            "version": 1,
            "locale": "en-US",
            "guild_locale": "en-US",
            "guild_id": str(GUILD_ID),
            "guild": {"id": str(GUILD_ID), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": channel.payload(GUILD_ID) | {"permissions": str(permissions)},
            "member": member.payload(permissions=permissions),
            "app_permissions": str(Permission.BOT),
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 0,
            "data": data,
        }

    async def call(self, payload: dict[str, Any]) -> list[RecordedRequest]:
        """Run the interaction through the command tree; returns the requests made with its token."""
        mark = self.standin.mark()
        interaction = discord.Interaction(data=payload, state=self.bot._connection)  # type: ignore[arg-type]
        await self.bot.tree._call(interaction)
        token = payload["token"]
        return self.standin.recorder.matching(
            lambda r: r.token == token, since=mark, include_rate_limited=True
        )

    async def slash(
        self, name: str, options: dict[str, Any] | None = None, **envelope: Any
    ) -> RecordedRequest:
        """A slash command; returns the bot's first answer (its interaction callback)."""
        typed = {str: 3, int: 4, bool: 5, float: 10}
        data = {
            "id": "1",
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": typed[type(v)], "value": v} for k, v in (options or {}).items()],
        }
        sent = await self.call(self.payload(2, data, **envelope))
        assert sent, f"/{name}: the bot answered nothing"
        return sent[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[Harness]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    data = new_data_dir(tmp_path_factory.mktemp("cogs-unit"), data_dir)
    async with DiscordStandIn(token=TOKEN) as standin:
        settings = load_settings(env=bot_env(data, standin, LATENT_PAINTER_DISCORD_RUN_WORKER="false"))
        bot = await create_bot(settings)
        try:
            await bot.login(TOKEN)  # REST only: runs setup_hook (cogs, sync), no gateway
            yield Harness(standin, bot)
        finally:
            await bot.close()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def ephemeral_text(answer: RecordedRequest) -> str:
    assert answer.route == "POST /interactions/{interaction_id}/{token}/callback"
    assert answer.callback_type == 4 and answer.ephemeral, answer.json
    return answer.content


@on_bot
async def test_paint_refuses_an_empty_prompt(harness: Harness) -> None:
    assert "prompt is empty" in ephemeral_text(await harness.slash("paint", {"prompt": "  \n "}))


@on_bot
async def test_paint_applies_the_servers_step_limit(harness: Harness) -> None:
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, max_steps=3)
    try:
        text = ephemeral_text(await harness.slash("paint", {"prompt": "a cat", "steps": 5}))
        assert "Steps must be from 1 to 3 here" in text
    finally:
        await update_settings(harness.bot.db, GUILD_ID, MOD_ID, max_steps=None)


@on_bot
async def test_paint_is_refused_outside_the_allowed_channels(harness: Harness) -> None:
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[GALLERY_ID])
    try:
        text = ephemeral_text(await harness.slash("paint", {"prompt": "a cat"}))
        assert f"not allowed in this channel. Use <#{GALLERY_ID}>" in text
    finally:
        await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[])


@on_bot
async def test_threads_follow_their_parent_channels_rule(harness: Harness) -> None:
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[GALLERY_ID])
    try:
        # "lighthouses" is a thread in general, which is not allowed.
        text = ephemeral_text(await harness.slash("paint", {"prompt": "a cat"}, channel_id=THREAD_ID))
        assert f"not allowed in this channel. Use <#{GALLERY_ID}>" in text
    finally:
        await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[])


@on_bot
async def test_settings_limit_the_picture_size(harness: Harness) -> None:
    saved = ephemeral_text(await harness.slash("settings", {"max_side": 64}, user_id=MOD_ID))
    assert saved.startswith("Saved")
    try:
        text = ephemeral_text(await harness.slash("paint", {"prompt": "a cat", "size": "128x128"}))
        assert "This server allows pictures up to 64 pixels a side." in text
    finally:
        reset = await harness.slash("settings", {"reset": "max side"}, user_id=MOD_ID)
        assert "Largest picture side" in json.dumps(reset.json)
    from db.gallery import get_settings

    assert (await get_settings(harness.bot.db, GUILD_ID)).max_side is None


@on_bot
async def test_an_oversized_picture_is_refused_without_downloading_it(harness: Harness) -> None:
    attachment = {
        "id": "77",
        "filename": "huge.png",
        "size": 50_000_000,
        "content_type": "image/png",
        # Nothing listens here: a download would fail, not refuse.
        "url": "http://127.0.0.1:9/attachments/huge.png",
        "proxy_url": "http://127.0.0.1:9/attachments/huge.png",
    }
    data = {
        "id": "1",
        "name": "paint",
        "type": 1,
        "options": [
            {"name": "prompt", "type": 3, "value": "a cat"},
            {"name": "image", "type": 11, "value": "77"},
        ],
    }
    sent = await harness.call(harness.payload(2, data, resolved={"attachments": {"77": attachment}}))
    assert "The picture is 50.0 MB; the limit is 4 KB" in ephemeral_text(sent[0])


@on_bot
async def test_settings_need_manage_server(harness: Harness) -> None:
    text = ephemeral_text(await harness.slash("settings", {"queue_cap": 2}, user_id=ALICE_ID))
    assert "Manage Server" in text
    saved = ephemeral_text(await harness.slash("settings", {"queue_cap": 2}, user_id=MOD_ID))
    assert saved.startswith("Saved")
    from db.gallery import get_settings

    assert (await get_settings(harness.bot.db, GUILD_ID)).per_user_cap == 2
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, per_user_cap=None)


@on_bot
async def test_settings_with_many_allowed_channels_stay_within_discords_embed_limits(
    harness: Harness,
) -> None:
    # 60 channel mentions are about 1,400 characters; a field value may hold 1,024.
    many = [GENERAL_ID, *(1_300_000_000_000_009_000 + i for i in range(59))]
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=many)
    try:
        answer = await harness.slash("settings", {}, user_id=MOD_ID)
        assert ephemeral_text(answer) == "Nothing changed; these are the current settings."
        [embed] = answer.json["data"]["embeds"]
        validate_embeds([embed])  # what Discord checks; over a limit it answers 400
        [field] = [f for f in embed["fields"] if f["name"] == "Painting allowed in"]
        shown, more = field["value"].rsplit(" and ", 1)
        mentions = shown.split(", ")
        assert mentions == [f"<#{c}>" for c in sorted(many)[: len(mentions)]]
        assert more == f"{len(many) - len(mentions)} more" and len(mentions) >= 40
    finally:
        await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[])


async def finished_results(harness: Harness, *prompts: str) -> list[str]:
    """Alice's paint results with a trail (one per prompt, same VAE), as a worker would finish them."""
    queue = harness.bot.queue
    made = []
    for prompt in prompts:
        job = (await queue.enqueue("paint", {"prompt": prompt}, user_id=ALICE_ID, guild_id=GUILD_ID)).job
        lease = await queue.claim("unit-worker")
        assert lease is not None and lease.job_id == job.id
        fields = {"prompt": prompt, "vae_id": "v", "model_id": "tiny"}
        keys = {"trail": f"jobs/{job.id}/1/trail.safetensors"}
        made.append((await queue.finish(lease, NewResult(fields=fields, artifact_keys=keys))).public_id)
    return made


@on_bot
async def test_transition_autocomplete_offers_the_callers_results_newest_first(harness: Harness) -> None:
    made = await finished_results(harness, "an old mill", "a new bridge")
    data = {
        "id": "1",
        "name": "transition",
        "type": 1,
        "options": [{"name": "from", "type": 3, "value": "", "focused": True}],
    }
    sent = await harness.call(harness.payload(4, data))
    assert sent[0].callback_type == 8
    choices = sent[0].json["data"]["choices"]
    assert [c["value"] for c in choices][:2] == made[::-1]
    assert choices[0]["name"] == f"{made[1]} · a new bridge"
    # Another member sees none of them.
    other = await harness.call(harness.payload(4, data, user_id=MOD_ID))
    assert other[0].json["data"]["choices"] == []


@on_bot
async def test_paint_options_follow_the_settings(harness: Harness) -> None:
    settings = harness.bot.settings
    command = harness.bot.tree.get_command("paint", guild=discord.Object(GUILD_ID))
    assert command is not None
    options = {o["name"]: o for o in command.to_dict(harness.bot.tree)["options"]}
    assert options["steps"]["max_value"] == settings.painter.max_steps
    assert [c["value"] for c in options["size"]["choices"]] == ["64x64", "128x128"]
    assert [c["value"] for c in options["effect"]["choices"]] == [
        "strokes",
        "glow",
        "flip",
        "fade",
        "dissolve",
        "sharpen",
    ]
    assert "model" not in options  # one checkpoint: no choice to make
    two = replace(settings, discord=replace(settings.discord, models="tiny, other/checkpoint"))
    other_bot = LatentPainterBot(two, db=harness.bot.db, store=harness.bot.store, runner=lambda ctx: None)
    cog_options = {o["name"]: o for o in PaintCog(other_bot).command.to_dict(other_bot.tree)["options"]}
    assert [c["value"] for c in cog_options["model"]["choices"]] == ["tiny", "other/checkpoint"]


@on_bot
async def test_every_command_and_option_is_described_and_names_are_unique(harness: Harness) -> None:
    commands = harness.bot.tree.get_commands(guild=discord.Object(GUILD_ID))
    names = [c.name for c in commands]
    assert sorted(names) == ["gallery", "history", "paint", "settings", "transition"]

    def walk(entries: list[dict[str, Any]], where: str) -> None:
        for entry in entries:
            assert entry["description"] and entry["description"] != "…", f"{where} {entry['name']}"
            walk(entry.get("options", []), f"{where} {entry['name']}")

    for command in commands:
        walk([command.to_dict(harness.bot.tree)], "/")
    settings = harness.bot.tree.get_command("settings", guild=discord.Object(GUILD_ID))
    assert settings is not None and settings.default_permissions == discord.Permissions(manage_guild=True)


def test_transition_pairs_need_trails_and_a_shared_vae() -> None:
    from bot.cogs.common import UserError
    from bot.cogs.transition import check_pair
    from db.models import Result

    def made(
        rid: int, public_id: str, model: str, vae: str, trail: str | None = "t", kind: str = "paint"
    ) -> Result:
        return Result(id=rid, public_id=public_id, kind=kind, model_id=model, vae_id=vae, trail_key=trail)

    check_pair(made(1, "AAAAAAAA", "sd15", "vae-1"), made(2, "BBBBBBBB", "sd15-finetune", "vae-1"))
    with pytest.raises(UserError, match="VAEs differ") as refused:
        check_pair(
            made(1, "AAAAAAAA", "sd15", "vae-1"), made(2, "BBBBBBBB", "/home/owner/ckpt/sdxl", "vae-2")
        )
    # A local checkpoint is named by its folder: the server's paths are not for members.
    assert "AAAAAAAA (sd15)" in str(refused.value) and "BBBBBBBB (sdxl)" in str(refused.value)
    assert "/home/owner" not in str(refused.value)
    with pytest.raises(UserError, match="BBBBBBBB is a transition, which keeps no trail"):
        transition = made(2, "BBBBBBBB", "sd15", "vae-1", trail=None, kind="transition")
        check_pair(made(1, "AAAAAAAA", "sd15", "vae-1"), transition)
    with pytest.raises(UserError, match="BBBBBBBB has no stored trail"):
        check_pair(made(1, "AAAAAAAA", "sd15", "vae-1"), made(2, "BBBBBBBB", "sd15", "vae-1", trail=None))


@on_bot
async def test_transition_takes_depth_and_blend(harness: Harness) -> None:
    """/transition depth: and blend: reach the queued job (the CLI's --depth and
    --guidance interpolate); a depth outside its range is refused before anything is queued."""
    from sqlalchemy import func, select

    from db.models import Job

    queue = harness.bot.queue
    made = await finished_results(harness, "a quiet bay", "a stormy bay")

    async def newest_job_id() -> int:
        async with harness.bot.db.read() as session:
            return int(await session.scalar(select(func.max(Job.id))) or 0)

    before = await newest_job_id()
    refused = await harness.slash("transition", {"from": made[0], "to": made[1], "depth": 1.5})
    assert "Depth must be from 0.05 to 1." in ephemeral_text(refused)
    assert await newest_job_id() == before  # nothing queued

    await harness.slash("transition", {"from": made[0], "to": made[1], "depth": 0.5, "blend": True})
    job = await queue.get(await newest_job_id())
    try:
        assert job.kind == "transition"
        assert job.params["depth"] == 0.5 and job.params["interpolate"] is True
    finally:
        await queue.cancel(job.id)
