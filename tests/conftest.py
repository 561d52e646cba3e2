"""What every test shares: an evaluation home of its own, the thread count, the ``gpu`` marker, and the
expensive judges (image probes, speech judge) built once per test run.

- ``POLYMODAL_EVAL_HOME`` points into the session's temporary folder: no test reads or writes the
  user's ``~/.cache/polymodal``, so a machine with an empty home runs the suite as a warm one does.
- ``POLYMODAL_TEST_THREADS=N`` runs the whole suite (and the processes it starts) on N threads, to
  check that no learned figure depends on the thread count (``POLYMODAL_TEST_THREADS=1 pytest``).
- Tests marked ``gpu`` run where CUDA is present and are skipped elsewhere with that reason.
- ``POLYMODAL_FIGURES=FILE`` appends every learned figure that :mod:`figures` checks to FILE (JSON
  lines), to measure the margins across machines and thread counts.
"""

from __future__ import annotations

import os

import pytest
import torch

_threads = os.environ.get("POLYMODAL_TEST_THREADS")
if _threads:
    torch.set_num_threads(int(_threads))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = _threads  # torchrun workers and other subprocesses inherit it


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ANN201
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def eval_home(tmp_path_factory):  # noqa: ANN001, ANN201
    """A fresh evaluation home for the whole run, so that nothing is read from or left in ``~/.cache``."""
    home = tmp_path_factory.mktemp("eval-home")
    saved = os.environ.get("POLYMODAL_EVAL_HOME")
    os.environ["POLYMODAL_EVAL_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("POLYMODAL_EVAL_HOME", None)
    else:
        os.environ["POLYMODAL_EVAL_HOME"] = saved


@pytest.fixture(scope="session")
def probes():  # noqa: ANN201
    """Image attribute probes at 32 px, trained once per test run (about 2 minutes on 2 cores)."""
    from polymodal.eval.probes import ImageProbes, ProbeSettings

    return ImageProbes.train(ProbeSettings(size=32, examples=1200, steps=500, batch_size=48))


@pytest.fixture(scope="session")
def judge(tmp_path_factory):  # noqa: ANN001, ANN201
    """The PocketSphinx speech judge with a bigram model of 600 shapes-world sentences, built once."""
    from polymodal.eval.speech_judge import SpeechJudge, judge_sentences

    return SpeechJudge.build(tmp_path_factory.mktemp("judge"), judge_sentences(600))
