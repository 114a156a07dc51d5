"""The outline of a streamed JSON answer: the document without its rows and long strings.

An answer over the body limit goes to the client as it arrives; the gateway
cannot hold it whole to record it. What the record keeps of it is this
outline, read piece by piece as the answer passes (addons/protocol.py
`StreamedAnswer`), then redacted and bounded like any body
(`redaction.streamed_body_for_record`).
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

OUTLINE_LIMIT: Final = 4 * 1024 * 1024
"""Most bytes of outline kept for one streamed body; a larger outline is given up."""
OUTLINE_STRING_LIMIT: Final = 4096
"""Strings longer than this (bytes as sent) are left out of an outline."""

_SCALARS: Final = rb'[^"\[\]{}]++'
_SHORT_STRING: Final = rb'"[^"\\]{0,%d}+(?:\\.[^"\\]{0,256}+){0,64}+"' % OUTLINE_STRING_LIMIT
# Scalars, separators, short strings and flat arrays of them: what a regex can take in one
# C-speed match. It stops at objects, nested arrays, long or unfinished strings.
_RUN: Final = re.compile(
    rb"(?:%b|%b|\[(?:%b|%b)*+\])*+" % (_SCALARS, _SHORT_STRING, _SCALARS, _SHORT_STRING)
)
_KEY_BEFORE: Final = re.compile(rb'"((?:[^"\\]|\\.){0,256})"[ \t\r\n]*:[ \t\r\n]*\Z')
_JSON_SPACE: Final = b" \t\r\n"
_QUOTE, _BACKSLASH, _OPEN_ARRAY, _OPEN_OBJECT = 0x22, 0x5C, 0x5B, 0x7B
_CLOSERS: Final = {0x5D: _OPEN_ARRAY, 0x7D: _OPEN_OBJECT}


class _Open:
    """A container the outline is inside of: its kind, path, and whether its content is kept."""

    __slots__ = ("kept", "kind", "path")

    def __init__(self, kind: int, path: str, kept: bool) -> None:
        self.kind = kind
        self.path = path
        self.kept = kept


class JsonOutline:
    """The outline of a JSON document read in pieces: what the record of a streamed body keeps.

    The outline is the document with every string longer than
    OUTLINE_STRING_LIMIT replaced by "" and every array of arrays (result rows:
    `data.rowset`, the SQL API's `data`) replaced by []; `elided` maps each
    such path to the bytes of JSON text left out. Everything else (query id,
    counts, column types, error code and message, chunk list) is kept as sent,
    so `close()` returns a value the usual record code reads like any answer.

    A streaming JSON parser would tokenise every row and buffer a long string
    whole (the Arrow `rowsetBase64` is one string of the body's size); here
    regular expressions skip rows in C and long strings with `bytes.find`, so
    memory stays at the outline's size and CPU near one pass of `re` over rows.
    """

    def __init__(self, limit: int = OUTLINE_LIMIT) -> None:
        self.limit = limit
        self.elided: dict[str, int] = {}
        self.problem: str | None = None
        self._out = bytearray()
        self._pending = b""
        self._open: list[_Open] = []
        self._long_string: str | None = None  # path charged while inside a long string
        self._escaped = False  # the previous piece ended inside an escape of that string

    def feed(self, data: bytes) -> None:
        """Read the next piece of the document."""
        if self.problem is not None or not data:
            return
        buffer = self._pending + data if self._pending else data
        self._pending = b""
        try:
            self._read(buffer)
        except _OutlineError as exc:
            self._give_up(str(exc))
        if len(self._out) > self.limit:
            self._give_up(f"outline over {self.limit} bytes")

    def close(self) -> Any:
        """The outline's value once the document is complete; None (and `problem`) otherwise."""
        unfinished = self._pending or self._open or self._long_string is not None
        if self.problem is None and unfinished:
            self._give_up("the document ended early")
        if self.problem is not None:
            return None
        try:
            return orjson.loads(self._out)
        except orjson.JSONDecodeError:
            self._give_up("not valid JSON")
            return None

    def _give_up(self, problem: str) -> None:
        self.problem = problem
        self._out = bytearray()
        self._pending = b""
        self._open.clear()

    def _read(self, buffer: bytes) -> None:
        end = len(buffer)
        position = 0
        while position < end:
            if self._long_string is not None:
                position = self._skip_long_string(buffer, position)
                continue
            run = _RUN.match(buffer, position).end()
            if run > position:
                self._take(buffer, position, run)
                position = run
                if position >= end:
                    return
            byte = buffer[position]
            if byte == _QUOTE:
                position = self._string(buffer, position)
            elif byte in (_OPEN_ARRAY, _OPEN_OBJECT):
                position = self._push(buffer, position)
            else:  # the run stops only at quotes and brackets
                self._pop(byte)
                position += 1

    def _take(self, buffer: bytes, start: int, stop: int) -> None:
        inner = self._open[-1] if self._open else None
        if inner is None or inner.kept:
            self._out += buffer[start:stop]
        else:
            self.elided[inner.path] = self.elided.get(inner.path, 0) + stop - start

    def _string(self, buffer: bytes, start: int) -> int:
        """A string the run did not take: long, escape-rich, or unfinished in this piece."""
        stop = _string_end(buffer, start + 1, escaped=False)
        finished = stop is not None
        length = (stop - 1 if stop is not None else len(buffer)) - start - 1
        if length <= OUTLINE_STRING_LIMIT:
            if not finished:
                self._pending = buffer[start:]
                return len(buffer)
            self._take(buffer, start, stop)
            return stop
        inner = self._open[-1] if self._open else None
        path = self._child_path() if inner is None or inner.kept else inner.path
        if inner is None or inner.kept:
            self._out += b'""'
        self.elided[path] = self.elided.get(path, 0) + length
        if finished:
            return stop
        self._long_string = path
        self._escaped = _ends_in_escape(buffer, start + 1)
        return len(buffer)

    def _skip_long_string(self, buffer: bytes, start: int) -> int:
        path = self._long_string
        assert path is not None
        stop = _string_end(buffer, start, escaped=self._escaped)
        if stop is None:
            self.elided[path] += len(buffer) - start
            self._escaped = _ends_in_escape(buffer, start, escaped=self._escaped)
            return len(buffer)
        self.elided[path] += stop - 1 - start
        self._long_string = None
        self._escaped = False
        return stop

    def _push(self, buffer: bytes, start: int) -> int:
        kind = buffer[start]
        inner = self._open[-1] if self._open else None
        if inner is not None and not inner.kept:
            self._open.append(_Open(kind, inner.path, kept=False))
            self.elided[inner.path] += 1
            return start + 1
        following = start + 1
        while following < len(buffer) and buffer[following] in _JSON_SPACE:
            following += 1
        if kind == _OPEN_ARRAY and following == len(buffer):
            self._pending = buffer[start:]  # whether it holds rows shows in the next piece
            return len(buffer)
        rows = kind == _OPEN_ARRAY and buffer[following] == _OPEN_ARRAY
        path = self._child_path()
        self._open.append(_Open(kind, path, kept=not rows))
        self._out.append(kind)
        if rows:
            self.elided[path] = self.elided.get(path, 0)
        return start + 1

    def _pop(self, closer: int) -> None:
        if not self._open or self._open[-1].kind != _CLOSERS[closer]:
            raise _OutlineError("unbalanced brackets")
        self._open.pop()
        outer = self._open[-1] if self._open else None
        if outer is None or outer.kept:
            self._out.append(closer)
        else:
            self.elided[outer.path] += 1

    def _child_path(self) -> str:
        """Path of the value starting now, in the notation of `trimmed` (`data.rowset`, `$`)."""
        if not self._open:
            return "$"
        inner = self._open[-1]
        if inner.kind == _OPEN_ARRAY:
            return inner.path
        found = _KEY_BEFORE.search(self._out, max(0, len(self._out) - 600))
        key = found.group(1).decode("utf-8", "replace") if found else "?"
        return key if inner.path == "$" else f"{inner.path}.{key}"


class _OutlineError(ValueError):
    """The document is not JSON the outline can follow."""


def _string_end(buffer: bytes, start: int, *, escaped: bool) -> int | None:
    """Index just past the closing quote of a string whose content resumes at `start`."""
    search = start + 1 if escaped else start
    while True:
        quote = buffer.find(b'"', search)
        if quote < 0:
            return None
        before = quote - 1
        while before >= search and buffer[before] == _BACKSLASH:
            before -= 1
        if (quote - 1 - before) % 2 == 0:
            return quote + 1
        search = quote + 1


def _ends_in_escape(buffer: bytes, start: int, *, escaped: bool = False) -> bool:
    """Whether the piece ends between a backslash and the character it escapes."""
    floor = start + 1 if escaped else start
    if escaped and len(buffer) == start:
        return True
    last = len(buffer) - 1
    while last >= floor and buffer[last] == _BACKSLASH:
        last -= 1
    return (len(buffer) - 1 - last) % 2 == 1
