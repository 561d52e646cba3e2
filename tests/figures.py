"""Assertions on learned figures: what a test trained reached, against its bar.

A learned figure (a probe's accuracy, a loss after training, a tokenizer's PSNR) moves a little from one
machine, BLAS build or thread count to the next. Each test that asserts one says in a comment what it
reached and why its bar leaves room; these helpers put both in the failure message, and with
``POLYMODAL_FIGURES=FILE`` append every checked figure to FILE (JSON lines: test, name, value, bar,
threads) so that the margins can be measured on another machine or with ``POLYMODAL_TEST_THREADS=1``.

The comments read "reached A / B; bar C": A on 2 threads, B on 1 thread (``POLYMODAL_TEST_THREADS=1``),
both measured on a 2-core development machine of CI's kind.
"""

from __future__ import annotations

import json
import os

import torch


def _record(name: str, value: float, bar: float, sense: str) -> None:
    path = os.environ.get("POLYMODAL_FIGURES")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    row = {"test": test, "name": name, "value": float(value), "bar": float(bar), "sense": sense,
           "threads": torch.get_num_threads()}  # fmt: skip
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def above(name: str, value: float, bar: float) -> None:
    """Assert the learned figure ``value`` > ``bar``."""
    _record(name, value, bar, ">")
    assert value > bar, f"{name}: reached {value:.4g}, needs more than {bar:.4g}"


def below(name: str, value: float, bar: float) -> None:
    """Assert the learned figure ``value`` < ``bar``."""
    _record(name, value, bar, "<")
    assert value < bar, f"{name}: reached {value:.4g}, needs less than {bar:.4g}"


# A trained token whose probability is above one half is the argmax whatever the machine's rounding: a test
# that needs greedy decoding to reproduce what it memorised checks this figure against ln 2.
LN2 = 0.6931471805599453


@torch.no_grad()
def worst_token_nll(model: torch.nn.Module, batch) -> float:  # noqa: ANN001
    """The largest teacher-forced cross-entropy (nats) of any token that carries loss weight in ``batch``
    (a padded :class:`~polymodal.tokenizers.sequence.TokenBatch`)."""
    from polymodal.train.losses import token_losses

    logits = model(batch.ids, batch.positions, batch.modality, batch.attention_mask)
    losses = token_losses(logits, batch.ids)
    return float(losses[batch.loss_weight[:, 1:] > 0].max())
