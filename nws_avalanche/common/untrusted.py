"""The readers of untrusted bytes on disk: files, UTF-8 text, JSON and YAML, each with a bound.

Every failure is the caller's ``NWSError`` class naming the file, what is wrong and the fix, never a
traceback: not a regular file, larger than the reader's limit, not UTF-8, not valid JSON/YAML,
nested deeper than ``MAX_DEPTH``, or (YAML) an alias or an over-long number. YAML aliases are
refused outright: a few hundred bytes of nested aliases expand to gigabytes ("billion laughs"),
and no config of this project needs them. Integers longer than ``MAX_INT_DIGITS`` digits are
refused while parsing (Python would spend quadratic time converting a 5000-digit one).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError, NWSError
from .schema import check

MAX_TEXT_BYTES = 64 << 20  # JSON/YAML run files and configs: far above any the harness writes
MAX_DEPTH = 64             # nesting of JSON/YAML containers
MAX_INT_DIGITS = 40        # a YAML integer longer than this is refused (int64 has 19 digits)
MAX_YAML_NODES = 1 << 20   # scalars + containers in one YAML document


def read_file_bytes(path, what: str, fix: str, error: type[NWSError] = NWSError, limit: int | None = None) -> bytes:
    """The bytes of regular file ``path`` (links followed for reading), at most ``limit`` of them."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found; {fix}") from None
    except OSError as e:
        raise error(f"{path}: {what} cannot be read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {what} is not a regular file; {fix}")
    if limit is not None and st.st_size > limit:
        raise error(f"{path}: {what} is {st.st_size} bytes, more than this reader's limit of {limit}; {fix}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1 if limit is not None else -1)
    except OSError as e:
        raise error(f"{path}: {what} cannot be read ({e.strerror}); {fix}") from None
    if limit is not None and len(data) > limit:  # grew while read
        raise error(f"{path}: {what} is more than this reader's limit of {limit} bytes; {fix}")
    return data


def decode_utf8(data: bytes, source: str, what: str, fix: str, error: type[NWSError] = NWSError) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{source}: {what} is not UTF-8 text (byte {e.start}); {fix}") from None


def read_text(path, what: str, fix: str, error: type[NWSError] = NWSError, limit: int = MAX_TEXT_BYTES) -> str:
    return decode_utf8(read_file_bytes(path, what, fix, error, limit), str(path), what, fix, error)


def _depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts (iterative: a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def parse_json(text: str, source: str, what: str, fix: str, error: type[NWSError] = NWSError) -> Any:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{source}: {what} is not valid JSON ({str(e)[:80]}); {fix}") from None
    if _depth(obj) > MAX_DEPTH:
        raise error(f"{source}: {what} is nested more than {MAX_DEPTH} levels deep; {fix}")
    return obj


def read_json(path, what: str, fix: str, schema: Callable | None = None, error: type[NWSError] = NWSError,
              limit: int = MAX_TEXT_BYTES) -> Any:
    """JSON file ``path`` parsed and checked against ``schema`` (``common.schema``)."""
    obj = parse_json(read_text(path, what, fix, error, limit), str(path), what, fix, error)
    return obj if schema is None else check(obj, schema, f"{path} ({what})", fix, error)


class YAMLLimit(yaml.YAMLError):
    """A YAML text over one of ``_BoundedLoader``'s limits (not a mere syntax error)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases, with bounded depth, node count and integer length."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLLimit(f"alias *{event.anchor} at line {event.start_mark.line + 1}: aliases are not "
                                 f"accepted (write the value out)")
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise YAMLLimit(f"more than {MAX_YAML_NODES} values")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimit(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YAMLLimit(f"an integer of {digits} digits at line {node.start_mark.line + 1} "
                                 f"(at most {MAX_INT_DIGITS})")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def parse_yaml(text: str, source: str, fix: str, error: type[NWSError] = ConfigError,
               text_on_syntax_error: bool = False) -> Any:
    """One YAML document from ``text`` with ``_BoundedLoader``'s limits; ``text_on_syntax_error``: text
    that is not YAML is returned as the string it is (``--set key=value``), a limit still refuses it."""
    if len(text) > MAX_TEXT_BYTES:
        raise error(f"{source}: more than {MAX_TEXT_BYTES} characters of YAML; {fix}")
    try:  # the reader checks the characters in its constructor already
        loader = _BoundedLoader(text)
    except yaml.YAMLError as e:
        if text_on_syntax_error:
            return text
        raise error(f"{source}: not valid YAML ({' '.join(str(e).split())[:160]}); {fix}") from None
    try:
        return loader.get_single_data()
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        if text_on_syntax_error and isinstance(e, yaml.YAMLError) and not isinstance(e, YAMLLimit):
            return text
        msg = " ".join(str(e).split())
        raise error(f"{source}: not valid YAML ({msg[:160]}); {fix}") from None
    finally:
        loader.dispose()


def read_yaml(path, what: str, fix: str, schema: Callable | None = None, error: type[NWSError] = ConfigError) -> Any:
    obj = parse_yaml(read_text(path, what, fix, error), str(path), fix, error)
    return obj if schema is None else check(obj, schema, f"{path} ({what})", fix, error)
