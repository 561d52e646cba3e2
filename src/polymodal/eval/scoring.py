"""Scoring, as the established multimodal harnesses do it: pure functions of answers and references.

* **Multiple choice** (MMBench): options are shown as ``A. …`` lines; an item with N options is asked
  N times with the options rotated by one each time (:func:`rotations`), and is right under
  *circular evaluation* only if every pass picks the right option. Items whose option texts contain
  an option letter are asked once (rotating them would change what the letters mean).
* **Choice extraction** (:func:`extract_choice`) without a judge model, in this order:
  1. a lone option letter: the whole answer is one letter (``"B"``, ``"(b)"``), or it starts with a
     letter and ``.`` ``)`` or ``:`` (``"B. red"``), or its last word is a capital option letter
     (``"I pick C"``);
  2. "answer is X" / "answer: X" with X a capital option letter;
  3. exactly one option's text inside the answer, whole words, after :func:`normalise`, when the
     answer is not much longer than the options (at most twice the longest option's words plus 5;
     an option found inside a longer found option counts as the longer one).
  Anything else is *unreadable*: counted as wrong, and its rate is reported.
* **Intervals**: 95% Wilson score intervals on every proportion (:func:`wilson_interval`); a seeded
  bootstrap over items for the means that are not proportions (CIDEr-D, WER).
* **Text**: :func:`normalise` = Unicode NFKC, lower case, every character that is not a letter or a
  digit becomes a space, runs of spaces collapse. Exact match compares normalised texts with any
  reference. CIDEr-D (:func:`cider_d`) follows Vedantam et al. (2015) as the COCO caption evaluator
  computes it (n = 1..4, TF-IDF with document frequencies over the references of all items, clipped
  candidate weights, Gaussian length penalty σ = 6, ×10), but tokenizes with :func:`normalise`
  instead of the Java PTB tokenizer.
* **Transcription**: word error rate with ``jiwer`` on normalised texts; the corpus WER is the total
  of substitutions, deletions and insertions over the total reference words.

This module knows nothing about models, prompts or files.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# -- proportions and intervals -------------------------------------------------------------------------


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (95% by default); (0, 1) when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def items_for_margin(margin: float, z: float = Z95) -> int:
    """The fewest items whose 95% Wilson interval is at most ±``margin`` whatever the accuracy.

    The half-width is widest at an observed accuracy of 1/2, where it is z / (2·sqrt(n + z²)), so
    n = ceil((z / 2m)² − z²): 381 items for ±5 points.
    """
    return math.ceil((z / (2 * margin)) ** 2 - z * z)


@dataclass(frozen=True)
class Proportion:
    """``correct`` out of ``total`` with its 95% Wilson interval."""

    correct: int
    total: int

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"value": self.value, "low": low, "high": high, "correct": self.correct, "total": self.total}


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of ``statistic`` over item resamples (seeded: reproducible).

    ``values`` may be a 1-D sequence or rows (one per item) that ``statistic`` reduces.
    """
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    stats = np.array([statistic(data[p]) for p in picks])
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


# -- text ----------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFKC, lower case, non-alphanumerics to spaces, spaces collapsed (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def exact_match(candidate: str, references: Sequence[str]) -> bool:
    """Whether the normalised candidate equals some normalised reference."""
    return normalise(candidate) in {normalise(r) for r in references}


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) between normalised texts, by jiwer."""
    reference, hypothesis = normalise(reference), normalise(hypothesis)
    if not reference:
        return len(hypothesis.split()), 0
    result = jiwer.process_words(reference, hypothesis)
    return result.substitutions + result.deletions + result.insertions, len(reference.split())


def corpus_wer(pairs: Sequence[tuple[int, int]]) -> float:
    """Total errors over total reference words, from :func:`word_errors` results."""
    errors, words = (sum(column) for column in zip(*pairs, strict=True)) if pairs else (0, 0)
    return errors / words if words else 0.0


# -- CIDEr-D -------------------------------------------------------------------------------------------

_CIDER_N = 4
_CIDER_SIGMA = 6.0


def _ngrams(words: list[str]) -> list[Counter]:
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, _CIDER_N + 1)]


def _tfidf(counts: list[Counter], df: Counter, log_items: float) -> tuple[list[dict], list[float]]:
    """Per n: the TF-IDF weight of each n-gram, and the vector's norm."""
    vectors, norms = [], []
    for grams in counts:
        vector = {g: tf * (log_items - math.log(max(1.0, df[g]))) for g, tf in grams.items()}
        vectors.append(vector)
        norms.append(math.sqrt(sum(v * v for v in vector.values())))
    return vectors, norms


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D of each candidate against its references; the corpus score is their mean.

    Document frequencies come from the references of all the items given, so scores depend on the
    whole set (as in the COCO evaluator): score a whole task at once.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    ref_counts = [[_ngrams(normalise(r).split()) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        df.update({g for counts in refs for grams in counts for g in grams})
    log_items = math.log(max(1.0, float(len(candidates))))
    scores = []
    for candidate, refs in zip(candidates, ref_counts, strict=True):
        words = normalise(candidate).split()
        cand_vec, cand_norm = _tfidf(_ngrams(words), df, log_items)
        total = 0.0
        for counts in refs:
            ref_vec, ref_norm = _tfidf(counts, df, log_items)
            ref_len = sum(counts[0].values())
            penalty = math.exp(-((len(words) - ref_len) ** 2) / (2 * _CIDER_SIGMA**2))
            for n in range(_CIDER_N):
                if cand_norm[n] == 0 or ref_norm[n] == 0:
                    continue
                # CIDEr-D clips the candidate's weights at the reference's: repeating words never helps.
                dot = sum(min(w, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, w in cand_vec[n].items())
                total += penalty * dot / (cand_norm[n] * ref_norm[n]) / _CIDER_N
        scores.append(10.0 * total / len(refs) if refs else 0.0)
    return scores


# -- multiple choice -----------------------------------------------------------------------------------


def can_rotate(options: Sequence[str]) -> bool:
    """False when an option's text contains one of the option letters as a word (e.g. ``"both A and B"``)."""
    letters = LETTERS[: len(options)]
    return not any(re.search(rf"(?<![A-Za-z])[{letters}](?![A-Za-z])", o) for o in options)


@dataclass(frozen=True)
class Rotation:
    """One pass of a multiple-choice item: the options in the order shown and where the answer is."""

    shift: int
    options: tuple[str, ...]
    answer_index: int


def rotations(options: Sequence[str], answer_index: int) -> list[Rotation]:
    """The N passes of circular evaluation (pass k shows option ``(i + k) mod N`` at position i), or
    the one unrotated pass when :func:`can_rotate` is false."""
    n = len(options)
    shifts = range(n) if can_rotate(options) else range(1)
    return [Rotation(k, tuple(options[(i + k) % n] for i in range(n)), (answer_index - k) % n) for k in shifts]


def format_options(options: Sequence[str]) -> str:
    """``"A. red\\nB. blue"``: the options as the prompt shows them."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _option_text_choice(answer: str, options: Sequence[str]) -> int | None:
    said = normalise(answer)
    texts = [normalise(o) for o in options]
    longest = max(len(t.split()) for t in texts)
    if not said or len(said.split()) > 2 * longest + 5:
        return None
    found = [i for i, t in enumerate(texts) if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", said)]
    # "a red circle" also contains the option "circle": keep only matches not inside another match.
    found = [i for i in found if not any(j != i and texts[i] in texts[j] for j in found)]
    return found[0] if len(found) == 1 else None


def extract_choice(answer: str, options: Sequence[str]) -> int | None:
    """The option (0-based) a free-text answer picks, or None if it is unreadable (module docstring)."""
    letters = LETTERS[: len(options)]
    stripped = answer.strip()
    bare = re.sub(r"[^\w\s]", " ", stripped).split()
    if len(bare) == 1 and len(bare[0]) == 1 and bare[0].upper() in letters:
        return letters.index(bare[0].upper())
    leading = re.match(rf"^\(?([{letters}])[.):]", stripped)
    if leading:
        return letters.index(leading.group(1))
    if len(bare) > 1 and len(bare[-1]) == 1 and bare[-1] in letters:
        return letters.index(bare[-1])
    # A capital letter only: "the answer is a red circle" names an option's text, not option A.
    stated = re.search(rf"(?i:answer)\s*(?:(?i:is)|:)\s*\(?([{letters}])(?![A-Za-z])", stripped)
    if stated:
        return letters.index(stated.group(1).upper())
    return _option_text_choice(stripped, options)


@dataclass(frozen=True)
class MultipleChoiceOutcome:
    """One item's passes: the answer index and the extracted choice (None: unreadable) of each."""

    item_id: str
    ability: str
    category: str
    n_options: int
    answer_indices: tuple[int, ...]
    choices: tuple[int | None, ...]

    @property
    def single_pass_correct(self) -> bool:
        """The unrotated pass (as a one-pass harness would score it)."""
        return self.choices[0] == self.answer_indices[0]

    @property
    def circular_correct(self) -> bool:
        return all(c == a for c, a in zip(self.choices, self.answer_indices, strict=True))

    @property
    def unreadable(self) -> int:
        return sum(c is None for c in self.choices)


@dataclass(frozen=True)
class MultipleChoiceScore:
    """Circular and single-pass accuracy of a set of items, unreadable rate and chance levels."""

    circular: Proportion
    single_pass: Proportion
    unreadable: Proportion  # over every pass asked
    chance_single: float  # mean of 1/N over the items
    chance_circular: float  # mean of the chance of guessing every pass right

    def to_dict(self) -> dict:
        return {
            "circular": self.circular.to_dict(),
            "single_pass": self.single_pass.to_dict(),
            "unreadable": self.unreadable.to_dict(),
            "chance_single": self.chance_single,
            "chance_circular": self.chance_circular,
        }


def score_multiple_choice(outcomes: Sequence[MultipleChoiceOutcome]) -> MultipleChoiceScore:
    """Aggregate item outcomes (see :class:`MultipleChoiceScore`)."""
    n = len(outcomes)
    passes = sum(len(o.choices) for o in outcomes)
    return MultipleChoiceScore(
        circular=Proportion(sum(o.circular_correct for o in outcomes), n),
        single_pass=Proportion(sum(o.single_pass_correct for o in outcomes), n),
        unreadable=Proportion(sum(o.unreadable for o in outcomes), passes),
        chance_single=sum(1 / o.n_options for o in outcomes) / n if n else 0.0,
        chance_circular=sum((1 / o.n_options) ** len(o.choices) for o in outcomes) / n if n else 0.0,
    )
