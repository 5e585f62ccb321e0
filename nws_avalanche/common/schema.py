"""Declared schemas for what the harness reads from disk (file headers, run files, configs).

A reader states what each field must be (``Int(lo, hi)``, ``Str()``, ``List(item, max_len)``,
``Obj({...})``...) and ``check(value, schema, source, fix)`` either returns the value or raises the
reader's error naming the file, the field (``layers[3].n``) and the fix, before any value is used
to size an allocation. Integers are bounded on both sides (a header may not ask for 1e12 classes);
``bool`` is never accepted as an integer; floats must be finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ArtifactError, NWSError


# bounds every reader shares (a header never sizes an allocation beyond them)
MAX_POOL_SIZE = 1 << 16  # K, vectors per pool (the paper: 512)
MAX_CLASSES = 1 << 16    # classes of one head (ImageNet-21k has 21843)
MAX_INTS = 1 << 25       # integers decoded per record field (256 MiB as int64)
MAX_TASKS = 10_000


class SchemaError(Exception):
    """Internal: ``check`` turns it into the caller's NWSError with the file and the fix."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None

    def __call__(self, v, where):
        if isinstance(v, bool) or not isinstance(v, int):
            raise SchemaError(where, f"must be an integer, found {type(v).__name__} {_show(v)}")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            shown = _show(v) if abs(v) < 10 ** 30 else f"an integer of {len(str(abs(v)))} digits"
            raise SchemaError(where, f"is {shown}, outside [{self.lo}, {self.hi}]")
        return v


@dataclass(frozen=True)
class Float:
    lo: float | None = None
    hi: float | None = None

    def __call__(self, v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SchemaError(where, f"must be a number, found {type(v).__name__} {_show(v)}")
        try:
            f = float(v)
        except OverflowError:
            raise SchemaError(where, f"is a number too large for a float ({len(str(abs(v)))} digits)") from None
        if not math.isfinite(f) or (self.lo is not None and f < self.lo) or (self.hi is not None and f > self.hi):
            raise SchemaError(where, f"is {_show(v)}, outside [{self.lo}, {self.hi}]")
        return v


@dataclass(frozen=True)
class Str:
    choices: tuple[str, ...] | None = None
    max_len: int = 4096

    def __call__(self, v, where):
        if not isinstance(v, str):
            raise SchemaError(where, f"must be a string, found {type(v).__name__} {_show(v)}")
        if len(v) > self.max_len:
            raise SchemaError(where, f"is a string of {len(v)} characters (at most {self.max_len})")
        if self.choices is not None and v not in self.choices:
            raise SchemaError(where, f"is {_show(v)}, expected one of {', '.join(self.choices)}")
        return v


@dataclass(frozen=True)
class Name:
    """A plain file name (no folder part): what a file lists as its siblings."""

    def __call__(self, v, where):
        Str(max_len=255)(v, where)
        if v in ("", ".", "..") or "/" in v or "\\" in v or "\0" in v:
            raise SchemaError(where, f"is {_show(v)}, not a plain file name")
        return v


@dataclass(frozen=True)
class Bool:
    def __call__(self, v, where):
        if not isinstance(v, bool):
            raise SchemaError(where, f"must be true or false, found {_show(v)}")
        return v


@dataclass(frozen=True)
class AnyOf:
    options: tuple

    def __call__(self, v, where):
        first = None
        for opt in self.options:
            try:
                return opt(v, where)
            except SchemaError as e:
                first = first or e
        raise first


@dataclass(frozen=True)
class Null:
    def __call__(self, v, where):
        if v is not None:
            raise SchemaError(where, f"must be null, found {_show(v)}")
        return v


@dataclass(frozen=True)
class List:
    item: Callable
    max_len: int = 1 << 16
    min_len: int = 0

    def __call__(self, v, where):
        if not isinstance(v, list):
            raise SchemaError(where, f"must be a list, found {type(v).__name__} {_show(v)}")
        if not self.min_len <= len(v) <= self.max_len:
            raise SchemaError(where, f"has {len(v)} entries, expected {self.min_len} to {self.max_len}")
        return [self.item(x, f"{where}[{i}]") for i, x in enumerate(v)]


@dataclass(frozen=True)
class Map:
    """A dict with string keys (checked by ``key`` when given) and values of one schema."""
    value: Callable
    max_len: int = 1 << 16
    key: Callable | None = None

    def __call__(self, v, where):
        if not isinstance(v, dict):
            raise SchemaError(where, f"must be a mapping, found {type(v).__name__} {_show(v)}")
        if len(v) > self.max_len:
            raise SchemaError(where, f"has {len(v)} entries (at most {self.max_len})")
        for k in v:
            if not isinstance(k, str):
                raise SchemaError(where, f"key {_show(k)} must be a string")
            if self.key is not None:
                self.key(k, f"{where} key")
        return {k: self.value(x, f"{where}.{k}") for k, x in v.items()}


@dataclass(frozen=True)
class Obj:
    """A dict with the named fields (``optional`` ones may be absent; other keys are kept as they are)."""
    fields: dict
    optional: frozenset = field(default_factory=frozenset)

    def __call__(self, v, where):
        if not isinstance(v, dict):
            raise SchemaError(where, f"must be a mapping, found {type(v).__name__} {_show(v)}")
        out = dict(v)
        for k, sch in self.fields.items():
            if k not in v:
                if k in self.optional:
                    continue
                raise SchemaError(f"{where}.{k}" if where else k, "is missing")
            out[k] = sch(v[k], f"{where}.{k}" if where else k)
        return out


def check(value: Any, schema: Callable, source: str, fix: str, error: type[NWSError] = ArtifactError,
          where: str = "") -> Any:
    """``value`` checked against ``schema``; otherwise ``error("<source>: field <f> <problem>; <fix>")``."""
    try:
        return schema(value, where)
    except SchemaError as e:
        name = f"field {e.where} " if e.where else ""
        raise error(f"{source}: {name}{e.problem}; {fix}") from None
