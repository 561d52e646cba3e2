"""Shapes world videos: the sounding object appears on the frame where its sound starts."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.content import Video
from polymodal.data.shapes import encode_mp4, make_sample, random_video_scene, render_video, sample_rng
from polymodal.data.shapes.language import article
from polymodal.data.shapes.sounds import SAMPLE_RATE


@pytest.fixture(scope="module")
def videos():
    scenes = [random_video_scene(sample_rng(0, "train", "test/video", i)) for i in range(24)]
    return [(scene, render_video(scene)) for scene in scenes]


def centre_rgb(video: Video, time: float, obj) -> np.ndarray:
    frame = next(f for f in video.frames if abs(f.time - time) < 1e-9)
    pixels = frame.image.to_array().astype(int)
    size = pixels.shape[0]
    return pixels[int(obj.y * size), int(obj.x * size)]


def window_energy(wave: np.ndarray, start: float, stop: float) -> float:
    return float(np.sum(wave[round(start * SAMPLE_RATE) : round(stop * SAMPLE_RATE)] ** 2))


def test_videos_have_regular_frames_and_a_matching_track(videos):
    for scene, video in videos:
        assert scene.duration in (2.0, 2.5, 3.0, 3.5, 4.0)
        assert [f.time for f in video.frames] == [k / 10 for k in range(round(scene.duration * 10))]
        assert video.frames[0].image.size == (64, 64)
        assert video.audio.sample_rate == SAMPLE_RATE and abs(video.audio.duration - scene.duration) < 1e-9
    assert {len(s.arrivals) for s, _ in videos} == {1, 2} and {len(s.movers) for s, _ in videos} == {1, 2}


def test_the_sounding_object_appears_exactly_when_its_sound_starts(videos):
    for scene, video in videos:
        obj, t = scene.sound_object, scene.sound_time
        assert np.abs(centre_rgb(video, t, obj) - obj.rgb).max() <= 1
        before = centre_rgb(video, round(t - 0.1, 10), obj)
        assert np.linalg.norm(before - obj.rgb) > 60  # not there one frame earlier
        wave = video.audio.waveform[0]
        end = t + scene.sound.duration
        assert window_energy(wave, 0, t) == 0.0  # silence until the sound
        assert window_energy(wave, t, end) == pytest.approx(float(np.sum(wave**2)))
        loudness = np.convolve(wave**2, np.ones(400), mode="valid")
        assert t <= np.argmax(loudness) / SAMPLE_RATE <= end


def test_the_other_arrival_is_silent_and_far_apart_in_time(videos):
    pairs = [s for s, _ in videos if len(s.arrivals) == 2]
    assert pairs
    for scene in pairs:
        times = sorted(a.time for a in scene.arrivals)
        assert times[1] - times[0] >= 0.8 - 1e-9
        names = [o.colour for o in scene.all_objects()]
        assert len(set(names)) == len(names)  # colours never repeat within a video


def test_mp4_is_deterministic_and_decodes_to_the_same_story(videos):
    for scene, video in videos[:4]:
        data = encode_mp4(video, fps=10)
        assert data == encode_mp4(video, fps=10)
        decoded = Video.from_bytes(data, fps=10)
        assert decoded.num_frames == video.num_frames
        obj, t = scene.sound_object, scene.sound_time
        assert np.abs(centre_rgb(decoded, t, obj) - obj.rgb).max() < 30  # lossy, chroma-subsampled
        wave = decoded.audio.waveform[0]
        loud = np.flatnonzero(np.convolve(wave**2, np.ones(160) / 160, mode="same") > 1e-3)
        assert abs(loud[0] / SAMPLE_RATE - t) < 0.03  # AAC keeps the onset on the video clock


def test_video_question_names_the_sounding_object():
    for i in range(12):
        sample = make_sample("video_qa", i)
        question = sample.meta["truth"]["questions"][0]
        truth = sample.meta["truth"]["video"]
        assert question["answer"] == article(truth["sound_object"])
        assert question["options"][question["answer_index"]] == question["answer"]
        assert len(set(question["options"])) == 4
        user, assistant = sample.document.messages
        assert isinstance(user.parts[0], Video) and assistant.parts[0].text == question["answer"]
