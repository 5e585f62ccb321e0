"""``nws-bench claims`` (issue 19): each claim's verdict follows its figures (thresholds inclusive, the
memory ratio and forgetting included), missing seeds are refused, and ``--write-readme`` replaces only the
marked block."""
from __future__ import annotations

import pytest

from nws_avalanche.common.errors import ConfigError, NWSError
from reports.claims import MARK_BEGIN, MARK_END, VARIANTS, check, pick, render, write_readme


def result(variant, seed, acc, per_task_mib=1.0, forget=0.0):
    method, point = VARIANTS[variant]
    matrix = [[acc + forget, 0.0], [acc, acc]]  # task 0 right after learning it, then at the end
    return {"benchmark": "b", "method": method, "seed": seed, "sweep": dict(point), "average_accuracy": acc,
            "accuracy_matrix": matrix, "memory_mib": {"per_task": [per_task_mib] * 2}}


def results(nws=90.0, nws_random=88.0, finetune=91.5, scratch=81.5, frozen=86.5, nws_mib=0.1, forget=0.0):
    acc = {"nws": nws, "nws-random": nws_random, "finetune": finetune, "finetune-scratch": scratch,
           "frozen": frozen}
    return [result(v, s, a, nws_mib if v == "nws" else 1.0, forget if v == "nws" else 3.0)
            for v, a in acc.items() for s in (0, 1)]


def verdicts(**kw):
    return [c.holds for c in check(pick(results(**kw), "b", [0, 1]))]


def test_every_claim_at_its_threshold_holds():
    assert verdicts() == [True] * 5  # gaps exactly 1.5, 2, 5, 10; memory exactly 1/10; no drop


@pytest.mark.parametrize("kw,broken", [
    (dict(nws=89.9), [0, 1]),             # 1.6 below finetune and 1.9 above nws-random
    (dict(nws_mib=0.11), [0]),            # more than 1/10 of finetune's per-task memory
    (dict(nws_random=88.1), [1]),
    (dict(frozen=86.6), [2]),
    (dict(scratch=81.6), [3]),
    (dict(forget=0.5), [4]),              # task 0 lost half a point after it was learnt
])
def test_a_claim_fails_past_its_threshold(kw, broken):
    v = verdicts(**kw)
    assert [i for i, ok in enumerate(v) if not ok] == broken


def test_missing_seed_is_refused():
    with pytest.raises(NWSError, match="seeds"):
        pick(results(), "b", [0, 1, 2])


def test_write_readme_replaces_only_the_block(tmp_path):
    text = check(pick(results(), "b", [0, 1]))
    block = render(text, "b", [0, 1], "settings")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{MARK_BEGIN}\nOLD-BLOCK\n{MARK_END}\noutro\n")
    write_readme(readme, block, "nws-bench claims")
    new = readme.read_text()
    assert new.startswith("intro\n") and new.endswith("\noutro\n") and "OLD-BLOCK" not in new
    assert "5 of 5 claims hold" in new and new.count(MARK_BEGIN) == 1
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="needs one"):
        write_readme(readme, block, "nws-bench claims")
