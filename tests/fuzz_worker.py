"""Property-based fuzzing of every untrusted file kind, run in a child process by ``test_fuzz_inputs``.

``python -m tests.fuzz_worker EXAMPLES SEED [KIND ...]``: for each kind, a valid file is written, then
``EXAMPLES`` mutants of it (bytes flipped, inserted, deleted, truncated; container headers with a field
replaced by any JSON value and the checksum recomputed, so that the mutant reaches the parser) are read
by the harness's own reader. The only accepted outcomes are a result or the project's ``NWSError`` with
a one-line message. The process runs under a memory cap (``RLIMIT_AS``: what it has mapped after setup
plus ``CAP_BYTES``) and every example under an alarm of ``EXAMPLE_SECONDS``: a bomb shows up as a
MemoryError / allocation failure / TimeoutError, which fails the run. Prints one JSON line per kind.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

CAP_BYTES = 2 << 30      # memory any one example may add to what setup mapped
EXAMPLE_SECONDS = 30     # per example (generous: the test machine's cores are shared)

JSON_SPECIAL = [10 ** 10, 10 ** 12, -3, 0, 1, 2, 2 ** 31, 2 ** 63, 10 ** 40, -(10 ** 30), 1e308, "load", "bfloat16",
                "float32", "int64", "bool", "uint8", "complex64", "rans16", "bitpack", "", "x" * 300]


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cap_memory() -> int:
    limit = _vm_bytes() + CAP_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


class ExampleTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise ExampleTimeout(f"one example took more than {EXAMPLE_SECONDS} s")


# -- mutations --------------------------------------------------------------------------------------------------
def strategies():
    from hypothesis import strategies as st

    leaf = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.sampled_from(JSON_SPECIAL)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
    json_value = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                          max_size=4), max_leaves=8)
    return st, json_value


def mutate_bytes(data: bytes, draw, st) -> bytes:
    b = bytearray(data)
    for op, pos, val in draw(st.lists(st.tuples(st.sampled_from(["flip", "set", "del", "ins", "trunc", "dup"]),
                                                st.integers(0, max(len(b), 1)), st.integers(0, 255)),
                                      min_size=1, max_size=6)):
        pos = min(pos, len(b))
        if op == "flip" and pos < len(b):
            b[pos] ^= 1 << (val % 8)
        elif op == "set" and pos < len(b):
            b[pos] = val
        elif op == "del" and pos < len(b):
            del b[pos: pos + 1 + val % 16]
        elif op == "ins":
            b[pos:pos] = bytes([val]) * (1 + val % 8)
        elif op == "trunc":
            del b[pos:]
        elif op == "dup":
            b[pos:pos] = b[pos: pos + 64]
    return bytes(b)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate_json(obj, draw, st, json_value):
    """``obj`` with one value (anywhere in it) replaced by any JSON value, or one key deleted."""
    paths = list(_paths(obj))
    path = draw(st.sampled_from(paths))
    new = draw(json_value)
    if not path:
        return new
    obj = json.loads(json.dumps(obj))
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    if isinstance(cur, dict) and draw(st.booleans()) and draw(st.booleans()):
        del cur[path[-1]]
    else:
        cur[path[-1]] = new
    return obj


def mutate_container(data: bytes, draw, st, json_value) -> bytes:
    from tests.untrusted_helpers import repack, split_container

    how = draw(st.sampled_from(["header", "header", "bytes+checksum", "bytes"]))
    if how == "header":
        header, blobs = split_container(data)
        return repack(mutate_json(header, draw, st, json_value), blobs)
    out = mutate_bytes(data[:-32], draw, st)
    return out + hashlib.sha256(out).digest() if how == "bytes+checksum" else out + data[-32:]


def mutate_text_json(data: bytes, draw, st, json_value) -> bytes:
    if draw(st.booleans()):
        return json.dumps(mutate_json(json.loads(data), draw, st, json_value), allow_nan=True).encode()
    return mutate_bytes(data, draw, st)


# -- the kinds: a valid file, how to mutate it, how the harness reads it -------------------------------------------
def setup_kinds(folder: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from nws_avalanche.nets.models import build_arch
    from tests.untrusted_helpers import skeleton_for, write_valid_files

    files = write_valid_files(folder / "valid")
    pools = files["_pools"]
    plain = build_arch("resnet-tiny", 1, in_channels=1)

    def read_task(p):
        from nws_avalanche.method.task_artifact import load_nws_task
        load_nws_task(p, skeleton_for(pools), pools.fingerprint, pools.digest)

    def read_pools(p):
        from nws_avalanche.method.nwsify import nwsify
        from nws_avalanche.pools.from_checkpoint import inspect_rows
        from nws_avalanche.pools.pool_set import PoolSet
        got = PoolSet.load(p)
        got.check_model(build_arch("resnet-tiny", 3, in_channels=1), source=str(p), group_sizes=got.group_sizes)
        inspect_rows(got)
        nwsify(build_arch("resnet-tiny", 3, in_channels=1), got.tables)

    def read_pretrained(p):
        from nws_avalanche.pools.pretrained import load_cached_pretrained
        state, classes = load_cached_pretrained(p, "resnet-tiny", 1)
        build_arch("resnet-tiny", classes, in_channels=1).load_state_dict(state)

    def read_state_dict(p):
        from nws_avalanche.pools.pretrained import load_torchvision_state
        state, classes = load_torchvision_state(str(p), plain)
        build_arch("resnet-tiny", classes, in_channels=1).load_state_dict(state)

    # run files from a real-shaped record
    T = 2
    acc = [[90.0, None], [88.0, 91.0]]
    results = {"format": 1, "benchmark": "split-digits", "method": "nws", "seed": 0, "tasks": ["a", "b"],
               "accuracy_matrix": acc, "final_accuracy": acc[-1], "average_accuracy": 89.5,
               "memory_mib": {"per_task": [0.1, 0.1], "assist": 1.0, "total": 1.2,
                              "files": {"per_task": [["task0.nwst"], ["task1.nwst"]]}},
               "artifact_sha256": {"task0.nwst": "0" * 64, "pools.nwsp": "1" * 64}}
    progress = {"num_tasks": T, "next_task": 1, "acc": acc, "task_files": [["task0.nwst"]], "summaries": [{}],
                "train_seconds": [1.0], "digests": {"task0.nwst": "0" * 64}}
    status = {"state": "running", "next_task": 1, "num_tasks": 2, "started": 1.0, "updated": 2.0, "host": "h",
              "pid": 123, "job_id": None, "error": None}

    def read_results(p):
        from nws_avalanche.runner.run import _read_results
        from reports.load import load_results
        from reports.tables import accuracy_table, memory_table
        _read_results(p)
        rs = load_results([p])
        accuracy_table(rs), memory_table(rs)

    def read_progress(p):
        from nws_avalanche.runner.recovery import read_progress
        read_progress(p.parent, T)

    def read_status(p):
        from nws_avalanche.cli.status import collect
        from nws_avalanche.runner.status_file import read_status
        read_status(p.parent)
        (p.parent / "config.yaml").write_text("seed: 0\n")
        collect(p.parent)

    def read_config(p):
        from nws_avalanche.config.run_config import build_config
        build_config([str(p)], [])

    def read_cifar(p):
        from benchmarks.cifar100 import _read_pickle_split
        _read_pickle_split(p)

    def read_image(p):
        from benchmarks.imagefolder import open_rgb
        open_rgb(str(p))

    def read_authors(p):
        from nws_avalanche.pools.authors import import_authors
        import_authors(p, "resnet-tiny", 1)

    config = (b"benchmark: split-digits\nmethod: nws\nepochs: 3\nlr: 0.01\nmilestones: [1, 2]\npool_size: 16\n"
              b"benchmark_options:\n  tasks: 2\nwandb:\n  tags: [a, b]\n")
    rng = np.random.RandomState(0)
    cifar = pickle.dumps({"data": rng.randint(0, 256, (4, 3072)).astype(np.uint8), "fine_labels": [0, 1, 2, 3],
                          "coarse_labels": [0, 0, 1, 1], "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
                          "batch_label": b"train"}, protocol=2)
    img = folder / "img.png"
    Image.fromarray((rng.randint(0, 65536, (8, 8))).astype(np.uint16)).save(img)
    # the authors' checkpoint layout (their key names), small
    from tests.test_authors_import import write_theirs

    class _MP:  # write_theirs needs only setitem for its pool list, which is not fuzzed here
        def setitem(self, d, k, v):
            d[k] = v
    ckpt, _, _ = write_theirs(folder, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_k=3, in_ch=1, K=4,
                              monkeypatch=_MP())
    _ = torch
    return {
        "task": (files["task"].read_bytes(), "container", read_task),
        "pools": (files["pools"].read_bytes(), "container", read_pools),
        "pretrained": (files["pretrained"].read_bytes(), "container", read_pretrained),
        "state_dict": (files["state_dict"].read_bytes(), "bytes", read_state_dict),
        "results": (json.dumps(results).encode(), "json", read_results),
        "progress": (json.dumps(progress).encode(), "json", read_progress),
        "status": (json.dumps(status).encode(), "json", read_status),
        "config": (config, "bytes", read_config),
        "cifar": (cifar, "bytes", read_cifar),
        "image": (img.read_bytes(), "bytes", read_image),
        "authors": (Path(ckpt).read_bytes(), "bytes", read_authors),
    }


FILE_NAMES = {"results": "results.json", "progress": "progress.json", "status": "status.json",
              "config": "c.yaml", "image": "x.png"}


def fuzz_kind(kind: str, spec, folder: Path, examples: int, seed: int) -> int:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from nws_avalanche.common.errors import NWSError

    data, how, read = spec
    st, json_value = strategies()
    count = [0]
    path = folder / kind / FILE_NAMES.get(kind, "f")
    path.parent.mkdir(parents=True, exist_ok=True)
    read(_write(path, data))  # the valid file reads

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(d):
        if how == "container":
            mutant = mutate_container(data, d.draw, st, json_value)
        elif how == "json":
            mutant = mutate_text_json(data, d.draw, st, json_value)
        else:
            mutant = mutate_bytes(data, d.draw, st)
        _write(path, mutant)
        count[0] += 1
        signal.alarm(EXAMPLE_SECONDS)
        try:
            read(path)
        except NWSError as e:
            assert "\n" not in str(e) and str(e).strip(), f"{kind}: error message not one line: {str(e)[:300]!r}"
        finally:
            signal.alarm(0)

    run()
    return count[0]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    for p in path.parent.iterdir():  # no state from the previous example (e.g. status' config.yaml)
        if p != path and p.is_file():
            p.unlink()
    return path


def main(argv: list[str]) -> int:
    examples, seed, kinds = int(argv[0]), int(argv[1]), argv[2:]
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="nws-fuzz-") as tmp:
        folder = Path(tmp)
        specs = setup_kinds(folder)
        limit = _cap_memory()
        for kind in kinds or list(specs):
            start = time.process_time()
            n = fuzz_kind(kind, specs[kind], folder, examples, seed)
            print(json.dumps({"kind": kind, "examples": n, "cpu_s": round(time.process_time() - start, 1),
                              "memory_cap_bytes": limit}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
