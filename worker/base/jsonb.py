"""What Postgres's ``jsonb`` can store: JSON without NaN, ±Infinity, the character U+0000
or a lone surrogate.

Python's ``json`` writes ``NaN`` and ``Infinity`` (and reads them, and ``1e400`` as
infinity); ``jsonb`` refuses both, and refuses ``\\u0000`` and an unpaired ``\\ud800`` in any
string or key (Python's strings can hold both; UTF-8 and Postgres's text cannot). Every value
agentq stores as JSON (a run's input and metadata, an agent's result, a step's result, an
event, a session's state, an inbound payload) is encoded here first, so such a value is
refused where it enters with a message naming where it sits, never by Postgres later.
"""

from __future__ import annotations

import json
import re
from typing import Any

# \u0000 as JSON writes it, not preceded by an escaping backslash (``"\\u0000"`` is the
# six characters \, u, 0, 0, 0, 0, which jsonb stores well).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# Any escaped surrogate (a pair is fine, and common: an emoji sent as ASCII).
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class Unstorable(ValueError):
    """A value that is JSON to Python but that jsonb cannot store; the message says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} holds {problem}, which cannot be stored")
        self.path = path


def dumps(value: Any, *, what: str) -> str:
    """``value`` as compact JSON that jsonb will store, or Unstorable naming the culprit."""
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        encoded.encode("utf-8")  # a lone surrogate cannot be
    except (ValueError, UnicodeEncodeError):  # NaN, Infinity, a 4,300-digit integer, ...
        raise Unstorable(*_find(value, what) or (what, "a value JSON cannot carry")) from None
    except RecursionError:
        raise Unstorable(what, "values nested too deeply") from None
    if "\\u0000" in encoded and _NUL.search(encoded):
        raise Unstorable(*_find(value, what) or (what, "the character U+0000"))
    return encoded


def check_text(raw: str | bytes, *, what: str) -> None:
    """Raise Unstorable if JSON text (a request's body, a frame) escapes what jsonb and
    Postgres's text cannot hold: U+0000, or a lone surrogate. Text that is not JSON passes
    (its reader says so)."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    if "\\u0000" in text and _NUL.search(text):
        raise Unstorable(what, "the character U+0000 (remove it, or encode the text)")
    if _SURROGATE.search(text):  # rare: read it to tell a pair from a lone one
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return
        check(value, what=what)


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
    if isinstance(value, str) and not value.isascii() and _lone_surrogate(value):
        return path, "a lone surrogate (\\ud800 to \\udfff unpaired: not a character)"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and ("\x00" in key or _lone_surrogate(key)):
                return path, "a key with U+0000 or a lone surrogate in it"
            found = _find(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
