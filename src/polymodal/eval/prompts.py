"""What each item is asked: the prompts of a task under every rotation and media condition.

A multiple-choice item is asked once per rotation of its options (circular evaluation) under three
*conditions*:

* ``with_media``: the item as written;
* ``no_media``: the same prompt with every media part removed (the blind baseline: what can be
  answered from the text alone);
* ``swapped_media``: the media of another item of the task put in its place (the next item, in file
  order and cyclically, whose media are of the same kinds; an item with no such partner is not
  asked). A model that really reads the media should do worse here than without any.

Text and transcription items are asked once, with their media. A prompt is the item's media parts in
order followed by the task's template rendered with ``{question}`` and ``{options}``; it becomes a
:class:`~polymodal.content.Document` (a user turn, or a plain document) only when it is asked, so
media files are opened late.

This module knows nothing about models or scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from polymodal.content import Document, Part, Text
from polymodal.eval.scoring import Rotation, format_options, rotations
from polymodal.eval.tasks import Item, MediaRef, Task

CONDITIONS: tuple[str, ...] = ("with_media", "no_media", "swapped_media")


@dataclass(frozen=True)
class Prompt:
    """One question put to the model: which item, condition and rotation, and its parts."""

    task: str
    item_id: str
    condition: str
    rotation: Rotation | None  # None for items without options
    media: tuple[MediaRef, ...]
    text: str
    chat: bool

    def document(self, open_media: Callable[[MediaRef], Part]) -> Document:
        """The prompt as a document; ``open_media`` reads (or fetches from a cache) each media part."""
        parts: list[Part] = [open_media(m) for m in self.media]
        if self.text or not parts:
            parts.append(Text(self.text))
        return Document.chat(("user", parts)) if self.chat else Document.of(*parts)


def render_text(task: Task, item: Item, rotation: Rotation | None) -> str:
    """The task's template filled in for ``item`` (options in ``rotation``'s order)."""
    fields = {"question": item.question}
    if rotation is not None:
        fields["options"] = format_options(rotation.options)
    return task.spec.prompt.format(**fields).strip()


def swap_partners(items: tuple[Item, ...]) -> dict[str, Item]:
    """For each item, the item whose media it is shown under ``swapped_media`` (see the module docstring)."""
    partners = {}
    signature = [tuple(m.kind for m in item.media) for item in items]
    for k, item in enumerate(items):
        if not signature[k]:
            continue
        for step in range(1, len(items)):
            other = (k + step) % len(items)
            if signature[other] == signature[k] and items[other].media != item.media:
                partners[item.id] = items[other]
                break
    return partners


def task_prompts(task: Task, *, blind: bool = True) -> list[Prompt]:
    """Every prompt of a task, item by item (an item's rotations and conditions side by side)."""
    multiple_choice = task.spec.output == "multiple_choice"
    conditions = CONDITIONS if multiple_choice and blind else ("with_media",)
    partners = swap_partners(task.items) if "swapped_media" in conditions else {}
    prompts = []
    for item in task.items:
        passes = rotations(item.options, item.answer_index) if multiple_choice else [None]
        for condition in conditions:
            if condition == "swapped_media" and item.id not in partners:
                continue
            if condition == "with_media":
                media = item.media
            elif condition == "no_media":
                media = ()
            else:
                media = partners[item.id].media
            for rotation in passes:
                text = render_text(task, item, rotation)
                prompts.append(Prompt(task.name, item.id, condition, rotation, media, text, task.spec.chat))
    return prompts
