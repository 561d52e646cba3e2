"""Optional dependencies of the tests: skipped where an extra is not installed, a failure in CI.

``pytest.importorskip`` alone would let a CI run go green with whole test files skipped when a dev extra
failed to install; :func:`require` fails there instead (CI sets ``CI=true``; ``.ci/run`` does too).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(module: str, extra: str = "dev") -> ModuleType:
    """Import ``module``; where it is missing, skip (outside CI) or fail (in CI), naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed (pip install -e '.[{extra}]'): {exc}"
        if in_ci():
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
