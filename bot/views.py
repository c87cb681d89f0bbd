"""Persistent buttons and menus: the ``custom_id`` carries what they act on, so they outlive restarts.

Each control is a :class:`discord.ui.DynamicItem` whose ``custom_id`` encodes a result id
(``lp:repaint:K3F97QXM``), a job id (``lp:cancel:42``), a gallery entry id (``lp:vote:12``)
or a page. discord.py rebuilds the item from the ``custom_id`` of every click, so a message
the bot sent before a restart still works, with no per-message state kept anywhere. The
items only parse and route: the cog of each feature does the work, and errors are answered
by :func:`bot.cogs.common.reports_errors`.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.cogs.common import painter_bot, reports_errors
from bot.config import EFFECTS

RESULT_ID = r"(?P<rid>[0-9A-Z]{8})"
EFFECT_DESCRIPTIONS = {
    "strokes": "Brush strokes, outline first",
    "glow": "Changes light up as they appear",
    "flip": "Cells flip to their final colour",
    "fade": "A smooth cross-fade",
    "dissolve": "Cells dissolve in, busiest first",
    "sharpen": "The plain denoising sequence",
}
VOTE = "▲"


def _cog(interaction: discord.Interaction, name: str) -> Any:
    cog = painter_bot(interaction).get_cog(name)
    if cog is None:
        raise RuntimeError(f"the {name} cog is not loaded")
    return cog


class RepaintSelect(discord.ui.DynamicItem[discord.ui.Select], template=rf"lp:repaint:{RESULT_ID}"):
    """ "Repaint with…": the same trail painted again with another effect."""

    def __init__(self, public_id: str) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=f"lp:repaint:{public_id}",
                placeholder="Repaint with…",
                options=[
                    discord.SelectOption(label=e, value=e, description=EFFECT_DESCRIPTIONS[e])
                    for e in EFFECTS
                ],
                row=0,
            )
        )
        self.public_id = public_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(match["rid"])

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        from bot.cogs.transition import source_for_button

        # A result the safety checker flagged is not repainted where it may not be shown.
        await source_for_button(interaction, self.public_id, "repaint")
        await _cog(interaction, "Paint").repaint(interaction, self.public_id, self.item.values[0])


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lp:cancel:(?P<job>[0-9]{1,18})"):
    """ "Cancel" under a job's progress reply: its requester takes the job back."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel", style=discord.ButtonStyle.secondary, custom_id=f"lp:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(int(match["job"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "Paint").cancel(interaction, self.job_id)


class TransitionButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"lp:transition:{RESULT_ID}"):
    """ "Transition from this": asks for the destination in a modal."""

    def __init__(self, public_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Transition from this",
                style=discord.ButtonStyle.secondary,
                custom_id=f"lp:transition:{public_id}",
                row=1,
            )
        )
        self.public_id = public_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(match["rid"])

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        # The member may not use this result (or it is gone): say so before they type anything.
        await _cog(interaction, "Transition").open_modal(interaction, self.public_id)


class SubmitButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"lp:submit:{RESULT_ID}"):
    """ "Add to gallery": the owner puts the result into this server's gallery."""

    def __init__(self, public_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Add to gallery",
                style=discord.ButtonStyle.primary,
                custom_id=f"lp:submit:{public_id}",
                row=1,
            )
        )
        self.public_id = public_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(match["rid"])

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "Gallery").submit(interaction, self.public_id)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"lp:delete:{RESULT_ID}"):
    """ "Delete": the owner takes the result message down."""

    def __init__(self, public_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete", style=discord.ButtonStyle.danger, custom_id=f"lp:delete:{public_id}", row=1
            )
        )
        self.public_id = public_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(match["rid"])

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "History").delete_result_message(interaction, self.public_id)


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lp:vote:(?P<entry>[0-9]{1,18})"):
    """A vote on a gallery entry: one per member, a second click takes it back."""

    def __init__(self, entry_id: int, votes: int = 0, caption: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                label=vote_label(votes, caption),
                style=discord.ButtonStyle.success,
                custom_id=f"lp:vote:{entry_id}",
            )
        )
        self.entry_id = entry_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(int(match["entry"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "Gallery").vote(interaction, self.entry_id)


class HistoryPageButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"lp:history:(?P<page>[0-9]{1,6})"
):
    """Previous/next page of /history (the clicking member's own history)."""

    def __init__(self, page: int, label: str = "Page", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"lp:history:{page}",
                disabled=disabled,
            )
        )
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(int(match["page"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "History").turn_page(interaction, self.page)


class GalleryPageButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"lp:gallery:(?P<sort>new|top):(?P<page>[0-9]{1,6})"
):
    """Previous/next page of /gallery show."""

    def __init__(self, sort: str, page: int, label: str = "Page", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"lp:gallery:{sort}:{page}",
                disabled=disabled,
                row=1,
            )
        )
        self.sort = sort
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ):  # type: ignore[override]
        return cls(match["sort"], int(match["page"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await _cog(interaction, "Gallery").turn_page(interaction, self.sort, self.page)


TRANSITION_MODAL = re.compile(rf"lp:transition-modal:{RESULT_ID}")


class TransitionModal(discord.ui.Modal, title="Transition from this result"):
    """Asks for the destination of a transition that starts at a result message's result.

    Like the buttons, it is persistent: its ``custom_id`` (``lp:transition-modal:K3F97QXM``)
    names the source, and the submission is answered by the Transition cog's listener
    (:data:`TRANSITION_MODAL`), so a form submitted after a restart, or however long the
    member took to type, is still answered. discord.py keeps no copy of it.
    """

    destination = discord.ui.TextInput(
        label="Result to end on (its id, see /history)", min_length=1, max_length=32, custom_id="destination"
    )

    def __init__(self, public_id: str) -> None:
        super().__init__(timeout=None, custom_id=f"lp:transition-modal:{public_id}")
        self.public_id = public_id
        # Not kept in discord.py's modal store (which would answer only until a restart).
        self.stop()


def submitted_values(data: Any) -> dict[str, str]:
    """A modal submission's text inputs, ``custom_id`` → value (rows and labels unwrapped)."""
    values: dict[str, str] = {}

    def walk(components: Any) -> None:
        for component in components or ():
            if "custom_id" in component and "value" in component:
                values[component["custom_id"]] = str(component["value"])
            walk(component.get("components"))
            if isinstance(component.get("component"), dict):
                walk([component["component"]])

    walk((data or {}).get("components"))
    return values


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    RepaintSelect,
    TransitionButton,
    CancelButton,
    SubmitButton,
    DeleteButton,
    VoteButton,
    HistoryPageButton,
    GalleryPageButton,
)


def vote_label(votes: int, caption: str = "") -> str:
    """``▲ 3`` or ``▲ 3 · K3F97QXM``."""
    return f"{VOTE} {votes}" + (f" · {caption}" if caption else "")


def _inert(view: discord.ui.View) -> discord.ui.View:
    # Every item is persistent through its custom_id; a stopped view is sent as components
    # but not kept in discord.py's per-message view store, which would only grow.
    view.stop()
    return view


def result_view(public_id: str, *, in_guild: bool = True, has_trail: bool = True) -> discord.ui.View:
    """The controls under a delivered result.

    "Repaint with…" and "Transition from this" need the result's trail: a result without
    one (a transition) does not get controls that could only refuse.
    """
    view = discord.ui.View(timeout=None)
    if has_trail:
        view.add_item(RepaintSelect(public_id))
        view.add_item(TransitionButton(public_id))
    if in_guild:
        view.add_item(SubmitButton(public_id))
    view.add_item(DeleteButton(public_id))
    return _inert(view)


def cancel_view(job_id: int) -> discord.ui.View:
    """The Cancel button under a live job's progress reply."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return _inert(view)


def history_view(page: int, pages: int) -> discord.ui.View:
    """Previous/next buttons of a history page."""
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPageButton(page - 1, "◀ Newer", disabled=page <= 1))
    view.add_item(HistoryPageButton(page + 1, "Older ▶", disabled=page >= pages))
    return _inert(view)


def gallery_view(entries: list[tuple[int, int, str]], sort: str, page: int, pages: int) -> discord.ui.View:
    """Vote buttons for ``(entry_id, votes, caption)`` entries, then page buttons."""
    view = discord.ui.View(timeout=None)
    for entry_id, votes, caption in entries[:5]:
        view.add_item(VoteButton(entry_id, votes, caption))
    view.add_item(GalleryPageButton(sort, page - 1, "◀ Previous", disabled=page <= 1))
    view.add_item(GalleryPageButton(sort, page + 1, "Next ▶", disabled=page >= pages))
    return _inert(view)


def vote_view(entry_id: int, votes: int) -> discord.ui.View:
    """The single vote button under a gallery post."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(entry_id, votes))
    return _inert(view)


def with_vote_count(message: discord.Message, entry_id: int, votes: int) -> discord.ui.View:
    """The message's own components again, with one entry's vote count changed."""
    view = discord.ui.View.from_message(message, timeout=None)
    wanted = f"lp:vote:{entry_id}"
    for item in view.children:
        if isinstance(item, discord.ui.Button) and item.custom_id == wanted:
            caption = (item.label or "").split(" · ", 1)[1] if " · " in (item.label or "") else ""
            item.label = vote_label(votes, caption)
    return _inert(view)
