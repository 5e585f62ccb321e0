"""Lossless codecs for integer payloads (NWS pool indices, and every baseline's integers: AQD
weights, PackNet owner ids, KSM masks). Registered by name; each file's header records which.

``bitpack``: every value in exactly ``ceil(log2 K)`` bits, little-endian bit order.
``encode_ints`` / ``decode_ints``: any integers in ``[0, alphabet)`` with a named codec, so every
method stores its integers with the same coder and memory tables compare methods, not codecs.
"""
from __future__ import annotations

import math

import numpy as np

from . import ans
from ..common.registry import Registry

CODECS: Registry = Registry("codec")
DEFAULT_CODEC = "rans16"  # lossless, at the order-0 entropy, fast to decode


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


def encode_ints(values, alphabet: int, codec: str = DEFAULT_CODEC) -> bytes:
    """Integers in ``[0, alphabet)`` (any shape, read flat) -> bytes; lossless."""
    return get_codec(codec).encode(np.asarray(values).reshape(-1), alphabet)


def decode_ints(data: bytes, n: int, alphabet: int, codec: str = DEFAULT_CODEC) -> np.ndarray:
    """Inverse of ``encode_ints``: ``n`` int64 values; ValueError when ``data`` does not decode."""
    return get_codec(codec).decode(data, n, alphabet)


# -- entropy coding ------------------------------------------------------------------------
def _varint(values) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, pos: int, count: int) -> tuple[list[int], int]:
    out = []
    for _ in range(count):
        v = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated frequency table")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(v)
    return out, pos


def order0_entropy_bits(indices: np.ndarray, K: int) -> float:
    """n * H0: the order-0 empirical entropy of ``indices`` in bits (the bound ``rans16`` targets)."""
    idx = np.asarray(indices).reshape(-1)
    if idx.size == 0:
        return 0.0
    counts = np.bincount(idx, minlength=K).astype(np.float64)
    p = counts[counts > 0] / idx.size
    return float(-(counts[counts > 0] * np.log2(p)).sum())


_EMPTY, _CONST, _RAW, _ANS16 = 0, 1, 2, 4  # (3 was a retired coder's stream: refused)


class _CountsTableCodec:
    """Order-0 entropy coding of a layer's indices; subclasses supply the entropy coder.

    Byte format (``n`` and ``K`` come from the artifact header, not the stream):
    - ``n == 0``: no bytes;
    - ``0x01 | varint(symbol)``: every index is the same symbol;
    - ``0x02 | bitpack``: fixed-width codes (chosen when smaller, e.g. tiny layers);
    - ``MODE | presence bitmap ceil(K/8) bytes (little-endian bit order) | varint counts of the
      present symbols, ascending symbol order, the last one omitted (it is ``n`` minus the
      rest) | the coder's stream``, symbols numbered by rank among the present ones.
    The model is the exact empirical distribution over the present symbols, so the stream costs
    ``n * H0`` plus the coder's rounding and a few words.
    """

    MODE = -1

    @classmethod
    def _stream(cls, symbols: np.ndarray, counts: np.ndarray) -> bytes:
        raise NotImplementedError

    @classmethod
    def _unstream(cls, data: bytes, counts: np.ndarray, present: np.ndarray, n: int) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def encode(cls, indices: np.ndarray, K: int) -> bytes:
        idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return b""
        if int(idx.min()) < 0 or int(idx.max()) >= K:
            raise ValueError(f"indices must lie in [0, {K}), got [{int(idx.min())}, {int(idx.max())}]")
        counts = np.bincount(idx, minlength=K)
        present = np.flatnonzero(counts)
        if present.size == 1:
            return bytes([_CONST]) + _varint([present[0]])
        remap = np.full(K, -1, dtype=np.int64)
        remap[present] = np.arange(present.size)
        bitmap = np.packbits(counts > 0, bitorder="little").tobytes()
        coded = (bytes([cls.MODE]) + bitmap + _varint(counts[present[:-1]])
                 + cls._stream(remap[idx].astype(np.int32), counts[present]))
        raw = bytes([_RAW]) + BitPack.encode(idx, K)
        return coded if len(coded) < len(raw) else raw

    @staticmethod
    def split(data: bytes, K: int) -> dict:
        """Bytes of the block spent on the mode + frequency table vs on the coded stream."""
        if not data:
            return {"mode": "empty", "table": 0, "stream": 0}
        mode = data[0]
        if mode == _CONST:
            return {"mode": "const", "table": len(data), "stream": 0}
        if mode == _RAW:
            return {"mode": "raw", "table": 1, "stream": len(data) - 1}
        nb = (K + 7) // 8
        present = int(np.unpackbits(np.frombuffer(data[1: 1 + nb], np.uint8), bitorder="little")[:K].sum())
        _, pos = _read_varints(data, 1 + nb, present - 1)
        return {"mode": "ans", "table": pos, "stream": len(data) - pos}

    @classmethod
    def decode(cls, data: bytes, n: int, K: int) -> np.ndarray:
        if n == 0:
            if data:
                raise ValueError(f"expected no bytes for 0 indices, got {len(data)}")
            return np.zeros(0, dtype=np.int64)
        if not data:
            raise ValueError(f"no bytes for {n} indices")
        mode, body = data[0], data[1:]
        if mode == _CONST:
            (sym,), end = _read_varints(body, 0, 1)
            if end != len(body) or sym >= K:
                raise ValueError("bad constant-symbol block")
            return np.full(n, sym, dtype=np.int64)
        if mode == _RAW:
            return BitPack.decode(body, n, K)
        if mode != cls.MODE:
            raise ValueError(f"block mode {mode} is not this codec's ({cls.MODE})")
        nb = (K + 7) // 8
        if len(body) < nb:
            raise ValueError("truncated presence bitmap")
        present = np.flatnonzero(np.unpackbits(np.frombuffer(body[:nb], np.uint8), bitorder="little")[:K])
        if present.size < 2:
            raise ValueError("presence bitmap names fewer than 2 symbols")
        head, pos = _read_varints(body, nb, present.size - 1)
        last = n - sum(head)
        if last <= 0 or min(head) <= 0:
            raise ValueError(f"frequency table does not sum to n={n}")
        counts = np.array(head + [last], dtype=np.int64)
        return cls._unstream(body[pos:], counts, present, n)


@CODECS.register("rans16")
class RANS16(_CountsTableCodec):
    """Stream: this package's compiled rANS (``nws_avalanche.storage.ans``: 16-bit words, frequencies
    quantised to 2^14 from the stored counts; K >= 2^14 is stored fixed-width); decodes a
    ResNet-18 task in about 10 ms."""

    MODE = _ANS16

    @classmethod
    def _stream(cls, symbols: np.ndarray, counts: np.ndarray) -> bytes:
        return ans.encode(symbols, counts)

    @classmethod
    def encode(cls, indices: np.ndarray, K: int) -> bytes:
        if K >= (1 << ans.PROB_BITS):  # more symbols than the probabilities' resolution
            return bytes([_RAW]) + BitPack.encode(np.asarray(indices).reshape(-1), K) if np.size(indices) else b""
        return super().encode(indices, K)

    @classmethod
    def _unstream(cls, words: bytes, counts: np.ndarray, present: np.ndarray, n: int) -> np.ndarray:
        return ans.decode(words, counts, present, n)
