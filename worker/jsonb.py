"""What Postgres's ``jsonb`` can store: JSON without NaN, ±Infinity or the character U+0000.

Python's ``json`` writes ``NaN`` and ``Infinity`` (and reads them, and ``1e400`` as
infinity); ``jsonb`` refuses both, and refuses ``\\u0000`` in any string or key. Every value
agentq stores as JSON (a run's input and metadata, an agent's result, a step's result, an
event, a session's state, an inbound payload) is encoded here first, so such a value is
refused where it enters with a message naming where it sits, never by Postgres later.
"""

from __future__ import annotations

import json
import re
from typing import Any

# \u0000 as json.dumps writes it, not preceded by an escaping backslash (``"\\u0000"`` is
# the six characters \, u, 0, 0, 0, 0, which jsonb stores well).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class Unstorable(ValueError):
    """A value that is JSON to Python but that jsonb cannot store; the message says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} holds {problem}, which cannot be stored")
        self.path = path


def dumps(value: Any, *, what: str) -> str:
    """``value`` as compact JSON that jsonb will store, or Unstorable naming the culprit."""
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:  # NaN or Infinity, or an integer of more than 4,300 digits
        raise Unstorable(*_find(value, what) or (what, "a value JSON cannot carry")) from None
    except RecursionError:
        raise Unstorable(what, "values nested too deeply") from None
    if holds_nul(encoded):
        raise Unstorable(*_find(value, what) or (what, "the character U+0000"))
    return encoded


def holds_nul(encoded: str | bytes) -> bool:
    """Whether JSON text has a ``\u0000`` escape (JSON text cannot hold a raw U+0000)."""
    text = encoded if isinstance(encoded, str) else encoded.decode("utf-8", "replace")
    return "\\u0000" in text and _NUL.search(text) is not None


def check(value: Any, *, what: str) -> None:
    """Raise Unstorable if jsonb could not store ``value``."""
    dumps(value, what=what)


def _find(value: Any, path: str) -> tuple[str, str] | None:
    """The path to the first value jsonb refuses, and what it is (only on the error path)."""
    if isinstance(value, float) and value != value:
        return path, "NaN (JSON has no NaN: send null or a string)"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return path, "an infinite number (JSON has none: send null, a string, or a finite number)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        return path, "an integer of more than 4,000 digits (send it as a string)"
    if isinstance(value, str) and "\x00" in value:
        return path, "the character U+0000 (remove it, or encode the text)"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return path, "a key with the character U+0000 (remove it)"
            found = _find(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]")
            if found:
                return found
    return None
