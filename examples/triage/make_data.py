"""A small generated dataset of support tickets: a screenshot, a spoken note and a text each, and the
triage a service should return as JSON (category, priority, summary, and what each input showed).

The category is in the text ("I was charged twice" → billing), the priority in the spoken note ("this
is urgent" → high), and the screenshot shows an error, a warning or a normal screen (a red, yellow or
blue banner over the page). Spoken notes are eSpeak NG speech (``pip``'s espeakng-loader, no download).

    python examples/triage/make_data.py --out triage/data      # train.jsonl (600), test.jsonl (100), media/
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from polymodal.content import Document, Image
from polymodal.data.shapes.speech import random_voice, speak

CATEGORIES = {
    "billing": ["charged twice this month", "the invoice shows the wrong amount", "my refund never arrived"],
    "bug": ["the app crashes when I save", "the page shows an error", "uploads fail every time"],
    "account": ["I cannot log in", "I forgot my password", "my account is locked"],
    "feature": ["please add a dark mode", "I would like an export button", "add more languages please"],
}
PRIORITIES = {
    "high": ["this is urgent", "we are blocked right now"],
    "medium": ["please look at this soon", "it happens now and then"],
    "low": ["no rush at all", "whenever you have time"],
}
SCREENS = {"error": (220, 30, 30), "warning": (235, 200, 20), "normal": (40, 90, 220)}
SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["category", "priority", "summary", "evidence"],
    "properties": {
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "summary": {"type": "string", "maxLength": 60},
        "evidence": {
            "type": "object", "additionalProperties": False, "required": ["screenshot", "voice", "text"],
            "properties": {"screenshot": {"type": "string", "enum": [f"{s} screen" for s in SCREENS]},
                           "voice": {"type": "string", "maxLength": 40}, "text": {"type": "string", "maxLength": 60}},
        },
    },
}  # fmt: skip
INSTRUCTION = "Triage this ticket as JSON."


def screenshot(screen: str, rng: random.Random, size: int = 32) -> Image:
    """A page: a coloured banner on top (the screen's state), grey text lines and a button below."""
    page = PILImage.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, size, size // 3), fill=SCREENS[screen])
    for y in range(size // 3 + 3, size - 6, 4):
        draw.line((3, y, rng.randint(size // 2, size - 3), y), fill=(150, 150, 150))
    x = rng.randint(3, size - 12)
    draw.rectangle((x, size - 6, x + 9, size - 2), fill=(90, 90, 90))
    return Image(page)


def ticket(rng: random.Random) -> tuple[dict, str, str, str]:
    category = rng.choice(list(CATEGORIES))
    priority = rng.choice(list(PRIORITIES))
    screen = rng.choice(["error", "warning"]) if category == "bug" else rng.choice(["normal", "normal", "warning"])
    text, note = rng.choice(CATEGORIES[category]), rng.choice(PRIORITIES[priority])
    triage = {"category": category, "priority": priority, "summary": f"{category}: {text}",
              "evidence": {"screenshot": f"{screen} screen", "voice": note, "text": text}}  # fmt: skip
    return triage, screen, note, text


def write(out: Path, name: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for k in range(n):
        triage, screen, note, text = ticket(rng)
        voice = random_voice(np.random.default_rng(rng.randrange(2**32)))  # a different speaker each time
        user = [screenshot(screen, rng), speak(note, voice), f"{INSTRUCTION} Ticket: {text}"]
        document = Document.chat(("user", user), ("assistant", json.dumps(triage, separators=(",", ":"))))
        lines.append(json.dumps(document.to_json(media_dir=out / "media" / name / f"{k:04d}", relative_to=out)))
    (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, "train", args.train, seed=0)
    write(args.out, "test", args.test, seed=1)
    (args.out / "schema.json").write_text(json.dumps(SCHEMA, indent=2) + "\n", encoding="utf-8")
    print(f"{args.out}: {args.train} training and {args.test} test tickets, schema.json")


if __name__ == "__main__":
    main()
