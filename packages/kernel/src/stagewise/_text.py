"""One rule for the text and JSON stagewise stores, alike on every backend.

Data (run input and config, stage output, suspend state, ids) is stored as given or refused
before anything is written: a value the databases cannot all hold must not be accepted by
one backend and refused by another, nor fail a transaction late for a reason nobody sees.
So `encode_json` refuses, with the reason:

* a NUL character: PostgreSQL refuses it in text and JSON;
* a lone surrogate (a code point in U+D800..U+DFFF; in a Python `str` they are never part of
  a pair): it is not Unicode, and cannot be encoded as UTF-8;
* NaN and the infinities: JSON has no such numbers (PostgreSQL refuses them; SQLite would
  store a non-JSON token);
* anything else `json` cannot encode, and values nested too deeply.

Diagnostics (error messages, tracebacks, log lines and their fields, progress messages,
reasons) are never refused: recording what went wrong must not fail because of what went
wrong. `scrub` replaces each NUL and lone surrogate in them with U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""A NUL character in `json.dumps` output (escaped as `\\u0000`; not an escaped backslash
followed by the text "u0000")."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableValue(ValueError):
    """Why a value cannot be stored: a phrase to follow its name ("run input ...")."""


def encode_json(value: Any) -> bytes:
    """`value` as it is stored: compact JSON in UTF-8.

    Raises:
        UnstorableValue: see the module docstring.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise UnstorableValue("contains NaN or an infinity, which JSON cannot hold") from None
        raise UnstorableValue(f"is not JSON-compatible: {exc}") from None
    except TypeError as exc:
        raise UnstorableValue(f"is not JSON-compatible: {exc}") from None
    except RecursionError:
        raise UnstorableValue("is nested too deeply") from None
    try:
        encoded = text.encode()
    except UnicodeEncodeError as exc:
        point = ord(exc.object[exc.start])
        raise UnstorableValue(
            f"contains a lone surrogate (U+{point:04X}), which is not valid Unicode"
        ) from None
    if _ESCAPED_NUL.search(encoded) is not None:
        raise UnstorableValue("contains a NUL character (U+0000), which cannot be stored")
    return encoded


def scrub(text: str) -> str:
    """Diagnostic text with each NUL and lone surrogate replaced by U+FFFD."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)
