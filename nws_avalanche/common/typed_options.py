"""Typed values from YAML and ``--set`` text: a dataclass's declared field types, enforced strictly.

A number must be finite, a bool is true/false (or yes/no/on/off/1/0 as a string), an integer has
no fraction; a wrong value or an unknown key is a ``ConfigError`` naming the key. Used by the run
config, the tool settings, the benchmarks' and the methods' option dataclasses.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import fields
from typing import Any

from .errors import ConfigError

INT_LIMIT = 1 << 63  # every integer setting must fit int64 (ranges are checked by each dataclass)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _split_type(typ: Any) -> tuple[str, bool]:
    """``"int | None"`` -> ``("int", True)``; the annotations are strings (postponed evaluation)."""
    parts = [p.strip() for p in str(typ).replace("typing.", "").split("|")]
    base = [p for p in parts if p != "None"]
    return (base[0] if base else "Any"), len(base) < len(parts)


def coerce(name: str, value: Any, default: Any, typ: Any) -> Any:
    """``value`` as the declared type, strictly: no bool for a number, no fraction for an int,
    no inf/nan, only true/false for a bool; otherwise a ConfigError naming the key."""
    t, optional = _split_type(typ)

    def bad(expected: str):
        try:
            shown = repr(value)
        except ValueError:  # an int too long to print
            shown = "a huge integer"
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ConfigError(f"config key {name!r}: expects {expected}, got {shown}")

    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r}: expects a value ({t}), got nothing; remove the key to use "
                          f"its default")
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise bad("true or false")
    if t == "int":
        out = None
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and len(value.strip()) <= 40:  # int() of a huge string costs quadratic time
            try:
                out = int(value.strip())
            except ValueError:
                pass
        if out is None:
            raise bad("an integer")
        if not -INT_LIMIT <= out < INT_LIMIT:
            raise ConfigError(f"config key {name!r}: expects an integer that fits 64 bits, got one of "
                              f"{out.bit_length()} bits")
        return out
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("a finite number")
        if isinstance(value, str) and len(value.strip()) > 64:
            raise bad("a finite number")
        try:
            out = float(value)
        except (ValueError, OverflowError):
            raise bad("a finite number") from None
        if not math.isfinite(out):
            raise bad("a finite number")
        return out
    if t == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if t.startswith("list"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip() != ""]
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        inner = t[len("list["):-1] if t.startswith("list[") else "Any"
        return [coerce(f"{name}[{i}]", v, None, inner) for i, v in enumerate(value)]
    if t.startswith("dict"):
        if not isinstance(value, dict):
            raise bad("a mapping of key: value")
        return value
    return value


def build_options(prefix: str, given: dict, options_cls) -> Any:
    """``options_cls`` (a dataclass) from ``given``: unknown keys and wrong types refused, naming
    ``prefix.key``; the dataclass's ``__post_init__`` checks the ranges and allowed values."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{prefix} must be a mapping of option: value, got {given!r}")
    names = {f.name: f for f in fields(options_cls)}
    unknown = set(given) - set(names)
    if unknown:
        raise ConfigError(f"unknown {prefix} option(s) {', '.join(f'{prefix}.{k}' for k in sorted(unknown))}; "
                          f"known: {', '.join(sorted(names)) or '(none)'}")
    kw = {}
    for k, v in given.items():
        f = names[k]
        default = f.default if f.default is not dataclasses.MISSING else None
        kw[k] = coerce(f"{prefix}.{k}", v, default, f.type)
    try:
        return options_cls(**kw)
    except (TypeError, ValueError) as e:  # a check that is not a ConfigError yet
        raise ConfigError(f"{prefix}: {e}") from None
