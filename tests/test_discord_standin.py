"""The Discord stand-in driven by the real discord.py client.

A small bot defined here (a deferring command with file follow-ups, an autocomplete, a
persistent button, a modal) runs against the stand-in exactly as it would against Discord,
with ``Route.BASE`` and ``DEFAULT_GATEWAY`` pointed at the loopback server.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.discord_standin import DiscordStandIn, InteractionBuildError, StandInAttachment
from tests.discord_standin.world import ALICE_ID, BOB_ID, BOT_ID, GENERAL_ID, GUILD_ID, MOD_ID

TOKEN = "stand-in-test-token.not-a-real-one"
# Bytes that survive only an exact, binary-safe multipart round trip (every byte value, CR/LF pairs).
VIDEO = bytes(range(256)) * 64 + b"\r\n--boundary\r\n" + os.urandom(4096)
FRUITS = ["apple", "apricot", "banana", "cherry"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PICTURE = _png(48, 32)


@dataclass
class Seen:
    """What the test bot observed, for assertions on its side of the conversation."""

    proceed: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[tuple[int, int]] = field(default_factory=list)
    clicks: list[tuple[str, int]] = field(default_factory=list)
    modal_text: list[str] = field(default_factory=list)
    sent_urls: list[str] = field(default_factory=list)


class VoteView(discord.ui.View):
    """A persistent view: ``custom_id`` carries the entry id, as the bot's result buttons will."""

    def __init__(self, seen: Seen) -> None:
        super().__init__(timeout=None)
        self.seen = seen

    @discord.ui.button(label="Vote", custom_id="vote:42", style=discord.ButtonStyle.primary)
    async def vote(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.seen.clicks.append((button.custom_id or "", interaction.user.id))
        await interaction.response.send_message("Vote counted.", ephemeral=True)


class NoteModal(discord.ui.Modal, title="A note"):
    text = discord.ui.TextInput(label="Note", custom_id="note_text")

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.seen.modal_text.append(self.text.value)
        await interaction.response.send_message(f"Noted: {self.text.value}", ephemeral=True)


def build_bot(seen: Seen) -> commands.Bot:
    """A tiny bot with the interaction patterns the real bot uses."""
    bot = commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.default(),
        guild_ready_timeout=0.05,  # READY fires 50 ms after the last GUILD_CREATE instead of 2 s
    )
    guild = discord.Object(GUILD_ID)

    async def deliver(interaction: discord.Interaction, text: str) -> None:
        files = [
            discord.File(io.BytesIO(VIDEO), "painting.mp4"),
            discord.File(io.BytesIO(PICTURE), "final.png"),
        ]
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[interaction.user])
        try:
            message = await interaction.followup.send(text, files=files, allowed_mentions=mentions, wait=True)
            seen.sent_urls.extend(a.url for a in message.attachments)
        except discord.HTTPException as error:
            seen.errors.append((error.status, error.code))
            files = [
                discord.File(io.BytesIO(VIDEO), "painting.mp4"),
                discord.File(io.BytesIO(PICTURE), "final.png"),
            ]
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel)
            await channel.send(f"{interaction.user.mention} {text}", files=files, allowed_mentions=mentions)

    @app_commands.command(name="render", description="Defer, then deliver a video and a picture")
    @app_commands.describe(prompt="What to paint", wait="Wait for the test before delivering")
    async def render(interaction: discord.Interaction, prompt: str, wait: bool = False) -> None:
        await interaction.response.defer(thinking=True)
        if wait:
            await seen.proceed.wait()
        await deliver(interaction, f"Here is {prompt}")

    @app_commands.command(name="shout", description="Post in the channel without allowed_mentions")
    @app_commands.describe(text="What to post")
    async def shout(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message("posting", ephemeral=True)
        assert isinstance(interaction.channel, discord.TextChannel)
        await interaction.channel.send(text)

    @app_commands.command(name="progress", description="Edit the deferred reply several times")
    async def progress(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        for step in range(1, 5):
            await interaction.edit_original_response(content=f"step {step}/4")

    @app_commands.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        try:
            await interaction.response.defer()
        except discord.HTTPException as error:
            seen.errors.append((error.status, error.code))

    @app_commands.command(name="pick", description="Pick a fruit")
    @app_commands.describe(fruit="The fruit")
    async def pick(interaction: discord.Interaction, fruit: str) -> None:
        await interaction.response.send_message(f"You picked {fruit}", ephemeral=True)

    @pick.autocomplete("fruit")
    async def pick_fruit(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=f, value=f) for f in FRUITS if f.startswith(current)]

    @app_commands.command(name="ballot", description="Post a message with a persistent vote button")
    async def ballot(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Entry 42", view=VoteView(seen))

    @app_commands.command(name="note", description="Open a modal")
    async def note(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NoteModal(seen))

    manage = app_commands.Group(
        name="admin",
        description="Server settings",
        default_permissions=discord.Permissions(manage_guild=True),
    )

    @manage.command(name="limit", description="Set the per-user limit")
    @app_commands.describe(count="Jobs per user")
    async def limit(interaction: discord.Interaction, count: app_commands.Range[int, 1, 10]) -> None:
        await interaction.response.send_message(f"limit {count}", ephemeral=True)

    @app_commands.command(name="inspect", description="Echo resolved options")
    @app_commands.describe(who="A member", where="A channel", file="A file")
    async def inspect(
        interaction: discord.Interaction,
        who: discord.Member,
        where: discord.TextChannel,
        file: discord.Attachment,
    ) -> None:
        data = await file.read()  # downloaded from the stand-in's attachment URL
        text = f"{who.name} {where.name} {file.filename} {len(data)} {data == PICTURE}"
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="hello", description="Works in DMs too")
    async def hello(interaction: discord.Interaction) -> None:
        place = "dm" if interaction.guild is None else "guild"
        await interaction.response.send_message(f"hello {interaction.user.name} in {place}")

    for command in (render, shout, progress, slow, pick, ballot, note, manage, inspect):
        bot.tree.add_command(command, guild=guild)
    bot.tree.add_command(hello)

    async def setup_hook() -> None:
        bot.add_view(VoteView(seen))  # persistent: matched by custom_id, no message id needed
        await bot.tree.sync(guild=guild)
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@dataclass
class Harness:
    standin: DiscordStandIn
    bot: commands.Bot
    seen: Seen


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token=TOKEN) as standin:
        with standin.pointed_here():
            seen = Seen()
            bot = build_bot(seen)
            task = asyncio.create_task(bot.start(TOKEN))
            try:
                await standin.wait_until_ready(timeout=10)
                await asyncio.wait_for(bot.wait_until_ready(), 10)
                yield Harness(standin, bot, seen)
            finally:
                await bot.close()
                await asyncio.wait_for(task, 10)
        # Everything the client did during the test was a route the stand-in serves.
        standin.assert_clean()
    assert discord.http.Route.BASE == base
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == gateway


async def test_client_logs_in_connects_and_syncs(harness: Harness) -> None:
    standin, bot = harness.standin, harness.bot
    assert bot.user is not None and bot.user.id == BOT_ID
    assert bot.application_id == BOT_ID
    guild = bot.get_guild(GUILD_ID)
    assert guild is not None and guild.name == "Paint Club"
    assert {c.name for c in guild.text_channels} == {"general", "gallery", "nsfw-art", "hall-of-fame"}
    assert guild.me is not None and guild.me.guild_permissions.attach_files
    assert guild.get_channel(GENERAL_ID) is not None

    routes = [r.route for r in standin.requests]
    assert "GET /users/@me" in routes and "GET /oauth2/applications/@me" in routes
    guild_sync = await standin.wait_for(
        lambda r: r.route == "PUT /applications/{application_id}/guilds/{guild_id}/commands"
    )
    assert guild_sync.params["guild_id"] == str(GUILD_ID) and guild_sync.status == 200
    assert [c["name"] for c in await standin.wait_for_commands("render", "pick", guild_id=GUILD_ID)] == [
        "render",
        "pick",
    ]
    synced = {c["name"]: c for c in standin.guild_commands[GUILD_ID]}
    assert set(synced) == {
        "render",
        "shout",
        "progress",
        "slow",
        "pick",
        "ballot",
        "note",
        "admin",
        "inspect",
    }
    assert [c["name"] for c in standin.global_commands] == ["hello"]
    assert synced["pick"]["options"][0]["autocomplete"] is True
    assert await standin.wait_for(lambda r: r.route == "PUT /applications/{application_id}/commands")

    identify = next(f["d"] for f in standin.gateway.received if f["op"] == 2)
    assert "token" not in identify
    assert identify["intents"] == discord.Intents.default().value
    assert standin.gateway.heartbeats >= 1  # discord.py beats right after HELLO

    # The token is never kept: not in headers, bodies or gateway frames.
    recorded = json.dumps(
        [[r.headers, r.json, r.query] for r in standin.requests] + list(standin.gateway.received)
    )
    assert TOKEN not in recorded
    assert all(r.authorized for r in standin.requests if r.route != "GET /gateway")


async def test_slash_command_defers_then_follows_up_with_files(harness: Harness) -> None:
    standin = harness.standin
    handle = await standin.send_slash("render", {"prompt": "a lighthouse"})
    assert handle.payload["data"]["options"] == [{"name": "prompt", "type": 3, "value": "a lighthouse"}]

    deferral = await handle.response(timeout=3)
    assert deferral.callback_type == 5 and deferral.status == 200
    assert handle.delay(deferral) < 3.0

    followup = await handle.followup()
    assert followup.status == 200 and followup.query["wait"] == "1"
    assert followup.file_names == ["painting.mp4", "final.png"]
    assert followup.file("painting.mp4").data == VIDEO
    assert followup.file("final.png").data == PICTURE
    assert followup.content == "Here is a lighthouse"
    assert followup.allowed_mentions == {"parse": [], "users": [ALICE_ID], "replied_user": True}

    # Discord semantics: the first follow-up after a deferral replaces the "thinking" message.
    original = handle.original
    assert original is not None and not original.loading and original.content == "Here is a lighthouse"
    assert [a.filename for a in original.attachments] == ["painting.mp4", "final.png"]
    assert original.attachment("painting.mp4").content_type == "video/mp4"
    payload = original.payload(standin.base_url, {})
    assert payload["attachments"][1]["width"] == 48 and payload["attachments"][1]["height"] == 32

    # The client got attachment URLs it can download the exact bytes from.
    assert len(harness.seen.sent_urls) == 2
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.seen.sent_urls[0]) as response:
            assert response.status == 200 and await response.read() == VIDEO


async def test_rate_limited_follow_up_is_waited_out_and_still_arrives(harness: Harness) -> None:
    standin = harness.standin
    standin.rate_limit("POST /webhooks/{application_id}/{token}", times=2, retry_after=0.25)
    handle = await standin.send_slash("render", {"prompt": "rain"})

    followup = await handle.followup(timeout=10)
    limited = [r for r in handle.requests if r.rate_limited]
    assert len(limited) == 2
    assert limited[0].response == {
        "message": "You are being rate limited.",
        "retry_after": 0.25,
        "global": False,
    }
    assert followup.at - limited[0].at >= 0.5  # waited retry_after twice before the accepted attempt
    assert followup.file("painting.mp4").data == VIDEO and followup.status == 200
    assert harness.seen.errors == []


async def test_rate_limited_channel_message_is_waited_out(harness: Harness) -> None:
    # discord.py's bot HTTP client (not the webhook adapter) handles this route's 429.
    standin = harness.standin
    standin.rate_limit("POST /channels/*/messages", times=1, retry_after=0.2)
    mark = standin.mark()
    await standin.send_slash("shout", {"text": "hello channel"})
    posted = await standin.wait_for(lambda r: r.route == "POST /channels/{channel_id}/messages", since=mark)
    first = standin.recorder.matching(lambda r: r.rate_limited, since=mark, include_rate_limited=True)
    assert len(first) == 1 and posted.at - first[0].at >= 0.2
    assert [m.content for m in standin.channel_messages("general")] == ["hello channel"]


async def test_route_bucket_makes_the_client_pace_its_edits(harness: Harness) -> None:
    standin = harness.standin
    standin.limit_route("PATCH /webhooks/*/messages/@original", limit=2, per=0.4)
    handle = await standin.send_slash("progress")
    edits = await handle.wait_for(lambda r: r.method == "PATCH", count=4)
    # The client read X-RateLimit-Remaining: 0 after the second edit and waited for the reset,
    # so no edit was refused, and the third came only after the 0.4 s window.
    assert not [r for r in handle.requests if r.rate_limited]
    assert [r.content for r in edits] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert edits[2].at - edits[0].at >= 0.39
    original = handle.original
    assert original is not None and original.content == "step 4/4" and original.edited is not None


async def test_mentions_follow_allowed_mentions(harness: Harness) -> None:
    standin = harness.standin
    # The careful path: allowed_mentions lets only the requester be pinged.
    handle = await standin.send_slash("render", {"prompt": "@everyone and <@&1300000000000000111>"})
    await handle.followup()
    original = handle.original
    assert original is not None and original.content.startswith("Here is @everyone")
    assert original.mentions.everyone is False and original.mentions.roles == ()

    # The careless path: no allowed_mentions, so @everyone and a user mention really ping.
    mark = standin.mark()
    await standin.send_slash("shout", {"text": f"@everyone look <@{BOB_ID}>"})
    await standin.wait_for(lambda r: r.route == "POST /channels/{channel_id}/messages", since=mark)
    shouted = standin.channel_messages(GENERAL_ID)[-1]
    assert shouted.mentions.everyone is True and shouted.mentions.users == (BOB_ID,)


async def test_autocomplete_gets_choices(harness: Harness) -> None:
    handle = await harness.standin.send_autocomplete("pick", {"fruit": "ap"}, focused="fruit")
    choices = await handle.choices(timeout=5)
    assert choices == [{"name": "apple", "value": "apple"}, {"name": "apricot", "value": "apricot"}]
    option = handle.payload["data"]["options"][0]
    assert option == {"name": "fruit", "type": 3, "value": "ap", "focused": True}
    assert handle.payload["type"] == 4


async def test_component_click_reaches_persistent_view(harness: Harness) -> None:
    standin = harness.standin
    posted = await standin.send_slash("ballot")
    response = await posted.response()
    assert response.callback_type == 4 and not response.ephemeral
    message = posted.original
    assert message is not None
    assert message.components[0]["components"][0]["custom_id"] == "vote:42"

    click = await standin.send_component("vote:42", message=message, user=BOB_ID)
    answer = await click.response(timeout=5)
    assert answer.callback_type == 4 and answer.ephemeral and answer.content == "Vote counted."
    assert harness.seen.clicks == [("vote:42", BOB_ID)]

    with pytest.raises(InteractionBuildError, match="no component"):
        await standin.send_component("vote:999", message=message)


async def test_modal_round_trip(harness: Harness) -> None:
    standin = harness.standin
    opened = await standin.send_slash("note")
    modal = await opened.response()
    assert modal.callback_type == 9 and modal.message["title"] == "A note"
    submitted = await opened.submit_modal({"note_text": "more blue"})
    answer = await submitted.response()
    assert answer.content == "Noted: more blue" and answer.ephemeral
    assert harness.seen.modal_text == ["more blue"]


async def test_expired_token_makes_follow_up_fail_and_channel_fallback_works(harness: Harness) -> None:
    standin, seen = harness.standin, harness.seen
    handle = await standin.send_slash("render", {"prompt": "a long job", "wait": True})
    assert (await handle.response()).callback_type == 5
    handle.expire()
    mark = standin.mark()
    seen.proceed.set()

    rejected = await handle.followup()
    assert rejected.status == 401 and rejected.response == {"message": "Invalid Webhook Token", "code": 50027}
    posted = await standin.wait_for(lambda r: r.route == "POST /channels/{channel_id}/messages", since=mark)
    assert seen.errors == [(401, 50027)]
    assert posted.params["channel_id"] == str(GENERAL_ID)
    assert posted.file("painting.mp4").data == VIDEO
    message = standin.channel_messages("general")[-1]
    assert message.content == f"<@{ALICE_ID}> Here is a long job"
    assert message.mentions.users == (ALICE_ID,) and not message.mentions.everyone


async def test_files_over_the_interaction_limit_are_refused(harness: Harness) -> None:
    standin, seen = harness.standin, harness.seen
    handle = await standin.send_slash("render", {"prompt": "big"}, attachment_size_limit=len(VIDEO) - 1)
    rejected = await handle.followup()
    assert rejected.status == 413 and rejected.response["code"] == 40005
    await standin.wait_for(lambda r: r.route == "POST /channels/{channel_id}/messages")
    assert seen.errors == [(413, 40005)]


async def test_late_callback_is_an_unknown_interaction(harness: Harness) -> None:
    standin = harness.standin
    standin.callback_deadline = 0.1
    handle = await standin.send_slash("slow")
    late = await handle.response()
    assert late.status == 404 and late.response["code"] == 10062
    await asyncio.sleep(0.05)
    assert harness.seen.errors == [(404, 10062)]


async def test_strict_sends_only_what_the_discord_client_would(harness: Harness) -> None:
    standin = harness.standin
    with pytest.raises(InteractionBuildError, match="was not synced"):
        await standin.send_slash("paint", {"prompt": "x"})
    with pytest.raises(InteractionBuildError, match="unknown option"):
        await standin.send_slash("render", {"promt": "x"})
    with pytest.raises(InteractionBuildError, match="required option 'prompt'"):
        await standin.send_slash("render", {})
    with pytest.raises(InteractionBuildError, match="would not offer /admin"):
        await standin.send_slash("admin limit", {"count": 3}, user=ALICE_ID)
    with pytest.raises(InteractionBuildError, match="outside 1..10"):
        await standin.send_slash("admin limit", {"count": 11}, user=MOD_ID)

    allowed = await standin.send_slash("admin limit", {"count": 3}, user=MOD_ID)
    assert (await allowed.response()).content == "limit 3"
    assert allowed.payload["data"]["options"] == [
        {"name": "limit", "type": 1, "options": [{"name": "count", "type": 4, "value": 3}]}
    ]
    # strict=False sends what a modified client could. Worth knowing: discord.py does not
    # re-check Range bounds or default_permissions itself, so a bot must validate on its own.
    forced = await standin.send_slash("admin limit", {"count": 11}, user=ALICE_ID, strict=False)
    assert forced.payload["member"]["user"]["id"] == str(ALICE_ID)
    assert (await forced.response()).content == "limit 11"


async def test_resolved_options_and_dm_interactions(harness: Harness) -> None:
    standin = harness.standin
    handle = await standin.send_slash(
        "inspect", {"who": BOB_ID, "where": "gallery", "file": StandInAttachment("sketch.png", PICTURE)}
    )
    answer = await handle.response()
    assert answer.content == "bob gallery sketch.png " + f"{len(PICTURE)} True"
    resolved = handle.payload["data"]["resolved"]
    assert set(resolved) == {"users", "members", "channels", "attachments"}

    dm = await standin.send_slash("hello", guild=None, user="bob")
    assert "guild_id" not in dm.payload and dm.payload["context"] == 1
    assert (await dm.response()).content == "hello bob in dm"
    in_guild = await standin.send_slash("hello")  # global command, used in the default guild
    assert (await in_guild.response()).content == "hello alice in guild"


async def test_gateway_drop_is_resumed_and_events_are_replayed(harness: Harness) -> None:
    standin = harness.standin
    session = standin.gateway.current
    assert session is not None
    await standin.drop_gateway()
    handle = await standin.send_slash("pick", {"fruit": "cherry"})  # waits for the RESUME
    assert (await handle.response()).content == "You picked cherry"
    assert session.resumes == 1 and standin.gateway.current is session


async def test_unknown_routes_and_bad_tokens_are_loud() -> None:
    async with DiscordStandIn(token=TOKEN) as standin:
        headers = {"Authorization": f"Bot {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{standin.api_base}/guilds/1/audit-logs", headers=headers) as response:
                assert response.status == 404
                assert await response.json() == {"message": "404: Not Found", "code": 0}
            async with session.get(
                f"{standin.api_base}/users/@me", headers={"Authorization": "Bot wrong"}
            ) as response:
                assert response.status == 401
            async with session.post(
                f"{standin.api_base}/webhooks/{BOT_ID}/nope", json={"content": "x"}
            ) as response:
                assert response.status == 401 and (await response.json())["code"] == 50027
            async with session.put(
                f"{standin.api_base}/applications/{BOT_ID}/commands",
                headers=headers,
                json=[{"name": "Bad Name", "description": "x"}],
            ) as response:
                body = await response.json()
                assert response.status == 400 and body["code"] == 50035 and "0" in body["errors"]
        assert [r.path for r in standin.unknown_requests] == ["/guilds/1/audit-logs"]
        with pytest.raises(AssertionError, match="unknown route GET /guilds/1/audit-logs"):
            standin.assert_clean()
