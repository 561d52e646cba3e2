"""The worked example of docs/finetune.md: a folder of pictures (one shape each, 32 px) captioned with
the colour alone, as a user would make one, and 60 held-out pictures as an evaluation task.

    python examples/finetune_colours/make_data.py colours     # colours/train/ and colours/colour-task/
"""

import json
import sys
from pathlib import Path

import numpy as np

from polymodal.data.shapes.render import render_scene
from polymodal.eval.attributes import draw_scene

root = Path(sys.argv[1])
rng = np.random.default_rng(123)
for split, n in (("train", 400), ("test", 60)):
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        scene = draw_scene(rng)
        obj = scene.objects[0]
        render_scene(scene, size=32).pixels.save(folder / f"{k:04d}.png")
        rows.append({"file": f"{k:04d}.png", "text": obj.colour})
    if split == "train":
        (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        task = root / "colour-task"
        (task / "img").mkdir(parents=True, exist_ok=True)
        items = []
        for r in rows:
            (task / "img" / r["file"]).write_bytes((folder / r["file"]).read_bytes())
            items.append({"id": r["file"][:-4], "input": [{"image": "img/" + r["file"]}], "answer": r["text"]})
        (task / "task.json").write_text(
            json.dumps(
                {
                    "name": "colour-word",
                    "output": "text",
                    "metric": "exact_match",
                    "prompt": "",
                    "chat": False,
                    "max_new_tokens": 3,
                }
            )
        )
        (task / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
print(f"{root}/train: 400 captioned pictures; {root}/colour-task: 60 held-out items")
