"""Calling compiled functions by address (refpose/ops/pointers.py): the call gives what a call by
name gives, each operand type has its own address, and a kernel built with `parallel` runs every
item once. The expected values are computed here in NumPy, not by the code under test."""
import numpy as np
import pytest
from numba import njit, prange

from refpose.ops import pointers
from refpose.ops.pointers import call_at, jit_address, parallel


@njit
def _scaled_row(i, x, factor, out):
    """out[i] = factor * x[i] + i, a row at a time."""
    for c in range(x.shape[1]):
        out[i, c] = factor * x[i, c] + i


@njit(parallel=True)
def _rows(item_at, x, factor, out):
    for i in prange(x.shape[0]):
        call_at(item_at, (np.intp(i), x, factor, out))


@njit
def _one_call(address, i, x, factor, out):
    call_at(address, (i, x, factor, out))


scaled_rows = parallel(_rows, _scaled_row)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_call_at_an_address_is_the_call_by_name(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 7)).astype(dtype)
    out = np.zeros_like(x)
    address = jit_address(_scaled_row, (0, x, dtype(2.5), out))
    _one_call(address, 3, x, dtype(2.5), out)
    expected = np.zeros_like(x)
    expected[3] = dtype(2.5) * x[3] + 3
    np.testing.assert_array_equal(out, expected)


def test_each_operand_type_has_its_own_address():
    x32, x64 = np.ones((2, 3), np.float32), np.ones((2, 3), np.float64)
    a32 = jit_address(_scaled_row, (0, x32, np.float32(1), x32))
    a64 = jit_address(_scaled_row, (0, x64, np.float64(1), x64))
    frozen = x32.copy()
    frozen.setflags(write=False)
    a_frozen = jit_address(_scaled_row, (0, frozen, np.float32(1), x32))
    assert len({a32, a64, a_frozen}) == 3
    assert jit_address(_scaled_row, (5, np.zeros((9, 1), np.float32), np.float32(7), x32)) == a32   # same types
    assert all(isinstance(a, int) and a > 0 for a in (a32, a64, a_frozen))


@pytest.mark.parametrize("rows", [1, 2, 13, 64])
def test_a_parallel_kernel_runs_every_item_once(rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    out = np.full_like(x, np.nan)
    scaled_rows(x, np.float32(-1.5), out)
    expected = np.float32(-1.5) * x + np.arange(rows, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(out, expected)


def test_the_addresses_are_kept_per_process():
    x = np.ones((3, 2), np.int64)
    before = len(pointers._addresses)
    for _ in range(3):
        jit_address(_scaled_row, (0, x, 2, x))
    assert len(pointers._addresses) == before + 1
