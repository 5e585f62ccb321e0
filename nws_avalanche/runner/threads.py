"""A run's CPU thread counts, applied at its start, and the environment its numbers depend on.

Floating-point sums are not associative: how torch (oneDNN/MKL convolutions, matmuls), BLAS and
our fused loops split a reduction over threads changes the last bits of a result, and over a
training run those bits grow into different accuracies. So the thread count is a setting of the
run (``threads``, default 2), applied whatever ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` the
shell holds, and recorded in ``results.json`` with what else changes the bytes: library
versions and the CPU's model and instruction set (oneDNN picks its kernels by instruction set).

- torch intra-op: ``torch.set_num_threads`` (also MKL's count inside torch).
- torch inter-op: ``torch.set_num_interop_threads(1)`` when the process has not started its
  inter-op pool yet (it can be set once per process; it schedules independent ops, never splits
  one, so it does not change values; the count in force is recorded).
- BLAS/OpenMP libraries other than torch's (numpy's OpenBLAS, used by k-means helpers):
  ``threadpoolctl.threadpool_limits``.
- numba: the fused kernels (``method.cpu_loops``) are serial ``njit`` builds; their split of a
  big pass into two halves follows torch's count, so ``threads`` governs it too. numba's own
  thread pool is never used (no ``parallel=True``), and is recorded, not set.

``run_threads`` restores the previous counts on exit, so a run inside a longer process (tests, a
notebook) leaves the process as it found it.
"""
from __future__ import annotations

import os
import platform
import sys
from contextlib import contextmanager
from importlib import metadata

import torch

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
            "NWS_KERNELS")
PACKAGES = ("torch", "torchvision", "avalanche-lib", "numpy", "numba", "scikit-learn", "threadpoolctl")


@contextmanager
def run_threads(threads: int):
    """Inside the block torch uses ``threads`` intra-op threads and other BLAS pools as many."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started in this process: it stays as it is (recorded)
        pass
    torch.set_num_threads(int(threads))
    try:
        with threadpool_limits(limits=int(threads)):
            yield
    finally:
        torch.set_num_threads(old)


def cpu_info() -> dict:
    """The CPU's model and instruction-set flags (Linux ``/proc/cpuinfo``; else ``platform``)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = sorted(value.split())
                if key == "" and flags:  # end of the first processor's block
                    break
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": [f for f in flags if f.startswith(("avx", "sse", "fma", "amx", "f16c", "asimd", "sve"))]}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict:
    """What a run's bytes depend on besides its config; written into ``results.json``."""
    try:
        import numba

        numba_threads = int(numba.config.NUMBA_NUM_THREADS)
    except Exception:  # noqa: BLE001 - numba missing or unconfigurable: nothing to record
        numba_threads = None
    return {
        "threads": {"setting": int(threads), "torch_intra_op": torch.get_num_threads(),
                    "torch_inter_op": torch.get_num_interop_threads(), "numba_pool": numba_threads},
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "versions": {"python": sys.version.split()[0], **{p: _version(p) for p in PACKAGES}},
        "cpu": cpu_info(),
    }
