"""The thread policy (refpose/threads.py): OpenMP asked not to spin, what happens when a runtime was
loaded first, and the threads of evaluation workers. Each case runs in a fresh process, since the
policy is decided once per process."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest


def _import_kernels(prelude="", builds=1, **env):
    """(OMP_WAIT_POLICY after building the model, whether the policy says a runtime spins, the kernels'
    thread count), stderr."""
    code = prelude + ("import os, numba, refpose, refpose.threads as t\n"
                      "for _ in range(%d): refpose.build('tiny')\n"
                      "print(os.environ['OMP_WAIT_POLICY'], t.policy().openmp_spins, numba.get_num_threads())" % builds)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, **env}
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split(), r.stderr


ALL = str(numba.config.NUMBA_NUM_THREADS)


LOAD_LIBGOMP = "import ctypes, ctypes.util; ctypes.CDLL(ctypes.util.find_library('gomp'), mode=ctypes.RTLD_GLOBAL)\n"


def _need_libgomp():
    import ctypes.util
    if ctypes.util.find_library("gomp") is None:
        pytest.skip("needs libgomp (GNU OpenMP) to load an OpenMP runtime by hand")


def test_openmp_is_asked_to_wait_passively_unless_the_user_chose():
    # see refpose/threads.py: a pool that spins after its region takes a core from whatever runs next
    assert _import_kernels()[0] == ["PASSIVE", "False", ALL]
    assert _import_kernels(OMP_WAIT_POLICY="ACTIVE")[0] == ["ACTIVE", "False", ALL]


def test_the_variable_is_set_when_refpose_is_imported():
    """An OpenMP runtime loaded after `import refpose` reads PASSIVE when it loads."""
    r = subprocess.run([sys.executable, "-c", "import os, refpose; print(os.environ['OMP_WAIT_POLICY'])"],
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert r.stdout.split() == ["PASSIVE"], r.stderr


def test_openmp_loaded_after_refpose_does_not_warn():
    """Refpose first, then the runtime: no warning, kernels in parallel."""
    _need_libgomp()
    out, err = _import_kernels("import refpose\n" + LOAD_LIBGOMP)
    assert out == ["PASSIVE", "False", ALL]
    assert "Warning" not in err, err


def test_numbas_own_runtime_loaded_before_refpose_warns_once_and_runs_the_kernels_on_one_thread():
    """The libgomp Numba's pool links, loaded by hand before refpose: it read no policy and spins,
    and the pool can run on no other, so the kernels get one thread (and one warning)."""
    _need_libgomp()
    out, err = _import_kernels(LOAD_LIBGOMP, builds=3)
    if numba.config.THREADING_LAYER not in ("default", "omp"):
        pytest.skip("Numba's pool is not OpenMP here")
    assert out == ["PASSIVE", "True", "1"]
    assert err.count("RuntimeWarning") == 1, err                   # once per process, not per model
    assert "Import refpose first" in err and "OMP_WAIT_POLICY=PASSIVE" in err


SPIN_CHECK = ("import time, numpy as np\n"
              "from refpose.ops import fast\n"
              "x, w = np.ones((4096, 64), np.float32), np.ones((64, 64), np.float32)\n"
              "fast.linear(x, w, None)\n"
              "spun = []\n"
              "for _ in range(3):\n"
              "    fast.linear(x, w, None)\n"
              "    c = time.process_time(); time.sleep(0.1); spun.append(time.process_time() - c)\n"
              "print('spin_ms', round(1e3 * min(spun)))\n")


@pytest.mark.torch
def test_torch_imported_first_leaves_the_kernels_every_thread_and_a_pool_that_sleeps():
    """torch first (its libgomp read no policy and spins): Numba's pool runs on a runtime of its
    own that waits passively, so the kernels keep every thread, nothing is printed, and no
    thread of the process runs while it sleeps after a kernel (on torch's runtime, Numba's
    worker spun for milliseconds after each parallel region)."""
    pytest.importorskip("torch", reason="the case of torch imported before refpose")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    out, err = _import_kernels("import torch\n", builds=2)
    assert out == ["PASSIVE", "True", ALL]
    assert "Warning" not in err, err
    code = "import torch, refpose\nrefpose.build('tiny')\n" + SPIN_CHECK
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2] == "spin_ms" and int(r.stdout.split()[-1]) <= 1, r.stdout   # spinning: 4-9 ms


@pytest.mark.torch
def test_torch_imported_after_refpose_does_not_warn():
    pytest.importorskip("torch", reason="the case of torch imported after refpose")
    out, err = _import_kernels("import refpose, torch\n")
    assert out == ["PASSIVE", "False", ALL]
    assert "Warning" not in err, err


def _worker_threads(_):
    from threadpoolctl import threadpool_info
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return numba.get_num_threads(), blas


def test_evaluation_workers_have_the_threads_the_docs_give(capfd):
    """README: each worker runs BLAS on one thread; its kernels get the threads it is given
    (the cores shared among the workers), and no worker warns."""
    import multiprocessing

    from refpose.data.evaluate import ModelSpec, _Worker
    pytest.importorskip("threadpoolctl", reason="reads the BLAS thread count")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2, _Worker.start, (ModelSpec(config="tiny"), False, 2)) as pool:
        counts = pool.map(_worker_threads, range(2))
    assert counts == [(2, [1] * len(counts[0][1]))] * 2 and counts[0][1], counts
    assert "Warning" not in capfd.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "abc", "100000", "1e3"])
def test_a_bad_numba_num_threads_is_one_line_status_2(tmp_path, value):
    """NUMBA_NUM_THREADS=0 was a ValueError traceback at the first kernel; 'abc' a traceback that
    Numba prints and goes on; 100000 a segmentation fault."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 30, 3), 120, np.uint8))
    env = dict(os.environ, NUMBA_NUM_THREADS=value)
    p = subprocess.run([sys.executable, "-c", "import sys; from refpose.cli import main; sys.exit(main())",
                        "infer", str(tmp_path / "a.png"), "--config", "tiny", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2
    assert p.stderr == (f"refpose infer: error: NUMBA_NUM_THREADS={value!r} in the environment: expected a whole "
                        "number of threads between 1 and 1024 (or leave it unset: one per core)\n")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
