"""Serving a run behind an OpenAI-compatible API: ``create_app(run, config)``; ``polymodal serve RUN``.

Needs the ``serve`` extra: ``pip install 'polymodal[serve]'`` (FastAPI, uvicorn, python-multipart,
prometheus-client).
"""

from polymodal.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (imports FastAPI only when used)
    from polymodal.serve.app import create_app as create

    return create(*args, **kwargs)
