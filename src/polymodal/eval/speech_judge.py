"""The judge of generated speech: an independent recogniser's word error rate on it.

The recogniser is CMU PocketSphinx (its PyPI package ships an English acoustic model and dictionary;
``pip install 'polymodal[eval]'``), with a bigram language model over the words of the shapes world,
written here from sentences the corpus's own caption and question writers produce. A model's speech is
as intelligible as the words PocketSphinx hears in it; the same recogniser on the corpus's eSpeak NG
speech of the same sentences is the floor printed beside it (PocketSphinx's acoustic model was trained
on human speech, and eSpeak's is far from it: expect around half of the words wrong even there).

Nothing here was trained on model outputs, and PocketSphinx is not a polymodal model: the judge is
independent of what it judges.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from polymodal.content import Audio
from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic

JUDGE_VERSION = 1  # bump when the language model's sentences change: installed judges are rebuilt
SAMPLE_RATE = 16_000


def words(text: str) -> list[str]:
    """Lower-case words as the judge compares them (the transcription tasks' normalisation)."""
    return re.findall(r"[a-z']+", text.lower())


def bigram_arpa(sentences: Iterable[str], discount: float = 0.5) -> str:
    """An ARPA bigram language model with absolute discounting and back-off to unigrams."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for sentence in sentences:
        seq = ["<s>", *words(sentence), "</s>"]
        unigrams.update(seq)
        bigrams.update(zip(seq, seq[1:], strict=False))
    if len(unigrams) <= 2:
        raise ConfigError("the speech judge's language model needs sentences with words")
    total = sum(c for w, c in unigrams.items() if w != "<s>")
    p1 = {w: c / total for w, c in unigrams.items() if w != "<s>"}
    followers: dict[str, list[str]] = {}
    for a, b in bigrams:
        followers.setdefault(a, []).append(b)
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    for w in sorted(unigrams):
        back = 0.0
        if w in followers:
            count = sum(bigrams[w, b] for b in followers[w])
            left = discount * len(followers[w]) / count  # the mass taken from seen bigrams
            back = math.log10(left / max(1e-9, 1 - sum(p1.get(b, 0.0) for b in followers[w])))
        prob = -99.0 if w == "<s>" else math.log10(p1[w])
        lines.append(f"{prob:.5f} {w} {back:.5f}")
    lines += ["", "\\2-grams:"]
    for (a, b), c in sorted(bigrams.items()):
        count = sum(bigrams[a, x] for x in followers[a])
        lines.append(f"{math.log10((c - discount) / count):.5f} {a} {b}")
    return "\n".join([*lines, "", "\\end\\", ""])


class SpeechJudge:
    """PocketSphinx with a language model of ``sentences``' words; :meth:`transcribe` one clip."""

    def __init__(self, language_model: str | os.PathLike) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise ConfigError("judging generated speech needs PocketSphinx: pip install 'polymodal[eval]'") from None
        self.decoder = Decoder(lm=str(language_model), loglevel="FATAL")
        self._add_plurals(Path(language_model))

    def _add_plurals(self, language_model: Path) -> None:
        """Words of the model missing from the dictionary: a plural of a known word gets its "-z"."""
        vocabulary = set()
        section = False
        for line in language_model.read_text().splitlines():
            if line.startswith("\\"):
                section = line == "\\1-grams:"
                continue
            if section and line.strip():
                vocabulary.add(line.split()[1])
        for word in sorted(vocabulary - {"<s>", "</s>"}):
            if self.decoder.lookup_word(word) is None and word.endswith("s"):
                stem = self.decoder.lookup_word(word[:-1])
                if stem is not None:
                    self.decoder.add_word(word, f"{stem} Z", True)

    @classmethod
    def build(cls, folder: str | os.PathLike, sentences: Iterable[str]) -> SpeechJudge:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "shapes.arpa", bigram_arpa(sentences))
        return cls(folder / "shapes.arpa")

    def transcribe(self, audio: Audio) -> str:
        from polymodal.data.shapes.speech import resample

        mono = audio.to_mono()
        wave = np.asarray(mono.waveform[0], dtype=np.float64)
        if mono.sample_rate != SAMPLE_RATE:
            wave = resample(wave, mono.sample_rate, SAMPLE_RATE)
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""

    def transcribe_all(self, clips: Sequence[Audio]) -> list[str]:
        return [self.transcribe(clip) for clip in clips]


def judge_sentences(n: int = 4000, seed: int = 0) -> list[str]:
    """Sentences of the shapes world for the judge's language model: captions and questions from the
    corpus's writers, on a random stream of their own (not the test items')."""
    from polymodal.data.shapes.language import caption
    from polymodal.data.shapes.questions import image_question
    from polymodal.data.shapes.seeds import sample_rng
    from polymodal.data.shapes.world import random_scene

    out = []
    for index in range(n):
        rng = sample_rng(seed, "train", "eval:speech-judge", index)
        scene = random_scene(rng)
        out.append(caption(scene, rng) if rng.random() < 0.6 else image_question(scene, rng).text)
    return out


def load_speech_judge(home: str | os.PathLike | None = None) -> SpeechJudge:
    """The built-in judge, its language model installed under ``$POLYMODAL_EVAL_HOME`` on first use."""
    from polymodal.eval.tasks import eval_home

    folder = Path(home or eval_home()) / f"speech-judge-v{JUDGE_VERSION}"
    if (folder / "shapes.arpa").is_file():
        return SpeechJudge(folder / "shapes.arpa")
    return SpeechJudge.build(folder, judge_sentences())
