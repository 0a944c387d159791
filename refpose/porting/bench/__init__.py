"""Latency of refpose against the frameworks a user would otherwise pick (DESIGN section 5).

Candidates, on the same seeded weights and the same input, in one process:
- `refpose numpy`: the NumPy reference path (`impl="reference"`), float32;
- `refpose fast`: the fast path (Numba kernels, no BLAS call), float32;
- `pytorch eager`: the PyTorch twin (`refpose.porting.twin`) under `torch.inference_mode()`, if torch is installed;
- `onnxruntime`: the twin exported to ONNX (`refpose.porting.onnx_export`), if onnxruntime is installed;
- `openvino`: the same ONNX file on OpenVINO's CPU plugin (latency hint, one stream, f32, no
  thread pinning), if openvino is installed.

Fair timing:
- every library runs `threads` threads (Numba, the BLAS under NumPy via threadpoolctl, torch
  intra-op, ORT intra-op) and its inter-op pool one;
- pools that keep spinning after a call steal cores from whatever runs next: ORT's spinning is
  switched off in the session options and OpenMP's by OMP_WAIT_POLICY=PASSIVE (read when the
  runtime loads, see `quiet_spinning`); OpenVINO's threads are not pinned to cores; OpenBLAS, loaded with NumPy before any of this, spins
  ~0.1 s after a call, so every timed call waits until the process is idle (`wait_until_idle`);
- candidates alternate inside each round, so drift in the machine's load hits all alike, and
  the rounds' orders follow a Williams design (`balanced_orders`): over its rows, every
  candidate runs right after every other one equally often. A call can leave a cost to the
  next one that waiting does not remove (on the test machine the first fast-path forward
  after a two-thread sgemm took 1.3-1.6x its usual time, even a second later); with the order
  only rotated, each candidate always had the same predecessor. Warm-up runs are not timed;
  medians over the rounds;
- the yardstick, numpy float32 matmul (sgemm) throughput, is timed as one more candidate of
  every round; the BLAS library in use is reported (threadpoolctl);
- `aa=True` times the fast path against a second copy of itself: the ratio must read 1.00 +- 0.05.
Outputs are checked against the float64 NumPy reference, at the oracle's float32 tolerance
(`refpose.porting.oracle.TOLERANCES`: 1e-4 x max |ref|).

Memory: the peak resident set (VmHWM in /proc/<pid>/status) of a child process that builds one
candidate and runs two forwards, and how much of it the forwards added to the resident set
the built candidate had (`peak_rss`); one child per candidate, so no candidate's memory (or
allocator cache) is counted against another.

`run_profile` (`refpose bench --profile`) times the fast path per op kind and per stage (by
wrapping the model's op set and stages, so nothing is timed when it is not asked for) and
sums ONNX Runtime's own per-node profile by op type.
"""
from .candidates import (FAST, FAST_COPY, NO_TORCH, NUMPY, OPENVINO, ORT, SGEMM, TORCH, TORCH_FIRST, TORCH_IDLE,  # noqa: F401
                         Candidate, _installed, optional_candidates)
from .environment import check_args, fixed_threads  # noqa: F401
from .profile import run_profile  # noqa: F401
from .report import format_profile, format_result  # noqa: F401
from .timing import balanced_orders, ratio_interval, rel_diff, run_bench, time_rounds  # noqa: F401
