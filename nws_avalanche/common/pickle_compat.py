"""Makes Avalanche's ``save_checkpoint`` work with the installed torch 2.14, dill 0.4 and
typing_extensions 4.16 (it fails with or without NWS; two causes, two patches).

Avalanche pickles the whole strategy with dill.

1. dill saves a class by reference only if ``import_module(cls.__module__)`` finds it; its finder
   looks ``torch.optim.sgd`` up as the attribute ``sgd`` of ``torch.optim``, which torch 2.14
   deletes (``del sgd`` in ``torch/optim/__init__.py``). So dill saves ``SGD`` *by value*, its
   methods' globals with it, and stops at a ``PyCapsule``. ``install()`` gives dill's finder a
   fallback to the imported module itself (``sys.modules``/``importlib``), as it intends.
2. typing_extensions 4.16 creates a module-level
marker ``_marker = sentinel("sentinel")`` that pickles "as a singleton" by its name, ``sentinel``,
which in that module is the *class*: pickling any object that reaches it (torch's optimisers do,
through their ``deprecated``-wrapped methods dill saves by value) fails with ``PicklingError:
Can't pickle sentinel: it's not the same object as typing_extensions.sentinel``, with or without
NWS. ``install()`` registers a reducer that pickles every typing_extensions sentinel by the
module attribute that holds it (so it unpickles to the same object). Both are installed on import of
``nws_avalanche.method.plugin``; plain Avalanche code can ``import nws_avalanche.common.pickle_compat``.
"""
from __future__ import annotations

import copyreg
import importlib


def load_module_attribute(module: str, name: str):
    """The unpickler's side: the object ``module.name`` (the same singleton)."""
    return getattr(importlib.import_module(module), name)


def _reduce_sentinel(obj):
    module = importlib.import_module(obj.__module__)
    for name, value in vars(module).items():  # the variable that holds this very object
        if value is obj:
            return load_module_attribute, (obj.__module__, name)
    return obj.__reduce_ex__(2)  # not a module attribute: as typing_extensions pickles it


def _patch_dill() -> bool:
    try:
        import dill._dill as dd
    except ImportError:
        return False
    find = getattr(dd, "_import_module", None)
    if find is None or getattr(find, "_nws_patched", False):
        return find is not None

    def import_module(import_name, safe=False):
        try:
            return find(import_name, safe=False)
        except (ImportError, AttributeError, KeyError):
            try:  # a submodule its package no longer names as an attribute (torch.optim.sgd)
                return importlib.import_module(import_name)
            except ImportError:
                if safe:
                    return None
                raise

    import_module._nws_patched = True
    dd._import_module = import_module
    return True


def install() -> bool:
    """Both patches (idempotent); False when one of them does not apply to the installed versions."""
    return _patch_dill() & _patch_sentinel()


def _patch_sentinel() -> bool:
    try:
        import typing_extensions
    except ImportError:
        return False
    cls = getattr(typing_extensions, "sentinel", None)
    if not isinstance(cls, type):
        return False
    copyreg.pickle(cls, _reduce_sentinel)
    return True


install()
