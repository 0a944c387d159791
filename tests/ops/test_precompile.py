"""The helper process that compiles the matmul tiles and the attention kernels with a cold cache
(refpose/ops/precompile.py): it compiles the very specialisations a forward uses, the forward
loads them from the cache instead of compiling them again, and the results do not change."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refpose.ops import kernels, precompile


def test_the_helpers_calls_are_the_forwards_specialisations(tiny_tensors, tiny_input):
    """After a float32 forward (tiny uses the fused block and the unfused attention), the helper's
    calls on empty operands add no specialisation: they compile exactly what a forward needs.
    (`_tiles` is called from other kernels only, so a process that loaded those from the cache
    has no specialisation of its own; that the forward's kernels link the helper's is the slow
    test below: its matmul loads `_tiles` from the cache.)"""
    from refpose.weights import from_tensors
    from_tensors(tiny_tensors, "tiny", "float32", "fast")(tiny_input.astype(np.float32))
    called = [name for name in precompile.HELPER_KERNELS if name != "_tiles"]
    before = {name: list(getattr(kernels, name).signatures) for name in called}
    assert all(before.values()), before
    for call in precompile.empty_calls(np.float32).values():
        call()
    assert {name: list(getattr(kernels, name).signatures) for name in called} == before


COLD = """
import json, numpy as np, refpose
from refpose.ops import kernels, precompile
y = refpose.build('tiny')(np.random.default_rng(1).standard_normal((1, 3, 128, 96)).astype(np.float32))
hits = {name: sum(getattr(kernels, name).stats.cache_hits.values()) for name in precompile.HELPER_KERNELS}
np.save(__import__('sys').argv[1], y)
print(json.dumps({"report": precompile.report(), "hits": hits}))
"""


@pytest.mark.slow
def test_a_cold_cache_compiles_the_attention_in_the_helper_with_the_same_results(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for name, extra in (("helper", {}), ("alone", {"REFPOSE_PRECOMPILE": "0"})):
        env_run = dict(env, **extra, NUMBA_CACHE_DIR=str(tmp_path / f"cache-{name}"))
        r = subprocess.run([sys.executable, "-c", COLD, str(tmp_path / f"{name}.npy")], capture_output=True,
                           text=True, env=env_run, timeout=1200)
        assert r.returncode == 0, r.stderr
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    helper, alone = runs
    assert helper["report"]["helper"] and not alone["report"]["helper"]
    assert helper["hits"]["_attention_block"] == 1 and helper["hits"]["_tiles"] == 1       # loaded, not compiled
    assert alone["hits"] == {name: 0 for name in precompile.HELPER_KERNELS}
    np.testing.assert_array_equal(np.load(tmp_path / "helper.npy"), np.load(tmp_path / "alone.npy"))


def test_no_helper_for_a_warm_cache_or_when_switched_off():
    code = ("import refpose\nfrom refpose.ops import precompile\nrefpose.build('tiny')\n"
            "print(precompile.report()['helper'])")
    for env in ({}, {}, {"REFPOSE_PRECOMPILE": "0"}):     # the first run warms the cache, if it was cold
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, **env), timeout=900)
        assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False"
    assert "False" == subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     timeout=900).stdout.split()[-1]
