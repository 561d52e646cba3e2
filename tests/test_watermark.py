"""Keyed watermarks: found after the edits they are meant to survive, absent from what was never
marked or was marked with another key, and said by the command line."""

import io
import itertools

import numpy as np
import soundfile as sf
from PIL import Image as PILImage
from typer.testing import CliRunner

from polymodal import watermark as W
from polymodal.cli import app
from polymodal.content import Audio, Image
from polymodal.data.shapes import iter_scene_images
from polymodal.data.shapes.speech import speak


def jpeg(image: Image, quality: int = 75) -> Image:
    out = io.BytesIO()
    image.pixels.save(out, format="JPEG", quality=quality)
    return Image(PILImage.open(io.BytesIO(out.getvalue())).convert("RGB"))


def test_an_image_mark_survives_jpeg_resizing_and_cropping():
    for scene in itertools.islice(iter_scene_images(4, size=128, split="test"), 3):
        marked = W.mark_image(scene, "k")
        a, b = np.asarray(scene.pixels, np.float32), np.asarray(marked.pixels, np.float32)
        assert 10 * np.log10(255**2 / np.mean((a - b) ** 2)) > 37  # invisible: PSNR above 37 dB
        half = Image(marked.pixels.resize((64, 64), PILImage.LANCZOS))
        cropped = Image(marked.pixels.crop((13, 9, 128, 128)))
        for edited in (marked, jpeg(marked), half, cropped):
            assert W.image_score(edited, "k") > W.THRESHOLD
        assert W.image_score(scene, "k") < W.THRESHOLD and W.image_score(marked, "another key") < W.THRESHOLD


def test_an_audio_mark_survives_lossy_coding_and_cuts_and_marks_streamed_pieces_as_one():
    speech = speak("the red circle is on the left of the blue square and the green star is small")
    marked = W.mark_audio(speech, "k")
    out = io.BytesIO()
    sf.write(out, marked.waveform[0], marked.sample_rate, format="OGG", subtype="VORBIS")
    cut = Audio(marked.waveform[:, 12_345:], marked.sample_rate)
    for edited in (marked, Audio.from_bytes(out.getvalue()), cut):
        assert W.audio_score(edited, "k") > W.THRESHOLD
    assert W.audio_score(speech, "k") < W.THRESHOLD and W.audio_score(marked, "another key") < W.THRESHOLD
    # a clip marked piece by piece as it streams (0.4 s pieces, each told where it starts) is one marked clip
    wave, step = W._mono16k(speech), 6400
    pieces = [W.mark_audio(Audio(wave[None, k : k + step], 16000), "k", offset=k).waveform[0]
              for k in range(0, len(wave), step)]  # fmt: skip
    assert W.audio_score(Audio(np.concatenate(pieces)[None], 16000), "k") > W.THRESHOLD


def test_the_command_line_says_present_or_absent(tmp_path):
    scene = next(iter(iter_scene_images(5, size=128, split="test")))
    W.mark_image(scene, "k").pixels.save(tmp_path / "marked.png")
    scene.pixels.save(tmp_path / "plain.png")
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(app, ["watermark", "detect", str(tmp_path / "marked.png"), str(tmp_path / "plain.png"),
                                      "--key", "k", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [__import__("json").loads(line) for line in result.output.splitlines()]
    assert [r["present"] for r in rows] == [True, False] and rows[0]["score"] > W.THRESHOLD
    bad = CliRunner().invoke(app, ["watermark", "detect", str(tmp_path / "notes.txt")])
    assert bad.exit_code != 0 and "not an image or audio file" in bad.output
