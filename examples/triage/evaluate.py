"""Triage the held-out tickets through the API and score each field.

Each ticket goes to ``/v1/chat/completions`` as a user would send it — the screenshot as an
``image_url`` data URL, the spoken note as ``input_audio`` WAV, the ticket's text — with
``response_format`` asking for the triage JSON schema (``schema.json``), so the answer always parses.
Accuracy per field is exact match; the summary is also scored by word overlap (F1).

    polymodal serve triage/ft/run --model-name triage &
    python examples/triage/evaluate.py --data triage/data --endpoint http://127.0.0.1:8000/v1 --model triage
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FIELDS = ("category", "priority", "summary", "evidence.screenshot", "evidence.voice", "evidence.text")


def triage(  # noqa: ANN001
    client, model: str, schema: dict, screenshot: bytes, note: bytes, text: str
) -> tuple[dict | None, str]:
    """One ticket through the API: the triage as a dict (None when the reply does not parse: cut by
    ``max_tokens``), and the reply's finish reason."""
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(screenshot).decode()}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(note).decode(), "format": "wav"}},
        {"type": "text", "text": text},
    ]
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=400,
        response_format={"type": "json_schema", "json_schema": {"name": "triage", "schema": schema, "strict": True}},
    )  # fmt: skip
    choice = reply.choices[0]
    try:
        return json.loads(choice.message.content), choice.finish_reason
    except json.JSONDecodeError:  # cut by max_tokens: a prefix of the object, counted (every field wrong)
        return None, choice.finish_reason


def blank_png(size: int = 32) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (245, 245, 245)).save(out, format="PNG")
    return out.getvalue()


def silent_wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def field(answer: dict, name: str) -> str:
    for key in name.split("."):
        answer = answer.get(key, {}) if isinstance(answer, dict) else {}
    return answer if isinstance(answer, str) else ""


def overlap(a: str, b: str) -> float:
    x, y = a.lower().split(), b.lower().split()
    common = sum(min(x.count(w), y.count(w)) for w in set(x))
    return 0.0 if not common else 2 * common / (len(x) + len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="The folder make_data.py wrote.")
    parser.add_argument("--endpoint", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="triage")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--without",
        choices=["screenshot", "note"],
        help="Send a blank page / a silent note instead: what the fields owe to that input.",
    )
    parser.add_argument("--json", type=Path, help="Write the scores and every answer here.")
    args = parser.parse_args()
    import openai

    client = openai.OpenAI(base_url=args.endpoint, api_key=args.api_key, max_retries=0, timeout=120)
    schema = json.loads((args.data / "schema.json").read_text(encoding="utf-8"))
    tickets = [json.loads(line) for line in (args.data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    tickets = tickets[: args.limit]

    def one(ticket: dict) -> tuple[dict, dict]:
        user, assistant = ticket["messages"]
        image, audio, text = user["content"]
        truth = json.loads(assistant["content"][0]["text"])
        picture, note = (args.data / image["path"]).read_bytes(), (args.data / audio["path"]).read_bytes()
        if args.without == "screenshot":
            picture = blank_png()
        elif args.without == "note":
            note = silent_wav(seconds=1.0)
        answer, finish = triage(client, args.model, schema, picture, note, text["text"])
        return truth, answer, finish

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, tickets))
    # an answer that does not parse scores every field wrong: it stays in the denominator
    scores = {name: sum(field(a or {}, name) == field(t, name) for t, a, _ in results) / len(results)
              for name in FIELDS}  # fmt: skip
    f1 = [overlap(field(a or {}, "summary"), field(t, "summary")) for t, a, _ in results]
    scores["summary word F1"] = sum(f1) / len(f1)
    unparsed = sum(a is None for _, a, _ in results)
    for name, value in scores.items():
        print(f"{name:<22} {value:6.1%}")
    print(f"{'answers parsed':<22} {len(results) - unparsed} of {len(results)}")
    if args.json:
        answers = [{"truth": t, "answer": a, "finish_reason": f} for t, a, f in results]
        report = {"tickets": len(results), "unparsed": unparsed, "scores": scores, "answers": answers}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
