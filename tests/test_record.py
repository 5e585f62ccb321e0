"""The shared storage record: exact round trips, the on-disk layout, and errors naming file and field."""
import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from nws_avalanche.common.errors import ArtifactError
from nws_avalanche.storage.codecs import encode_ints
from nws_avalanche.storage.container import MAGIC
from nws_avalanche.storage.record import F32, Ints, State, read_record, write_record


def _fields(gen):
    ints = torch.randint(0, 37, (5, 7), generator=gen).numpy()
    return ints, {"state": State({"bn.weight": torch.randn(4, generator=gen), "n": torch.tensor(3)}),
                  "q/conv": Ints(ints, 37), "w/conv": F32(torch.randn(3, 2, generator=gen))}


@pytest.mark.parametrize("codec", ["rans16", "bitpack"])
def test_round_trip_is_exact(tmp_path, codec):
    ints, fields = _fields(torch.Generator().manual_seed(0))
    write_record(tmp_path / "r", "demo", fields, task=2, codec=codec, header={"arch": "x"})
    rec = read_record(tmp_path / "r", "demo")
    assert rec.header["task"] == 2 and rec.header["arch"] == "x" and rec.header["codec"] == codec
    assert rec.state.keys() == fields["state"].tensors.keys()
    assert all(torch.equal(rec.state[k], v) for k, v in fields["state"].tensors.items())
    assert np.array_equal(rec.ints("q/conv", ints.size, 37), ints.reshape(-1))
    assert np.array_equal(rec.f32("w/conv", 6), fields["w/conv"].values.numpy().reshape(-1))


def test_bytes_are_the_declared_layout(tmp_path):
    """Fields land in the order given, as the container spec says; no hidden extra bytes."""
    ints, fields = _fields(torch.Generator().manual_seed(1))
    path = write_record(tmp_path / "r", "demo", fields, task=0, codec="rans16")
    st = fields["state"].tensors
    blobs = {"state/bn.weight": st["bn.weight"].numpy().tobytes(), "state/n": st["n"].numpy().tobytes(),
             "q/conv": encode_ints(ints, 37, "rans16"),
             "w/conv": fields["w/conv"].values.numpy().astype("<f4").tobytes()}
    header = {"kind": "demo", "format": 1, "task": 0, "codec": "rans16",
              "state": {"bn.weight": {"dtype": "float32", "shape": [4]}, "n": {"dtype": "int64", "shape": []}},
              "blobs": [[k, len(v)] for k, v in blobs.items()]}
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs.values())
    assert path.read_bytes() == body + hashlib.sha256(body).digest()


def test_errors_name_the_file_and_the_field(tmp_path):
    _, fields = _fields(torch.Generator().manual_seed(2))
    path = write_record(tmp_path / "r", "demo", fields, codec="rans16")
    with pytest.raises(ArtifactError, match=r"r: expected a 'other' file, found 'demo'"):
        read_record(path, "other")
    rec = read_record(path, "demo")
    with pytest.raises(ArtifactError, match=r"r: field 'q/missing' is missing"):
        rec.ints("q/missing", 3, 37)
    with pytest.raises(ArtifactError, match=r"r: field 'w/conv' holds 24 bytes, expected 28"):
        rec.f32("w/conv", 7)
    with pytest.raises(ArtifactError, match=r"r: field 'w/conv' does not decode"):
        rec.ints("w/conv", 35, 37)  # floats are not a rANS stream of 35 symbols
    with pytest.raises(ValueError, match="needs a codec"):
        write_record(tmp_path / "s", "demo", fields)
    with pytest.raises(ValueError, match="one State field at most"):
        write_record(tmp_path / "s", "demo", {"a": State({}), "b": State({})})
    assert not (tmp_path / "s").exists()
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_record(path, "demo")


def test_unknown_format_is_refused(tmp_path):
    from nws_avalanche.storage.container import write_container
    write_container(tmp_path / "r", {"kind": "demo", "format": 9}, {})
    with pytest.raises(ArtifactError, match=r"format 9 unsupported \(expected 1\)"):
        read_record(tmp_path / "r", "demo")
