"""Speech: English text spoken by eSpeak NG, returned as 16 kHz mono audio.

The library and its voice data come from the ``espeakng-loader`` wheel (no system install, no
network). It is driven through ctypes in synchronous mode: ``espeak_Synth`` calls our callback
with 22050 Hz int16 chunks, which are joined, resampled to 16 kHz with a polyphase Kaiser-windowed
FIR (``scipy.signal.resample_poly``, 320/441), trimmed of long silences and rounded to 16-bit
values (so FLAC storage returns exactly the same waveform).

Reproducibility: eSpeak NG keeps synthesis state in C static variables (the pitch-flutter phase,
the gain control, a cycle counter) that survive ``espeak_Terminate``/``espeak_Initialize``, so
the same sentence comes out a few samples different depending on what the process said before —
which would make sample *i* depend on the worker that made it. Each utterance is therefore spoken
by a freshly loaded copy of the library (mapped from an in-memory file, then unloaded): about
6 ms per sentence, and identical output in every process. Where in-memory files are unavailable
(non-Linux), one shared instance is used and speech is not bit-reproducible (a warning says so).

The library is process-global and not thread-safe: every call holds one lock. Voices are English
variants found in the installed data folder (:func:`available_voices`); :class:`Voice` also
carries rate (words per minute) and pitch (0-99).

This module knows nothing about scenes, captions or documents.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from polymodal.content import Audio
from polymodal.data.shapes.sounds import pcm16
from polymodal.errors import ConfigError, PolymodalError

SAMPLE_RATE = 16_000
_ESPEAK_RATE = 22_050
# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _VOLUME, _PITCH = 1, 2, 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# Candidate voices, most common first; only those whose language/variant files exist are used.
_LANGUAGES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan")
_VARIANTS = ("", "f2", "f3", "f4", "m2", "m3", "m7")


class SpeechError(PolymodalError):
    """eSpeak NG could not be loaded, could not find a voice, or failed to speak."""


@dataclass(frozen=True, kw_only=True)
class Voice:
    """An eSpeak NG voice name (``"en-us"``, ``"en+f3"``), rate in words per minute, pitch 0-99."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ConfigError(f"Voice.rate must be 80-450 words per minute, got {self.rate}")
        if not 0 <= self.pitch <= 99:
            raise ConfigError(f"Voice.pitch must be 0-99, got {self.pitch}")

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def available_voices() -> tuple[str, ...]:
    """English voice names (language plus optional ``+variant``) present in the data folder."""
    data = Path(_data_path())
    languages = {p.name.lower() for p in (data / "lang").rglob("*") if p.is_file()}
    variants = {p.name for p in (data / "voices" / "!v").glob("*") if p.is_file()}
    found = [lang for lang in _LANGUAGES if lang in languages]
    if not found:
        raise SpeechError(f"no English voice in the eSpeak NG data folder {data}")
    return tuple(lang + (f"+{v}" if v else "") for lang in found for v in _VARIANTS if not v or v in variants)


def random_voice(rng: np.random.Generator) -> Voice:
    """A voice, rate (130-210 wpm) and pitch (30-70) chosen by ``rng``."""
    names = available_voices()
    return Voice(
        name=names[int(rng.integers(len(names)))], rate=int(rng.integers(130, 211)), pitch=int(rng.integers(30, 71))
    )


def speak(text: str, voice: Voice | None = None, *, gain: float = 0.8) -> Audio:
    """``text`` spoken by ``voice``: 16 kHz mono :class:`~polymodal.content.Audio`, peak ``gain``."""
    if not text.strip():
        raise ConfigError("speak() needs non-empty text")
    voice = voice or Voice()
    pcm = _engine().synthesize(text, voice)
    if pcm.size == 0 or not pcm.any():
        raise SpeechError(f"eSpeak NG produced no sound for {text[:40]!r} with voice {voice.name!r}")
    wave = resample(pcm.astype(np.float64) / 32768.0, _ESPEAK_RATE, SAMPLE_RATE)
    wave = _trim(wave)
    wave *= gain / max(float(np.abs(wave).max()), 1e-9)
    return Audio(pcm16(wave)[None, :], SAMPLE_RATE, source="shapes:speech")


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (polyphase FIR with a Kaiser window; the anti-aliasing cutoff is
    the lower Nyquist frequency)."""
    from math import gcd

    from scipy.signal import resample_poly  # imported here: scipy.signal takes a while to load

    g = gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g)


def _trim(wave: np.ndarray, keep: float = 0.05, threshold: float = 0.01) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``keep`` seconds of it on each side."""
    loud = np.flatnonzero(np.abs(wave) > threshold * np.abs(wave).max())
    pad = round(keep * SAMPLE_RATE)
    return wave[max(0, loud[0] - pad) : loud[-1] + pad + 1]


# -- the library ----------------------------------------------------------------------------------

_LOCK = threading.Lock()
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _data_path() -> str:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise SpeechError("speech needs the 'espeakng-loader' package (pip install espeakng-loader)") from exc
    return espeakng_loader.get_data_path()


class _Engine:
    """Loads eSpeak NG per utterance (see the module docstring) and collects its samples."""

    def __init__(self) -> None:
        self.data_path = _data_path().encode()  # first: names the missing package if it is
        import espeakng_loader

        library_path = espeakng_loader.get_library_path()
        try:
            self.library_bytes = Path(library_path).read_bytes()
        except OSError as exc:
            raise SpeechError(f"cannot read the eSpeak NG library {library_path}: {exc}") from exc
        self.library_path = library_path
        self.fresh_copies = hasattr(os, "memfd_create")
        self.shared = None if self.fresh_copies else self._load(library_path)
        self.chunks: list[np.ndarray] = []
        # Kept on self: ctypes callbacks must outlive every call that can invoke them.
        self.callback = _CALLBACK_TYPE(self._collect)
        if not self.fresh_copies:
            warnings.warn("speech is not bit-reproducible on this OS (no memfd_create)", stacklevel=3)
            self._initialise(self.shared)

    def _collect(self, wav, count, events) -> int:
        if count > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = keep synthesizing

    def _load(self, path: str) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        except OSError as exc:
            raise SpeechError(f"cannot load the eSpeak NG library {self.library_path}: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
        lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        return lib

    def _initialise(self, lib: ctypes.CDLL) -> None:
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, 0)
        if rate != _ESPEAK_RATE:
            raise SpeechError(
                f"eSpeak NG failed to initialise with data {self.data_path.decode()} (returned {rate}, "
                f"expected sample rate {_ESPEAK_RATE})"
            )
        lib.espeak_SetSynthCallback(self.callback)

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at 22050 Hz."""
        with _LOCK:
            if not self.fresh_copies:
                return self._speak(self.shared, text, voice)
            fd = os.memfd_create("espeak-ng", 0)
            try:
                os.write(fd, self.library_bytes)
                lib = self._load(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            try:
                self._initialise(lib)
                return self._speak(lib, text, voice)
            finally:
                lib.espeak_Terminate()
                import _ctypes

                _ctypes.dlclose(lib._handle)

    def _speak(self, lib: ctypes.CDLL, text: str, voice: Voice) -> np.ndarray:
        lib.espeak_ng_SetRandSeed(0)
        if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise SpeechError(f"eSpeak NG has no voice {voice.name!r}; available: {', '.join(available_voices())}")
        lib.espeak_SetParameter(_RATE, voice.rate, 0)
        lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
        lib.espeak_SetParameter(_VOLUME, 100, 0)
        data = text.encode("utf-8") + b"\0"
        self.chunks = []
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise SpeechError(f"espeak_Synth failed with status {status} for {text[:40]!r}")
        chunks, self.chunks = self.chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def backend_versions() -> dict[str, str]:
    """The eSpeak NG library and ``espeakng-loader`` versions: speech is only reproducible
    between installs that agree on these."""
    from importlib.metadata import PackageNotFoundError, version

    engine = _engine()
    lib = ctypes.CDLL(engine.library_path, mode=os.RTLD_LOCAL)  # the shared copy; never synthesizes
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    try:
        loader = version("espeakng-loader")
    except PackageNotFoundError:
        loader = "unknown"
    return {"espeak_ng": lib.espeak_Info(None).decode(), "espeakng_loader": loader}


_ENGINES: dict[int, _Engine] = {}


def _engine() -> _Engine:
    """This process's engine, made on first use (a forked child makes its own)."""
    pid = os.getpid()
    with _LOCK:
        if pid not in _ENGINES:
            _ENGINES.clear()
            _ENGINES[pid] = _Engine()
        return _ENGINES[pid]
