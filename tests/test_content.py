"""polymodal.content: parts, safe media reading, documents and their JSON form.

Every media file is written by the test itself (tests/media_factory.py)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import PIL.Image
import pytest
import soundfile

from media_factory import (
    SECOND_AMPLITUDES,
    SECOND_COLOURS,
    gradient_rgb,
    pcm16_grid,
    pick_codec,
    sine,
    write_audio,
    write_image,
    write_video,
)
from polymodal.content import (
    DEFAULT_LIMITS,
    Audio,
    Document,
    Image,
    MediaLimits,
    Message,
    Text,
    Video,
    VideoFrame,
    load_part,
)
from polymodal.errors import (
    ConfigError,
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    UnsupportedMediaError,
)

RNG = np.random.default_rng(0)
GARBAGE = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()


def random_rgb(height: int = 20, width: int = 30) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_file(tmp_path, name: str = "img.png", array: np.ndarray | None = None):
    return write_image(tmp_path / name, random_rgb() if array is None else array, "PNG")


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def wav_file(tmp_path, name: str = "a.wav", seconds: float = 1.0, sample_rate: int = 16_000):
    return write_audio(tmp_path / name, sine(seconds, sample_rate)[None], sample_rate, "WAV", "PCM_16")


# ---------------------------------------------------------------------------------------------- limits


def test_default_limits():
    assert DEFAULT_LIMITS == MediaLimits()
    assert DEFAULT_LIMITS.max_bytes == 512 * 2**20 and DEFAULT_LIMITS.max_video_frames == 1024
    assert DEFAULT_LIMITS.max_image_pixels == 8192 * 8192


@pytest.mark.parametrize(
    "kwargs",
    [{"max_bytes": 0}, {"max_image_pixels": -1}, {"max_video_frames": 1.5}, {"max_audio_seconds": 0.0},
     {"max_video_seconds": math.nan}, {"max_bytes": True}],
)  # fmt: skip
def test_limits_reject_bad_values(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        MediaLimits(**kwargs)


# ---------------------------------------------------------------------------------------------- images


def test_png_round_trip_keeps_every_pixel(tmp_path):
    array = random_rgb(20, 30)
    path = png_file(tmp_path, array=array)
    image = Image.open(path)
    assert image.size == (30, 20) and (image.width, image.height) == (30, 20)
    assert image.pixels.mode == "RGB" and image.source == str(path)
    np.testing.assert_array_equal(image.to_array(), array)
    assert Image.from_bytes(path.read_bytes()) == image
    assert Image.from_bytes(image.to_png_bytes()).to_array().tolist() == array.tolist()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_keep_size_and_look(tmp_path, fmt):
    array = gradient_rgb(40, 48)
    image = Image.open(write_image(tmp_path / f"img.{fmt.lower()}", array, fmt, quality=95))
    assert image.size == (48, 40)
    assert np.abs(image.to_array().astype(int) - array).mean() < 4


def test_format_is_read_from_content_not_name(tmp_path):
    array = random_rgb()
    image = Image.open(write_image(tmp_path / "really_a_png.jpg", array, "PNG"))
    np.testing.assert_array_equal(image.to_array(), array)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[0, :, 3] = [0, 128, 255]  # ... transparent, half, opaque
    rgba[1, :, 3] = 255
    image = Image.open(write_image(tmp_path / "alpha.png", rgba, "PNG"))
    out = image.to_array().astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 0, 0]
    np.testing.assert_allclose(out[0, 1], [255, 127, 127], atol=1)


def test_other_modes_become_rgb():
    grey = Image(PIL.Image.new("L", (4, 2), 77))
    assert grey.to_array().shape == (2, 4, 3) and (grey.to_array() == 77).all()
    palette = PIL.Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert Image(palette).to_array()[0, 0].tolist() == [10, 20, 30]
    deep = Image(PIL.Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)))
    assert deep.to_array()[0, :, 0].tolist() == [0, 128, 255]  # rescaled, not clipped at 255
    cmyk = Image(PIL.Image.new("CMYK", (1, 1), (0, 255, 255, 0)))
    assert cmyk.to_array()[0, 0].tolist() == [255, 0, 0]


def test_image_from_array_and_repr():
    array = random_rgb(5, 7)
    image = Image.from_array(array, source="x")
    np.testing.assert_array_equal(image.to_array(), array)
    assert repr(image) == "Image(7x5, source='x')"
    with pytest.raises(ValueError):
        Image.from_array(array.astype(np.float32))


def test_zero_size_image_is_empty():
    with pytest.raises(EmptyMediaError):
        Image(PIL.Image.new("RGB", (0, 5)))


def test_gif_is_unsupported_and_named(tmp_path):
    path = tmp_path / "anim.gif"
    PIL.Image.new("RGB", (4, 4), (1, 2, 3)).save(path, format="GIF")
    with pytest.raises(UnsupportedMediaError, match="GIF") as info:
        Image.open(path)
    assert "anim.gif" in str(info.value)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
def test_other_pillow_formats_are_unsupported_and_named(tmp_path, fmt):
    path = tmp_path / "picture.png"  # the name lies; the content decides
    PIL.Image.new("RGB", (16, 16)).save(path, format=fmt)
    with pytest.raises(UnsupportedMediaError, match=fmt) as info:
        Image.open(path)
    assert "picture.png" in str(info.value)


def test_text_named_png_is_unsupported(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n")
    with pytest.raises(UnsupportedMediaError, match="text") as info:
        Image.open(path)
    assert "notes.png" in str(info.value)


def test_truncated_png_is_corrupt(tmp_path):
    path = png_file(tmp_path, "cut.png", random_rgb(64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptMediaError, match="truncated or corrupt PNG") as info:
        Image.open(path)
    assert "cut.png" in str(info.value)


def test_garbage_named_jpg_is_corrupt(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(GARBAGE)
    with pytest.raises(CorruptMediaError, match="JPEG") as info:
        Image.open(path)
    assert "photo.jpg" in str(info.value)


def test_jpeg_with_garbage_body_is_corrupt(tmp_path):
    path = write_image(tmp_path / "broken.jpg", gradient_rgb(64, 64), "JPEG")
    path.write_bytes(path.read_bytes()[:400] + GARBAGE[:200])
    with pytest.raises(CorruptMediaError, match="broken.jpg"):
        Image.open(path)


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "nothing.png"
    path.write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="nothing.png"):
        Image.open(path)
    with pytest.raises(EmptyMediaError, match="pasted"):
        Image.from_bytes(b"", name="pasted")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # Only the header survives: decoding would fail as corrupt, so the size error proves the
    # limit was checked from the header first.
    path = png_file(tmp_path, "big.png", random_rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"IDAT") + 20])
    with pytest.raises(CorruptMediaError):
        Image.open(path)
    with pytest.raises(MediaTooLargeError, match="max_image_pixels") as info:
        Image.open(path, limits=MediaLimits(max_image_pixels=100))
    assert "big.png" in str(info.value) and "64x64" in str(info.value)


def test_pillow_bomb_guard_becomes_too_large(tmp_path, monkeypatch):
    path = png_file(tmp_path, "bomb.png", random_rgb(64, 64))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # warns above 1000 px, raises above 2000
    with pytest.raises(MediaTooLargeError, match="bomb.png"):
        Image.open(path)


def test_byte_limit_is_checked_before_opening(tmp_path):
    path = png_file(tmp_path, "heavy.png")
    with pytest.raises(MediaTooLargeError, match="max_bytes") as info:
        Image.open(path, limits=MediaLimits(max_bytes=100))
    assert "heavy.png" in str(info.value)
    with pytest.raises(MediaTooLargeError, match="upload"):
        Image.from_bytes(path.read_bytes(), name="upload", limits=MediaLimits(max_bytes=100))


def test_bytes_errors_name_the_bytes():
    with pytest.raises(UnsupportedMediaError, match="<bytes>"):
        Image.from_bytes(b"hello, world")
    with pytest.raises(UnsupportedMediaError, match="clipboard"):
        Image.from_bytes(b"hello, world", name="clipboard")


def test_directory_is_not_media(tmp_path):
    with pytest.raises(MediaError, match="directory"):
        Image.open(tmp_path)


# ---------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "error"),
    [("WAV", "PCM_16", 16_000, 1e-4), ("FLAC", "PCM_16", 22_050, 1e-4), ("OGG", "VORBIS", 16_000, 0.02),
     ("OGG", "OPUS", 48_000, 0.05)],
)  # fmt: skip
def test_audio_round_trip(tmp_path, fmt, subtype, rate, error):
    wave_CS = np.stack([sine(0.5, rate, 440, 0.5), sine(0.5, rate, 660, 0.25)])
    path = write_audio(tmp_path / f"tone.{fmt.lower()}", wave_CS, rate, fmt, subtype)
    audio = Audio.open(path)
    assert audio.sample_rate == rate and audio.num_channels == 2 and audio.waveform.dtype == np.float32
    assert audio.num_samples == wave_CS.shape[1] and audio.duration == 0.5
    assert rms(audio.waveform - wave_CS) < error  # lossless ones within 16-bit rounding
    assert audio.source == str(path)
    assert Audio.from_bytes(path.read_bytes()) == audio


def test_audio_constructor_and_mono():
    audio = Audio(np.array([0.5, -0.5, 0.25], np.float32), 8)
    assert audio.waveform.shape == (1, 3) and audio.duration == 3 / 8
    stereo = Audio(np.array([[0.5, 0.0], [-0.5, 1.0]]), 2)
    assert stereo.waveform.dtype == np.float32 and stereo.num_channels == 2
    np.testing.assert_allclose(stereo.to_mono().waveform, [[0.0, 0.5]])
    with pytest.raises(ValueError):
        stereo.waveform[0, 0] = 0.1  # read-only: the part is frozen
    assert repr(stereo) == "Audio(2 ch, 1.000 s @ 2 Hz, source=None)"


@pytest.mark.parametrize(
    ("waveform", "rate", "error"),
    [(np.zeros(0, np.float32), 16_000, EmptyMediaError), (np.zeros((2, 0), np.float32), 16_000, EmptyMediaError),
     (np.array([0.0, np.nan], np.float32), 16_000, CorruptMediaError), (np.zeros(4, np.float32), 0, MediaError),
     (np.zeros(4, np.int16), 16_000, TypeError), (np.array([0.0, 1.5], np.float32), 16_000, ValueError),
     (np.zeros((1, 2, 3), np.float32), 16_000, ValueError)],
)  # fmt: skip
def test_audio_constructor_validates(waveform, rate, error):
    with pytest.raises(error):
        Audio(waveform, rate)


def test_silent_audio_is_fine(tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros((1, 800), np.float32), 8000, "WAV", "PCM_16")
    audio = Audio.open(path)
    assert audio.duration == 0.1 and not audio.waveform.any()


def test_zero_length_audio_file_is_empty(tmp_path):
    path = write_audio(tmp_path / "void.wav", np.zeros((1, 0), np.float32), 8000, "WAV", "PCM_16")
    with pytest.raises(EmptyMediaError, match="void.wav"):
        Audio.open(path)


def test_wav_bytes_round_trip_exactly():
    audio = Audio(pcm16_grid(np.stack([sine(0.1, 8000), -sine(0.1, 8000, amplitude=1.0)])), 8000)
    assert Audio.from_bytes(audio.to_wav_bytes()) == audio
    assert soundfile.info(io.BytesIO(audio.to_wav_bytes())).subtype == "PCM_16"


def test_truncated_wav_header_is_corrupt(tmp_path):
    path = wav_file(tmp_path, "header.wav")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptMediaError, match="header.wav"):
        Audio.open(path)


def test_truncated_wav_data_is_corrupt(tmp_path):
    path = wav_file(tmp_path, "cut.wav")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptMediaError, match="truncated WAV") as info:
        Audio.open(path)
    assert "cut.wav" in str(info.value)


def test_truncated_flac_is_corrupt(tmp_path):
    path = write_audio(tmp_path / "cut.flac", sine(1.0, 16_000)[None], 16_000, "FLAC", "PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptMediaError, match="cut.flac"):
        Audio.open(path)


@pytest.mark.parametrize(
    ("name", "content", "error", "words"),
    [("noise.wav", GARBAGE, CorruptMediaError, "WAV"), ("noise.bin", GARBAGE, UnsupportedMediaError, "unrecognised"),
     ("readme.ogg", b"just some words\n" * 10, UnsupportedMediaError, "text")],
)  # fmt: skip
def test_audio_garbage(tmp_path, name, content, error, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=words) as info:
        Audio.open(path)
    assert name in str(info.value)


def test_other_audio_formats_are_unsupported(tmp_path):
    path = write_audio(tmp_path / "tone.aiff", sine(0.1, 8000)[None], 8000, "AIFF", "PCM_16")
    with pytest.raises(UnsupportedMediaError, match="AIFF"):
        Audio.open(path)
    with pytest.raises(UnsupportedMediaError, match="PNG"):
        Audio.open(png_file(tmp_path))


def test_audio_duration_limit(tmp_path):
    path = wav_file(tmp_path, "long.wav", seconds=1.0)
    with pytest.raises(MediaTooLargeError, match="max_audio_seconds") as info:
        Audio.open(path, limits=MediaLimits(max_audio_seconds=0.5))
    assert "long.wav" in str(info.value) and "0.5" in str(info.value)


# ---------------------------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """mp4 (MPEG-4 + AAC), webm (VP8/VP9 + Opus) and a silent mp4: 3 s, 10 fps, 32x32."""
    folder = tmp_path_factory.mktemp("videos")
    mp4_video = pick_codec("mpeg4", "libx264")
    return {
        "mp4": write_video(folder / "clip.mp4", container="mp4", video_codec=mp4_video,
                           audio_codec=pick_codec("aac", "libopus")),
        "webm": write_video(folder / "clip.webm", container="webm", video_codec=pick_codec("libvpx", "libvpx-vp9"),
                            audio_codec=pick_codec("libopus", "libvorbis", "vorbis")),
        "silent": write_video(folder / "silent.mp4", container="mp4", video_codec=mp4_video),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_video_frames_and_audio_share_one_clock(videos, kind):
    video = Video.open(videos[kind], fps=1.0)
    assert video.num_frames == 3 and video.duration == pytest.approx(3.0, abs=0.05)
    assert [f.time for f in video.frames] == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    for frame, colour in zip(video.frames, SECOND_COLOURS[:3], strict=True):
        assert frame.image.size == (32, 32)
        np.testing.assert_allclose(frame.image.to_array().reshape(-1, 3).mean(0), colour, atol=8)
    audio = video.audio
    assert audio is not None and audio.sample_rate == 48_000 and audio.num_channels == 1
    assert audio.duration == pytest.approx(3.0, abs=0.05)
    for second, amplitude in enumerate(SECOND_AMPLITUDES[:3]):
        # The middle of each second: the tone's loudness tells whether audio time 0 is video time 0.
        middle = audio.waveform[0, int((second + 0.25) * 48_000) : int((second + 0.75) * 48_000)]
        assert rms(middle) == pytest.approx(amplitude / math.sqrt(2), rel=0.1)
    assert video.source == str(videos[kind]) and "clip" in repr(video)


def test_video_sampling_rate(videos):
    half = Video.open(videos["mp4"], fps=2.0)
    assert [f.time for f in half.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=1e-3)
    quarter = Video.open(videos["mp4"], fps=4.0)  # sample 0.25 s has no frame there: the next one, 0.3 s
    assert [f.time for f in quarter.frames][:3] == pytest.approx([0.0, 0.3, 0.5], abs=1e-3)
    every = Video.open(videos["mp4"], fps=50.0, max_frames=100)  # above the native 10 fps: each frame once
    assert every.num_frames == 30


def test_video_from_bytes_matches_open(videos):
    data = videos["webm"].read_bytes()
    from_bytes = Video.from_bytes(data)
    assert from_bytes == Video.open(videos["webm"])
    assert from_bytes.source is None and from_bytes.frames[0].image.source is None


def test_video_without_audio(videos):
    video = Video.open(videos["silent"])
    assert video.audio is None and video.num_frames == 3


@pytest.mark.parametrize(
    ("kwargs", "limit_name"),
    [({"max_frames": 2}, "max_frames"), ({"limits": MediaLimits(max_video_frames=2)}, "max_video_frames")],
)
def test_too_many_frames_is_refused_before_decoding(videos, kwargs, limit_name):
    # Only the check made from the header knows the duration, so "3.00 s" shows which one fired.
    with pytest.raises(MediaTooLargeError) as info:
        Video.open(videos["mp4"], fps=1.0, **kwargs)
    message = str(info.value)
    for words in ("clip.mp4", "3.00 s", "1 fps", "3 frames", "limit of 2", limit_name, "lower fps"):
        assert words in message


def test_video_duration_and_pixel_limits(videos):
    with pytest.raises(MediaTooLargeError, match="max_video_seconds"):
        Video.open(videos["mp4"], limits=MediaLimits(max_video_seconds=2.0))
    with pytest.raises(MediaTooLargeError, match="max_image_pixels"):
        Video.open(videos["mp4"], limits=MediaLimits(max_image_pixels=32 * 32 - 1))


def test_bad_sampling_arguments(videos):
    with pytest.raises(ConfigError, match="fps"):
        Video.open(videos["mp4"], fps=0)
    with pytest.raises(ConfigError, match="max_frames"):
        Video.open(videos["mp4"], max_frames=0)


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_truncated_video_is_corrupt(videos, tmp_path, kind):
    # An MP4 loses its index (moov, written last); a WebM would decode up to the cut, silently.
    path = tmp_path / f"cut.{kind}"
    data = videos[kind].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMediaError, match=f"cut.{kind}"):
        Video.open(path)


@pytest.mark.parametrize(
    ("name", "content", "error", "words"),
    [("junk.mp4", GARBAGE, CorruptMediaError, "MP4"), ("junk.webm", b"\x1a\x45\xdf\xa3" + GARBAGE, CorruptMediaError,
     "WebM"), ("notes.mp4", b"not a video at all\n" * 5, UnsupportedMediaError, "text")],
)  # fmt: skip
def test_video_garbage(tmp_path, name, content, error, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=words) as info:
        Video.open(path)
    assert name in str(info.value)


def test_other_containers_and_kinds_are_unsupported(tmp_path):
    avi = write_video(tmp_path / "old.avi", container="avi", video_codec=pick_codec("mpeg4"), seconds=1)
    with pytest.raises(UnsupportedMediaError, match="AVI"):
        Video.open(avi)
    with pytest.raises(UnsupportedMediaError, match="PNG"):
        Video.open(png_file(tmp_path))
    with pytest.raises(UnsupportedMediaError, match="WAV"):
        Video.open(wav_file(tmp_path))


def test_mp4_without_video_stream_is_empty(tmp_path):
    path = write_video(tmp_path / "voice.mp4", container="mp4", video_codec=None, audio_codec=pick_codec("aac"))
    with pytest.raises(EmptyMediaError, match="no video stream"):
        Video.open(path)


def test_video_constructor_validates():
    red = Image(PIL.Image.new("RGB", (2, 2), (255, 0, 0)))
    with pytest.raises(EmptyMediaError):
        Video((), None, 1.0)
    with pytest.raises(ValueError):
        Video((VideoFrame(1.0, red), VideoFrame(0.5, red)), None, 2.0)
    with pytest.raises(ValueError):
        Video((VideoFrame(2.0, red),), None, 1.0)
    with pytest.raises(ValueError):
        VideoFrame(-1.0, red)
    assert Video([VideoFrame(0, red)], None, 1).frames == (VideoFrame(0.0, red),)


# ---------------------------------------------------------------------------------------------- load_part


def test_load_part_by_content(tmp_path, videos):
    (tmp_path / "note.txt").write_text("héllo\n", encoding="utf-8")
    (tmp_path / "readme.md").write_bytes(b"\xef\xbb\xbf# title")
    assert load_part(tmp_path / "note.txt") == Text("héllo\n")
    assert load_part(tmp_path / "readme.md") == Text("# title")  # BOM dropped
    assert isinstance(load_part(write_image(tmp_path / "pic.dat", random_rgb(), "WEBP")), Image)
    assert isinstance(load_part(write_image(tmp_path / "pic", random_rgb(), "JPEG")), Image)
    assert isinstance(load_part(wav_file(tmp_path)), Audio)
    flac = write_audio(tmp_path / "a.flac", sine(0.1, 8000)[None], 8000, "FLAC", "PCM_16")
    ogg = write_audio(tmp_path / "a.ogg", sine(0.1, 8000)[None], 8000, "OGG", "VORBIS")
    assert isinstance(load_part(flac), Audio) and isinstance(load_part(ogg), Audio)
    video = load_part(videos["webm"], fps=2.0)
    assert isinstance(video, Video) and video.num_frames == 6
    with pytest.raises(MediaTooLargeError, match="fps"):
        load_part(videos["mp4"], max_frames=1)


def test_load_part_errors(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(CorruptMediaError, match="bad.txt"):
        load_part(tmp_path / "bad.txt")
    (tmp_path / "blob.bin").write_bytes(GARBAGE)
    with pytest.raises(UnsupportedMediaError, match="PNG, JPEG, WebP") as info:
        load_part(tmp_path / "blob.bin")
    assert "blob.bin" in str(info.value) and "MP4" in str(info.value)
    PIL.Image.new("RGB", (2, 2)).save(tmp_path / "a.gif")
    with pytest.raises(UnsupportedMediaError, match="GIF"):
        load_part(tmp_path / "a.gif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="empty.png"):
        load_part(tmp_path / "empty.png")
    with pytest.raises(MediaError, match="directory"):
        load_part(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_part(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- documents


def red() -> Image:
    return Image(PIL.Image.new("RGB", (4, 4), (255, 0, 0)))


def test_plain_document():
    image = red()
    doc = Document.of("look:", image)
    assert not doc.is_chat and len(doc) == 1
    assert doc.parts == (Text("look:"), image)
    assert [m.role for m in doc] == [None]


def test_chat_document():
    image = red()
    doc = Document.chat(("system", "be brief"), ("user", ["what is this?", image]), ("assistant", Text("red")))
    assert doc.is_chat and len(doc) == 3
    assert [m.role for m in doc.messages] == ["system", "user", "assistant"]
    assert doc.messages[1].parts == (Text("what is this?"), image)
    assert doc.parts == (Text("be brief"), Text("what is this?"), image, Text("red"))


def test_message_validation():
    assert Message("user", ["a", Text("b")]).parts == (Text("a"), Text("b"))
    assert Message(None, "hi").parts == (Text("hi"),)
    with pytest.raises(ConfigError, match="role"):
        Message("robot", ["x"])
    with pytest.raises(TypeError):
        Message("user", [42])
    with pytest.raises(ConfigError):
        Message("user", [])


def test_plain_and_chat_do_not_mix():
    with pytest.raises(ConfigError, match="mix"):
        Document([Message(None, ["a"]), Message("user", ["b"])])
    with pytest.raises(ConfigError):
        Document.chat((None, "a"))
    with pytest.raises(ConfigError):
        Document([])


def media_document(tmp_path) -> Document:
    """A chat holding every kind of part, with audio on the 16-bit grid so it round-trips exactly."""
    rgba = np.concatenate([random_rgb(6, 5), np.full((6, 5, 1), 255, np.uint8)], axis=-1)
    image = Image(PIL.Image.fromarray(rgba))
    audio = Audio(pcm16_grid(np.stack([sine(0.25, 8000), sine(0.25, 8000, 300, 0.1)])), 8000)
    frames = tuple(VideoFrame(t, Image.from_array(random_rgb(8, 8))) for t in (0.0, 0.5))
    video = Video(frames, Audio(pcm16_grid(sine(1.0, 8000)), 8000), 1.0)
    return Document.chat(("system", "describe"), ("user", ["see", image, "hear", audio, video]), ("assistant", "ok"))


def test_json_round_trip(tmp_path):
    doc = media_document(tmp_path)
    obj = doc.to_json(media_dir=tmp_path / "media")
    json.dumps(obj)  # plain JSON
    assert obj["messages"][1]["content"][1] == {"type": "image", "path": "m1_p1.png"}
    assert [f["time"] for f in obj["messages"][1]["content"][4]["frames"]] == [0.0, 0.5]
    back = Document.from_json(obj, base_dir=tmp_path / "media")
    assert back == doc
    np.testing.assert_array_equal(back.parts[2].to_array(), doc.parts[2].to_array())
    np.testing.assert_array_equal(back.parts[4].waveform, doc.parts[4].waveform)
    assert back.parts[5].audio == doc.parts[5].audio and back.parts[5].duration == 1.0


def test_save_and_load(tmp_path):
    doc = media_document(tmp_path)
    doc.save(tmp_path / "doc.json")
    obj = json.loads((tmp_path / "doc.json").read_text())
    assert obj["messages"][1]["content"][3]["path"] == "doc_media/m1_p3.wav"
    assert Document.load(tmp_path / "doc.json") == doc


def test_json_documented_format(tmp_path, videos):
    array = random_rgb()
    png_file(tmp_path, "a.png", array)
    wav_file(tmp_path, "a.wav")
    (tmp_path / "v.mp4").write_bytes(videos["mp4"].read_bytes())
    obj = {"messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image", "path": "a.png"}, {"type": "audio", "path": "a.wav"},
            {"type": "video", "path": "v.mp4", "fps": 2.0, "max_frames": 16}]},
        {"role": "assistant", "content": "a plain string"}]}  # fmt: skip
    (tmp_path / "doc.json").write_text(json.dumps(obj))
    doc = Document.load(tmp_path / "doc.json")
    text, image, audio, video, answer = doc.parts
    assert text == Text("look") and answer == Text("a plain string")
    np.testing.assert_array_equal(image.to_array(), array)
    assert audio.duration == 1.0 and video.num_frames == 6 and video.audio is not None
    shorthand = Document.from_json({"parts": [{"type": "image", "path": str(tmp_path / "a.png")}]}, base_dir="/")
    assert not shorthand.is_chat and isinstance(shorthand.parts[0], Image)


@pytest.mark.parametrize(
    ("obj", "where"),
    [({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
       {"type": "text", "text": "c", "lang": "en"}]}]}, "messages[0].content[2].lang"),
     ({"messages": [{"content": "a"}, {"content": [{"type": "sticker"}]}]}, "messages[1].content[0].type"),
     ({"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "messages[0].name"),
     ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role"),
     ({"parts": [{"type": "video", "path": "v.mp4", "fps": "fast"}]}, "parts[0].fps"),
     ({"parts": [], "extra": 1}, "extra"),
     ({"messages": [{"role": "user"}]}, "messages[0].content"),
     ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
     ({"parts": [{"type": "video", "path": "v.mp4", "fps": 0}]}, "parts[0]"),
     ({"parts": [{"type": "video", "frames": [{"time": "0", "path": "f.png"}]}]}, "parts[0].frames[0].time"),
     ({"parts": [{"type": "video", "path": "v.mp4", "audio": "a.wav"}]}, "parts[0].audio")],
)  # fmt: skip
def test_json_errors_name_the_path(tmp_path, obj, where):
    with pytest.raises(ConfigError) as info:
        Document.from_json(obj, base_dir=tmp_path)
    assert str(info.value).startswith(where)


def test_json_unknown_part_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="sticker"):
        Document.from_json({"parts": [{"type": "sticker"}]}, base_dir=tmp_path)


def test_load_reports_bad_json_and_media_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        Document.load(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text(json.dumps({"parts": [{"type": "text", "txt": "a"}]}))
    with pytest.raises(ConfigError, match=r"bad\.json: parts\[0\]\.txt"):
        Document.load(tmp_path / "bad.json")
    (tmp_path / "fake.png").write_bytes(GARBAGE)
    (tmp_path / "media.json").write_text(json.dumps({"parts": [{"type": "image", "path": "fake.png"}]}))
    with pytest.raises(CorruptMediaError, match="fake.png"):
        Document.load(tmp_path / "media.json")


def test_video_frames_form_respects_frame_limit(tmp_path):
    obj = {"parts": [{"type": "video", "frames": [{"time": 0, "path": "f.png"}] * 3, "audio": None}]}
    with pytest.raises(MediaTooLargeError, match="max_video_frames"):
        Document.from_json(obj, base_dir=tmp_path, limits=MediaLimits(max_video_frames=2))


def test_video_written_as_mp4_reads_back_with_its_sound():
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 220)]
    frames = tuple(
        VideoFrame(float(k), Image.from_array(np.full((32, 32, 3), c, dtype=np.uint8))) for k, c in enumerate(colours)
    )
    t = np.arange(3 * 16_000) / 16_000
    track = Audio((0.4 * np.sin(2 * np.pi * 440 * t) * (t >= 1.0)).astype(np.float32), 16_000)
    data = Video(frames, track, 3.0).to_mp4_bytes()
    assert data[4:8] == b"ftyp"
    back = Video.from_bytes(data, name="roundtrip.mp4", fps=1.0)
    assert back.num_frames == 3 and [round(f.time) for f in back.frames] == [0, 1, 2]
    for frame, colour in zip(back.frames, colours, strict=True):
        assert np.abs(frame.image.to_array().astype(int).mean(axis=(0, 1)) - colour).max() < 12
    assert back.audio is not None and back.audio.duration == pytest.approx(3.0, abs=0.1)
    wave = back.audio.to_mono().waveform[0]
    rate = back.audio.sample_rate
    assert rms(wave[: int(0.8 * rate)]) < 0.02 < rms(wave[int(1.2 * rate) : int(2.8 * rate)])
    with pytest.raises(ConfigError, match="closer together"):
        Video((VideoFrame(0.0, frames[0].image), VideoFrame(0.1, frames[1].image)), None, 1.0).to_mp4_bytes(fps=1)


def test_mp3_audio_is_read_and_a_cut_one_is_corrupt(tmp_path):
    wave = sine(1.0, 16000)[None]
    path = write_audio(tmp_path / "tone.mp3", wave, 16000, "MP3", "MPEG_LAYER_III")
    audio = load_part(path)
    assert isinstance(audio, Audio) and audio.sample_rate == 16000 and audio.duration == pytest.approx(1.0, abs=0.05)
    assert np.abs(audio.waveform).max() > 0.3  # the tone, not silence
    data = path.read_bytes()
    with pytest.raises(CorruptMediaError, match="MP3"):
        Audio.from_bytes(data[: len(data) // 3], name="cut.mp3")
