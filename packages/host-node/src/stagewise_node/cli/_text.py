"""Text from users, made safe to show: control characters escaped, never sent raw.

Run inputs, outputs, error messages, progress notes, ids and log messages come from user
code and from the database. Sent to a terminal as they are, an ANSI escape in an error
message (ESC[2J, a window-title sequence) acts on the terminal of whoever looks at the run,
and a newline in a log message forges a log line. Everything the command line shows goes
through `printable` (or `safe_text` for Rich), which writes every control character as a
visible escape (`\\x1b`, `\\n`, `\\u2028`): C0 and C1 controls, DEL, Unicode line and
paragraph separators, and the bidirectional overrides that reorder what a line seems to say.
Newlines are kept only where the layout is multi-line (a traceback, a run's error).
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.text import Text

_BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ANY = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
_ALL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_BEYOND_C0}]")
_NOT_ESCAPED_BY_JSON = re.compile(f"[{_BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character escaped (newlines kept with `newlines`)."""
    return (_ALL_BUT_NEWLINE if newlines else _ANY).sub(_escape, text)


def safe_text(text: str, style: str = "", *, newlines: bool = False) -> Text:
    """A Rich `Text` of `text`, escaped: no markup is read in it, no control reaches the
    terminal."""
    return Text(printable(text, newlines=newlines), style=style)


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """`data` as JSON (indented, or on one line with `indent=None`), safe to print:
    `json.dumps` escapes C0 controls itself; the others (DEL, C1, separators, overrides) are
    escaped as `\\uXXXX` too. The result is still valid JSON with the same value."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return _NOT_ESCAPED_BY_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
