"""polymodal.data.readers: the user's own captions, transcripts, videos and documents JSONL.

Every file is written by the test itself (PNG with Pillow, WAV with soundfile, MP4 through
tests/media_factory.py), and every reader's output is checked by value: the text, the image size
and pixels, the audio's duration, the video's frame colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from media_factory import SECOND_COLOURS, gradient_rgb, pick_codec, sine, write_audio, write_image, write_video
from polymodal.content import Audio, Document, Image, MediaLimits, Message, Text, Video, check_media_file
from polymodal.data.readers import (
    SourceSummary,
    check_source,
    directions_of,
    read_audio_transcripts,
    read_documents,
    read_image_captions,
    read_jsonl_documents,
    read_video_captions,
)
from polymodal.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaTooLargeError, UnsupportedMediaError

RATE = 16_000


def png(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, gradient_rgb(height, width), "PNG")


def wav(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_audio(path, sine(seconds, RATE)[None], RATE, "WAV", "PCM_16")


def jsonl(path: Path, *rows: dict | str) -> Path:
    """One line per row: dicts as JSON, strings as they are (for broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of two images (one in a subfolder) and captions.jsonl."""
    png(tmp_path / "cat.png", 20, 10)
    png(tmp_path / "pets" / "dog.png", 8, 12)
    jsonl(tmp_path / "captions.jsonl", {"file": "cat.png", "text": "a cat"}, {"file": "pets/dog.png", "text": "a dog"})
    return tmp_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 2 s MP4, 5 fps: red for a second, then green."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    return write_video(path, container="mp4", video_codec=pick_codec("mpeg4", "libx264"), seconds=2, fps=5, size=16)


# -- the formats, read back by value ---------------------------------------------------------------


def test_image_captions_jsonl(images):
    docs = list(read_documents(images))
    assert [d.parts[1] for d in docs] == [Text("a cat"), Text("a dog")]
    assert [d.parts[0].size for d in docs] == [(20, 10), (8, 12)]
    assert docs[0].parts[0] == Image.from_array(gradient_rgb(10, 20))
    assert not docs[0].is_chat and len(docs[0].parts) == 2
    assert docs == list(read_image_captions(images)) == list(read_image_captions(images / "captions.jsonl"))

    summary = check_source(images)
    assert summary == SourceSummary(
        "image_captions", images, images / "captions.jsonl", 2, ("image", "text"), ("image->text",)
    )
    assert str(summary).startswith("image_captions: 2 documents from ")


def test_image_captions_csv(tmp_path):
    png(tmp_path / "a.png", 4, 4)
    png(tmp_path / "b b.png", 6, 2)
    # Excel's BOM, spaces after commas, a quoted caption holding a comma and a line break
    csv = '\ufefffile, text\na.png, "red, round"\n\n"b b.png","two\nlines"\n'
    (tmp_path / "captions.csv").write_text(csv, encoding="utf-8")
    docs = list(read_documents(tmp_path))
    assert [(d.parts[0].size, d.parts[1].text) for d in docs] == [((4, 4), "red, round"), ((6, 2), "two\nlines")]
    assert check_source(tmp_path).items == 2


def test_text_to_image_and_chats(images):
    first = next(read_image_captions(images, direction="text->image"))
    assert [type(p) for p in first.parts] == [Text, Image] and first.parts[0].text == "a cat"
    assert check_source(images, direction="text->image").directions == ("text->image",)

    chat = next(read_image_captions(images, as_chat=True, instruction="Describe the picture."))
    assert [m.role for m in chat.messages] == ["user", "assistant"]
    assert chat.messages[0].parts[1] == Text("Describe the picture.") and chat.messages[0].parts[0].size == (20, 10)
    assert chat.messages[1].parts == (Text("a cat"),)
    assert check_source(images, as_chat=True, instruction="Describe.").directions == ("image+text->text",)

    drawn = next(read_documents(images, direction="text->image", as_chat=True))
    assert drawn.messages[0].parts == (Text("a cat"),) and isinstance(drawn.messages[1].parts[0], Image)
    assert check_source(images, direction="text->image", as_chat=True).directions == ("text->image",)


def test_caption_documents_train_their_target_unless_told_all(images, tmp_path):
    """image->text: the picture is context, the caption the target; text->image the other way round;
    learn="all" trains both (the plain document of old). The directions are the same either way."""
    doc = next(read_documents(images))
    assert [m.learn for m in doc.messages] == [False, None] and isinstance(doc.messages[0].parts[0], Image)
    drawn = next(read_documents(images, direction="text->image"))
    assert [m.learn for m in drawn.messages] == [False, None] and drawn.messages[1].parts[0].size == (20, 10)
    both = next(read_documents(images, learn="all"))
    assert both == Document.of(doc.parts[0], "a cat") and both.parts == doc.parts
    assert check_source(images, learn="all").directions == check_source(images).directions == ("image->text",)
    with pytest.raises(ConfigError, match="learn must be one of target, all"):
        check_source(images, learn="media")
    with pytest.raises(ConfigError, match="learn='all' is for plain caption documents"):
        check_source(images, learn="all", as_chat=True)
    # a documents JSONL says it per message, and a document saved with it reads back the same
    path = jsonl(tmp_path / "docs.jsonl", doc.to_json(media_dir=tmp_path / "m", relative_to=tmp_path))
    assert list(read_documents(path)) == [doc]
    assert directions_of(Document((Message(None, ("a",), learn=False), Message(None, (doc.parts[0],))))) == (
        "text->image",
    )
    bad = jsonl(tmp_path / "bad.jsonl", {"messages": [{"content": "x", "learn": "yes"}]})
    with pytest.raises(ConfigError, match=r"messages\[0\].learn: expected true, false or null"):
        check_source(bad)


def test_audio_transcripts(tmp_path):
    wav(tmp_path / "one.wav", 0.5)
    wav(tmp_path / "two.wav", 0.25)
    (tmp_path / "transcripts.csv").write_text("text,file\nhello there,one.wav\ngood bye,two.wav\n")
    docs = list(read_documents(tmp_path))
    assert [(type(d.parts[0]), d.parts[0].duration, d.parts[1].text) for d in docs] == [
        (Audio, 0.5, "hello there"),
        (Audio, 0.25, "good bye"),
    ]
    assert docs[0].parts[0].sample_rate == RATE
    summary = check_source(tmp_path)
    assert (summary.format, summary.items, summary.modalities) == ("audio_transcripts", 2, ("audio", "text"))
    assert summary.directions == ("audio->text",)

    spoken = list(read_audio_transcripts(tmp_path, direction="text->speech"))
    assert [(d.parts[0].text, d.parts[1].duration) for d in spoken] == [("hello there", 0.5), ("good bye", 0.25)]
    assert check_source(tmp_path, direction="text->speech").directions == ("text->audio",)


def test_audio_in_a_captions_folder_is_detected_by_extension(tmp_path):
    wav(tmp_path / "bark.wav", 0.25)
    jsonl(tmp_path / "captions.jsonl", {"file": "bark.wav", "text": "a dog barks"})
    assert check_source(tmp_path).format == "audio_transcripts"
    (doc,) = read_documents(tmp_path)
    assert doc.parts[0].duration == 0.25 and doc.parts[1] == Text("a dog barks")


def test_video_captions_pass_fps_and_max_frames_to_the_video_reader(tmp_path, clip):
    (tmp_path / "clip.mp4").write_bytes(clip.read_bytes())
    jsonl(tmp_path / "captions.jsonl", {"file": "clip.mp4", "text": "red, then green"})
    summary = check_source(tmp_path, fps=2)
    assert (summary.format, summary.items, summary.directions) == ("video_captions", 1, ("video->text",))

    (doc,) = read_documents(tmp_path)  # Video.open's default: 1 fps
    video, caption = doc.parts
    assert isinstance(video, Video) and caption == Text("red, then green")
    assert [f.time for f in video.frames] == [0.0, 1.0] and video.duration == pytest.approx(2.0, abs=0.05)
    for frame, colour in zip(video.frames, SECOND_COLOURS, strict=False):
        assert np.abs(frame.image.to_array().astype(int) - colour).mean() < 20

    (doc,) = read_video_captions(tmp_path, fps=2, max_frames=4)
    assert [f.time for f in doc.parts[0].frames] == [0.0, 0.6, 1.0, 1.6]  # a 5 fps source: 0.5 s falls on 0.6 s
    with pytest.raises(MediaTooLargeError, match=r"over the limit of 3 \(max_frames\).*captions.jsonl:1"):
        next(read_video_captions(tmp_path, fps=2, max_frames=3))


def test_documents_jsonl_round_trip(tmp_path):
    png(tmp_path / "src" / "square.png", 6, 6)
    wav(tmp_path / "src" / "tone.wav", 0.25)
    originals = [
        Document.of(
            "A square:",
            Image.open(tmp_path / "src" / "square.png"),
            "and its tone",
            Audio.open(tmp_path / "src" / "tone.wav"),
        ),
        Document.chat(
            ("user", [Image.open(tmp_path / "src" / "square.png"), "What is this?"]), ("assistant", "a square")
        ),
    ]
    data = tmp_path / "data"
    lines = [d.to_json(media_dir=data / "media" / str(i), relative_to=data) for i, d in enumerate(originals)]
    path = jsonl(data / "train.jsonl", lines[0], "", {"parts": "just text"}, lines[1])  # a blank line is skipped
    docs = list(read_documents(path))
    assert docs == [originals[0], Document.of("just text"), originals[1]]
    assert docs[0].parts[3].duration == 0.25 and docs[2].messages[0].parts[0].size == (6, 6)
    assert list(read_jsonl_documents(path)) == docs

    summary = check_source(path)
    assert (summary.format, summary.source, summary.index, summary.items) == ("documents", path, path, 3)
    assert summary.modalities == ("audio", "image", "text")
    assert summary.directions == ("image+text->audio", "image+text->text", "text->image")


def test_documents_jsonl_with_a_video_path(tmp_path, clip):
    path = jsonl(
        tmp_path / "videos.jsonl",
        {"parts": [{"type": "video", "path": str(clip), "fps": 2}, {"type": "text", "text": "a clip"}]},
    )
    (doc,) = read_documents(path)
    assert doc.parts[0].num_frames == 4 and doc.parts[1] == Text("a clip")
    assert check_source(path).directions == ("video->text",)


def test_directions_of():
    image = Image.from_array(gradient_rgb(2, 2))
    assert directions_of(Document.of("text only")) == ()
    assert directions_of(Document.of(image, "a caption")) == ("image->text",)
    assert directions_of(Document.chat(("system", "be brief"), ("user", image), ("assistant", ["a", image]))) == (
        "image+text->image",
        "image+text->text",
    )


def test_check_json_checks_everything_but_decodes_nothing(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    obj = {"messages": [{"role": "user", "content": [{"type": "image", "path": "broken.png", "detail": "low"}]}]}
    shape = Document.check_json(obj, base_dir=tmp_path)
    assert shape.is_chat and shape.messages[0].parts[0].source == str(tmp_path / "broken.png")
    with pytest.raises(CorruptMediaError):
        Document.from_json(obj, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"parts\[0\]\.path: .*gone\.png: no such file"):
        Document.check_json({"parts": [{"type": "image", "path": "gone.png"}]}, base_dir=tmp_path)
    with pytest.raises(UnsupportedMediaError, match="named like an image file"):
        check_media_file(tmp_path / "broken.png", "audio")


# -- auto detection -----------------------------------------------------------------------------


def test_auto_detects_each_format(tmp_path, images):
    assert check_source(images / "captions.jsonl").format == "image_captions"  # the index file itself
    wav(tmp_path / "voice" / "a.wav", 0.25)
    jsonl(tmp_path / "voice" / "transcripts.jsonl", {"file": "a.wav", "text": "hi"})
    assert check_source(tmp_path / "voice").format == "audio_transcripts"
    assert check_source(tmp_path / "voice" / "transcripts.jsonl").format == "audio_transcripts"
    assert check_source(images, kind="image_captions").items == 2
    with pytest.raises(ConfigError, match="unknown kind 'pictures'"):
        check_source(images, kind="pictures")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        check_source(images / "cat.png")


# -- every mistake gets a clear error, before any media is decoded ------------------------------


CAT = {"file": "cat.png", "text": "a cat"}


@pytest.mark.parametrize(
    ("lines", "error", "match"),
    [
        ([CAT, {"file": "dog.png", "text": "a dog"}], ConfigError, r"captions.jsonl:2: .*dog.png: no such file"),
        ([{"file": "cat.png", "caption": "a cat"}], ConfigError, r"captions.jsonl:1: unknown key 'caption'"),
        ([{"file": "cat.png"}], ConfigError, r"captions.jsonl:1: missing key 'text'"),
        ([CAT, {"file": "cat.png", "text": "  "}], ConfigError, r"captions.jsonl:2: 'text' is empty"),
        ([CAT, {"file": "cat.png", "text": 3}], ConfigError, r"captions.jsonl:2: 'text' must be a string"),
        ([CAT, "", '{"file": "cat.png", "text": "a cat"'], ConfigError, r"captions.jsonl:3: not valid JSON"),
        ([CAT, ["cat.png", "a cat"]], ConfigError, r"captions.jsonl:2: expected a JSON object"),
        ([CAT, {"file": "cat.gif", "text": "a gif"}], UnsupportedMediaError, r"cat.gif.*'.gif'.*captions.jsonl:2"),
        ([CAT, {"file": "empty.png", "text": "nothing"}], EmptyMediaError, r"empty.png: .*empty.*captions.jsonl:2"),
        ([CAT, {"file": "a.wav", "text": "a tone"}], ConfigError, r"more than one kind of media: image \(line 1"),
        ([{"file": "notes.txt", "text": "words"}], UnsupportedMediaError, r"notes.txt: not named as a media file"),
        ([], ConfigError, r"captions.jsonl: no rows: the dataset is empty"),
    ],
)
def test_bad_captions_rows(tmp_path, lines, error, match):
    png(tmp_path / "cat.png", 4, 4)
    wav(tmp_path / "a.wav", 0.25)
    for name in ("cat.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"something")
    (tmp_path / "empty.png").write_bytes(b"")
    jsonl(tmp_path / "captions.jsonl", *lines)
    with pytest.raises(error, match=match):
        check_source(tmp_path)
    with pytest.raises(error, match=match):
        read_documents(tmp_path)  # raised on the call, not on the first next()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,caption\ncat.png,a cat\n", r"captions.csv:1: unknown column 'caption'"),
        ("file\ncat.png\n", r"captions.csv:1: missing column 'text'"),
        ("file,text,file\ncat.png,a,b\n", r"captions.csv:1: column 'file' appears twice"),
        ('file,text\ncat.png,"two\nlines"\ncat.png,a,cat\n', r"captions.csv:4: 3 fields, but the header has 2"),
        ("file,text\ncat.png,\n", r"captions.csv:2: 'text' is empty"),
        ("file,text\n", r"captions.csv: no rows"),
        ("", r"captions.csv: no rows"),
    ],
)
def test_bad_captions_csv(tmp_path, text, match):
    png(tmp_path / "cat.png", 4, 4)
    (tmp_path / "captions.csv").write_text(text)
    with pytest.raises(ConfigError, match=match):
        check_source(tmp_path)


def test_non_utf8_lines_are_named(tmp_path):
    png(tmp_path / "cat.png", 4, 4)
    (tmp_path / "captions.csv").write_bytes(b"file,text\ncat.png,caf\xe9\n")
    with pytest.raises(ConfigError, match=r"captions.csv:2: not valid UTF-8"):
        check_source(tmp_path)
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "docs.jsonl").write_bytes(b'{"parts": "ok"}\n{"parts": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"docs.jsonl:2: not valid UTF-8"):
        check_source(tmp_path / "docs.jsonl")


def test_missing_folder_index_and_ambiguous_index(tmp_path, images):
    with pytest.raises(ConfigError, match="nowhere: no such file or folder"):
        check_source(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nowhere: no such file or folder"):
        read_image_captions(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(ConfigError, match="bare: no captions.jsonl, captions.csv, transcripts.jsonl"):
        check_source(tmp_path / "bare")
    with pytest.raises(ConfigError, match="bare: no captions.jsonl or captions.csv in this folder"):
        read_video_captions(tmp_path / "bare")
    (images / "captions.csv").write_text("file,text\ncat.png,a cat\n")
    with pytest.raises(ConfigError, match="holds both captions.jsonl and captions.csv"):
        check_source(images)
    (images / "captions.csv").unlink()
    jsonl(images / "transcripts.jsonl", {"file": "cat.png", "text": "a cat"})
    with pytest.raises(ConfigError, match="holds both captions.jsonl and transcripts.jsonl"):
        check_source(images)
    with pytest.raises(UnsupportedMediaError, match=r"cat.png: named like an image file .*transcripts.jsonl:1"):
        check_source(images, kind="audio_transcripts")


@pytest.mark.parametrize(
    ("lines", "error", "match"),
    [
        ([{"parts": "ok"}, {"parts": "x", "meta": 1}], ConfigError, r"docs.jsonl:2: meta: unknown key 'meta'"),
        (
            [{"messages": [{"role": "robot", "content": "hi"}]}],
            ConfigError,
            r"docs.jsonl:1: messages\[0\].role: unknown role 'robot'",
        ),
        (
            [{"parts": [{"type": "image", "path": "media/gone.png"}]}],
            ConfigError,
            r"docs.jsonl:1: parts\[0\].path: .*media/gone.png: no such file",
        ),
        ([{"parts": [{"type": "audio", "path": "pic.png"}]}], UnsupportedMediaError, r"pic.png.*docs.jsonl:1"),
        (["{oops"], ConfigError, r"docs.jsonl:1: not valid JSON"),
        (["", " "], ConfigError, r"docs.jsonl: no documents"),
    ],
)
def test_bad_documents_lines(tmp_path, lines, error, match):
    png(tmp_path / "pic.png", 4, 4)
    path = jsonl(tmp_path / "docs.jsonl", *lines)
    with pytest.raises(error, match=match):
        check_source(path)
    with pytest.raises(error, match=match):
        read_jsonl_documents(path)


def test_options_that_do_not_fit_the_source(tmp_path, images):
    path = jsonl(tmp_path / "docs.jsonl", {"parts": "ok"})
    with pytest.raises(ConfigError, match="direction, as_chat only apply to captions"):
        check_source(path, direction="image->text", as_chat=True)
    with pytest.raises(ConfigError, match="fps and max_frames apply to videos; these rows name image files"):
        read_documents(images, fps=2.0)
    with pytest.raises(ConfigError, match=r"direction 'image->audio' does not fit image captions"):
        read_documents(images, direction="image->audio")
    with pytest.raises(ConfigError, match="instruction is only used with as_chat=True"):
        read_image_captions(images, instruction="Describe.")


def test_bad_video_options(tmp_path, clip):
    jsonl(tmp_path / "captions.jsonl", {"file": str(clip), "text": "a clip"})  # an absolute path is fine too
    with pytest.raises(ConfigError, match="fps must be a positive number, got 0"):
        read_video_captions(tmp_path, fps=0)
    with pytest.raises(ConfigError, match="max_frames must be a positive int or None, got 2.5"):
        check_source(tmp_path, max_frames=2.5)
    with pytest.raises(ConfigError, match="direction 'text->video' does not fit video captions; use video->text"):
        check_source(tmp_path, direction="text->video")


def test_corrupt_media_fails_when_decoded_naming_file_and_row(images):
    good = (images / "cat.png").read_bytes()
    (images / "pets" / "dog.png").write_bytes(good[: len(good) // 2])  # truncated download
    assert check_source(images).items == 2  # names and sizes are fine: nothing is decoded here
    documents = read_documents(images)
    assert next(documents).parts[1] == Text("a cat")
    with pytest.raises(CorruptMediaError, match=r"pets/dog.png: truncated or corrupt PNG.*captions.jsonl:2"):
        next(documents)


def test_limits_are_applied(images):
    with pytest.raises(MediaTooLargeError, match=r"cat.png.*max_bytes.*captions.jsonl:1"):
        check_source(images, limits=MediaLimits(max_bytes=10))
    with pytest.raises(MediaTooLargeError, match=r"max_image_pixels.*captions.jsonl:1"):
        next(read_documents(images, limits=MediaLimits(max_image_pixels=100)))
