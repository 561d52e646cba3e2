"""Constrained text decoding: outputs that always parse as JSON and validate against a schema.

:func:`json_constraint` wraps lm-format-enforcer (``pip install lm-format-enforcer``, in the
``serve`` extra): at each step it gives the text tokens that keep the output a valid prefix of a
document the schema accepts, and allows the end of the turn only once the document is complete. An
output cut by its token budget (``finish_reason == "length"``) is a prefix of such a document, as
with OpenAI's API.
:func:`polymodal.generation.stream` takes one constraint per row (``constraints=``).

The vocabulary table the enforcer needs (every text token's string) is built once per tokenizer
and reused by every request.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol

from polymodal import vocab as V
from polymodal.errors import ConfigError
from polymodal.run import Run


class TextConstraint(Protocol):
    def allowed(self, generated: list[int]) -> list[int]:
        """Global ids allowed after ``generated`` (the row's generated ids so far)."""
        ...


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _tokenizer_data(run: Run) -> Any:
    from lmformatenforcer import TokenEnforcerTokenizerData

    with _LOCK:
        found = _TABLES.get(run.tokenizer)
        if found is not None:
            return found
        vocab = run.tokenizer.vocab
        text = run.tokenizer.tokenizer("text")
        start = vocab.range("text").start
        tokens = [(start + i, text.decode_ids([i]), False) for i in range(text.vocab_size)]
        end = vocab.special_id(V.END_OF_TURN)

        def decode(ids: list[int]) -> str:
            return text.decode_ids([i - start for i in ids if start <= i < start + text.vocab_size])

        data = TokenEnforcerTokenizerData(tokens, decode, end, False, vocab.size)
        _TABLES[run.tokenizer] = data
        return data


class _JsonConstraint:
    def __init__(self, enforcer: Any) -> None:
        self.enforcer = enforcer

    def allowed(self, generated: list[int]) -> list[int]:
        # The enforcer keys its states on the sequence; a leading 0 stands for the (unused) prompt.
        allowed = self.enforcer.get_allowed_tokens([0, *generated])
        return list(getattr(allowed, "allowed_tokens", allowed))  # a TokenList in 0.11, a list before


def json_constraint(run: Run, schema: dict | None = None) -> TextConstraint:
    """Text that parses as JSON: any object when ``schema`` is None, else one valid under ``schema``
    (a JSON Schema). Raises :class:`ConfigError` for a schema the enforcer cannot use."""
    try:
        from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser, TokenEnforcer
    except ImportError as exc:
        raise ConfigError(
            f"structured output needs lm-format-enforcer: pip install 'polymodal[serve]' ({exc})"
        ) from exc
    if schema is not None and not isinstance(schema, dict):
        raise ConfigError("a JSON schema is an object")
    try:
        parser = JsonSchemaParser(schema if schema is not None else {"type": "object"})
    except Exception as exc:  # noqa: BLE001 (the enforcer raises whatever its schema reader raises)
        raise ConfigError(f"cannot use this JSON schema: {type(exc).__name__}: {exc}") from None
    data = _tokenizer_data(run)
    enforcer = TokenEnforcer(data, parser)
    # At most one whitespace in a row (the enforcer's default is 12): a model that has not learned
    # JSON's layout cannot spend its budget on indentation. Set after TokenEnforcer, which replaces
    # the parser's config with its own.
    parser.config = CharacterLevelParserConfig(alphabet=data.tokenizer_alphabet, max_consecutive_whitespaces=1)
    return _JsonConstraint(enforcer)
