"""Small valid files of every untrusted kind, and a container re-packer, shared by test_untrusted and
test_fuzz_inputs (no training: tiny models with k-means pools)."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from nws_avalanche.storage.container import MAGIC


def split_container(data: bytes) -> tuple[dict, bytes]:
    """(header with its blob list, the blob bytes) of a container."""
    (hlen,) = struct.unpack("<I", data[len(MAGIC): len(MAGIC) + 4])
    start = len(MAGIC) + 4
    return json.loads(data[start: start + hlen]), data[start + hlen: -32]


def repack(header, blob_bytes: bytes) -> bytes:
    """A container of ``header`` (any JSON, its blob list as given) and raw blob bytes, with a valid checksum."""
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + blob_bytes
    return body + hashlib.sha256(body).digest()


def tiny_model_and_pools(K: int = 8, classes: int = 3):
    from nws_avalanche.method.nwsify import nwsify
    from nws_avalanche.nets.models import build_arch
    from nws_avalanche.pools.pool_set import build_pools_kmeans

    torch.manual_seed(0)
    plain = build_arch("resnet-tiny", classes, in_channels=1)
    pools = build_pools_kmeans(plain, "resnet-tiny", K=K, iters=2)
    model = nwsify(build_arch("resnet-tiny", classes, in_channels=1), pools.tables)
    for m in model.modules():
        if hasattr(m, "assign"):
            m.assign()
    return plain, model.eval(), pools


def skeleton_for(pools):
    from nws_avalanche.method.nwsify import nwsify
    from nws_avalanche.nets.models import build_arch

    return lambda c: nwsify(build_arch("resnet-tiny", c, in_channels=1), pools.tables, search_now=False)


def write_valid_files(folder: Path) -> dict[str, Path]:
    """One valid file of each container kind: a task artifact, a pool file, a cached pretrained network,
    and a torchvision-format state_dict."""
    from nws_avalanche.method.task_artifact import save_nws_task
    from nws_avalanche.pools.pretrained import save_cached_pretrained

    folder.mkdir(parents=True, exist_ok=True)
    plain, model, pools = tiny_model_and_pools()
    task = save_nws_task(folder / "task.nwst", model, task=0, arch="resnet-tiny", num_classes=3,
                         pool_fingerprint=pools.fingerprint, pool_digest=pools.digest)
    pool = pools.save(folder / "pools.nwsp")
    pre = save_cached_pretrained(folder / "pre.nwsw", plain.state_dict(), 3)
    sd = folder / "state.pt"
    torch.save(plain.state_dict(), sd)
    return {"task": task, "pools": pool, "pretrained": pre, "state_dict": sd, "_pools": pools}
