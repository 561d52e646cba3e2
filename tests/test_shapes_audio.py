"""Shapes world sounds and speech: timbres tell shapes apart, notes follow colours, speech is real."""

from __future__ import annotations

import numpy as np
import pytest

from figures import above
from polymodal.data.shapes import COLOURS, SHAPES, SIZES, SpeechError, Voice, random_event, render_event, speak
from polymodal.data.shapes.sounds import NOTES, SAMPLE_RATE, SoundEvent, event_samples
from polymodal.data.shapes.speech import available_voices, resample


def spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    return np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE), power


def timbre_features(x: np.ndarray, f0: float) -> np.ndarray:
    """Pitch-normalised: log centroid / f0, log spectral flatness, log energy at 2 f0 over f0,
    frame-to-frame loudness jitter."""
    freqs, power = spectrum(x)
    centroid = (power * freqs).sum() / power.sum() / f0
    flatness = np.exp(np.mean(np.log(power + 1e-20))) / power.mean()

    def near(k: float) -> float:
        return power[np.abs(freqs - k * f0) < 0.25 * f0].sum()

    even = near(2) / (near(1) + 1e-20)
    rms = np.sqrt(np.convolve(x**2, np.ones(160) / 160, mode="valid")[::160])
    middle = rms[len(rms) // 5 : -len(rms) // 5]
    jitter = np.std(np.diff(middle)) / np.mean(middle)
    return np.array([np.log(centroid), np.log(flatness + 1e-9), np.log(even + 1e-6), jitter])


def test_sound_events_are_deterministic_short_16k_and_click_free():
    rng = np.random.default_rng(0)
    for _ in range(40):
        event = random_event(rng)
        audio = render_event(event)
        assert audio == render_event(SoundEvent.from_dict(event.to_dict()))
        assert audio.sample_rate == 16_000 and audio.num_channels == 1
        assert 0.2 <= audio.duration <= 1.0
        wave = audio.waveform[0]
        assert abs(float(np.abs(wave).max()) - event.gain) < 1e-3
        # Fades: silent at both ends and still nearly silent 1 ms in (a hard cut would be at full level).
        assert abs(wave[0]) < 1e-3 and abs(wave[-1]) < 1e-3
        assert np.abs(wave[:16]).max() < 0.03 * event.gain and np.abs(wave[-16:]).max() < 0.03 * event.gain
        # On the 16-bit grid, so FLAC/WAV storage is exact.
        assert np.array_equal(wave * 32768, np.rint(wave * 32768))
    star_a = render_event(random_event(np.random.default_rng(1), shape="star"))
    star_b = render_event(random_event(np.random.default_rng(2), shape="star"))
    assert star_a != star_b


def test_timbres_tell_the_shapes_apart_at_every_pitch():
    rng = np.random.default_rng(0)
    features, labels = [], []
    for shape in SHAPES:
        for colour in COLOURS:
            for size in SIZES:
                event = random_event(rng, shape=shape, colour=colour, size=size)
                features.append(timbre_features(event_samples(event), event.frequency))
                labels.append(shape)
    z = np.array(features)
    z = (z - z.mean(0)) / z.std(0)
    labels = np.array(labels)
    correct = 0
    for i in range(len(z)):  # leave-one-out nearest class centre
        rest = np.arange(len(z)) != i
        centres = {s: z[rest & (labels == s)].mean(0) for s in SHAPES}
        correct += min(centres, key=lambda s: np.linalg.norm(z[i] - centres[s])) == labels[i]
    # deterministic (no training): reached 100% / 100%; bar 95%
    above("timbre nearest-centre accuracy", correct / len(z), 0.95 - 1e-9)


def test_pitch_follows_colour_and_size():
    peaks = {}
    for colour in COLOURS:
        for size in SIZES:
            event = SoundEvent("triangle", colour, size, duration=0.8, gain=0.5)
            freqs, power = spectrum(event_samples(event))
            peaks[colour, size] = freqs[np.argmax(power)]
            assert abs(peaks[colour, size] - event.frequency) < 3.0
            assert event.frequency == NOTES[colour] * (0.5 if size == "large" else 1)
    assert len({round(p) for p in peaks.values()}) == len(peaks)  # every colour and size its own note


def test_resampler_keeps_tones_and_removes_what_cannot_be_represented():
    t = np.arange(22_050) / 22_050
    low = resample(0.5 * np.sin(2 * np.pi * 1000 * t), 22_050, 16_000)
    assert len(low) == 16_000
    freqs, power = spectrum(low)
    assert abs(freqs[np.argmax(power)] - 1000) < 2
    assert abs(np.abs(low[1000:-1000]).max() - 0.5) < 0.01
    high = resample(0.5 * np.sin(2 * np.pi * 10_000 * t), 22_050, 16_000)  # above the new Nyquist
    assert np.abs(high[1000:-1000]).max() < 0.005


def fundamental(wave: np.ndarray) -> float:
    """Median autocorrelation pitch (60-400 Hz) over voiced 40 ms frames."""
    pitches = []
    for start in range(0, len(wave) - 640, 320):
        frame = wave[start : start + 640]
        if np.sqrt(np.mean(frame**2)) < 0.05:
            continue
        ac = np.correlate(frame, frame, mode="full")[639:]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
        pitches.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def test_speech_is_real_16k_speech_that_grows_with_the_text():
    short, long = speak("one"), speak("the large red circle is to the left of the small blue star")
    for audio in (short, long):
        assert audio.sample_rate == 16_000 and audio.num_channels == 1
        assert np.sqrt(np.mean(audio.waveform**2)) > 0.03
    assert long.duration > 2.5 * short.duration > 0.3
    # Speech has its energy in the voice band, not at the edges of the spectrum.
    freqs, power = spectrum(long.waveform[0])
    assert power[(freqs > 80) & (freqs < 4000)].sum() > 0.8 * power.sum()


def test_voices_differ_and_each_voice_is_reproducible():
    voices = available_voices()
    assert {"en", "en-us", "en+f3"} <= set(voices) and len(voices) >= 6
    text = "how many triangles are there"
    male, female = speak(text, Voice(name="en-us")), speak(text, Voice(name="en-us+f3"))
    assert male != female
    assert fundamental(female.waveform[0]) > 1.3 * fundamental(male.waveform[0])
    # eSpeak NG keeps state between utterances; speaking something else first must not matter.
    speak("something else entirely, at another rate", Voice(name="en-gb-x-rp", rate=210, pitch=70))
    assert speak(text, Voice(name="en-us")) == male
    slow, fast = speak(text, Voice(name="en", rate=120)), speak(text, Voice(name="en", rate=240))
    assert slow.duration > 1.5 * fast.duration


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(SpeechError, match="no voice 'xx-nowhere'"):
        speak("hello", Voice(name="xx-nowhere"))
