"""Reading third-party pickles (CIFAR-100's python files) without letting them run code.

A pickle names the callables it needs to rebuild its objects, and ``pickle.load`` imports and
calls whatever it names: a crafted file runs code on load. ``load_plain`` accepts only what plain
data needs (the builtin containers, bytes, strings and numbers, and numpy's array and dtype
reconstruction) and refuses any other name with ``ForbiddenPickle`` naming it, before calling it.
"""
from __future__ import annotations

import pickle
from typing import IO, Any

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # how numpy pickles arrays, dtypes and scalars (both module spellings: numpy 1.x and 2.x)
    *((m, "_reconstruct") for m in _NUMPY_CORE),
    *((m, "scalar") for m in _NUMPY_CORE),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # how protocols 0-2 spell bytes, sets and other builtin values
    ("_codecs", "encode"),
    *((m, n) for m in ("builtins", "__builtin__")
      for n in ("set", "frozenset", "bytearray", "bytes", "complex", "list", "dict", "tuple", "int", "float",
                "str", "bool")),
})


class ForbiddenPickle(pickle.UnpicklingError):
    """The pickle asks for a callable outside ``ALLOWED``."""

    def __init__(self, module: str, name: str):
        super().__init__(f"it asks for {module}.{name}, which plain data never needs (refused, not called)")
        self.ref = f"{module}.{name}"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise ForbiddenPickle(module, name)
        return super().find_class(module, name)


def load_plain(fh: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load`` restricted to plain data (see ``ALLOWED``)."""
    return _PlainUnpickler(fh, encoding=encoding).load()
