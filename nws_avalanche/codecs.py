"""Lossless codecs for pool indices. Registered by name; the artifact header records which.

``bitpack``: every index in exactly ``ceil(log2 K)`` bits, little-endian bit order.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .registry import Registry

CODECS: Registry = Registry("codec")


def bits_for(K: int) -> int:
    return max(1, math.ceil(math.log2(K)))


@CODECS.register("bitpack")
class BitPack:
    @staticmethod
    def encode(indices: np.ndarray, K: int) -> bytes:
        b = bits_for(K)
        idx = np.ascontiguousarray(indices, dtype=np.uint32)
        if idx.size and int(idx.max()) >= K:
            raise ValueError(f"index {int(idx.max())} out of range for K={K}")
        bits = ((idx[:, None] >> np.arange(b, dtype=np.uint32)) & 1).astype(np.uint8)
        return np.packbits(bits.reshape(-1), bitorder="little").tobytes()

    @staticmethod
    def decode(data: bytes, n: int, K: int) -> np.ndarray:
        b = bits_for(K)
        if len(data) != math.ceil(n * b / 8):
            raise ValueError(f"expected {math.ceil(n * b / 8)} bytes for {n} indices at {b} bits, got {len(data)}")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * b]
        weights = (np.uint32(1) << np.arange(b, dtype=np.uint32))
        return (bits.reshape(n, b).astype(np.uint32) * weights).sum(axis=1).astype(np.int64)


def get_codec(name: str):
    return CODECS.get(name)
