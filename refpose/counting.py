"""Operation counting: ops report what they compute while they run (DESIGN section 2).

One multiply-accumulate (MAC) is one "FLOP", as in the paper's Eq. (1) and in fvcore.
MACs come from conv, depthwise conv, transposed conv, linear layers and the two attention
matmuls; elementwise work (norms, activations, softmax, adds, pooling, SE gating) is kept
in a separate tally, never mixed in. The figures are taken from the operand shapes of the
ops that actually run, not from formulas: the analyzer compares the two.

    with refpose.count_ops() as ops:
        model(x)
    ops.macs, ops.by_kind, ops.by_layer
"""
from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict
from dataclasses import dataclass, field

MAC_KINDS = ("conv", "depthwise_conv", "conv_transpose", "linear", "attention_qk", "attention_av")

_counter: contextvars.ContextVar["OpCounter | None"] = contextvars.ContextVar("refpose_counter", default=None)
_layer: contextvars.ContextVar[str] = contextvars.ContextVar("refpose_layer", default="")


@dataclass
class OpCounter:
    """Tallies reported while a `count_ops()` block is open."""

    by_kind: dict = field(default_factory=lambda: defaultdict(int))
    by_layer: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    elementwise: dict = field(default_factory=lambda: defaultdict(int))

    @property
    def macs(self) -> int:
        return sum(self.by_kind.values())

    def macs_under(self, prefix: str) -> int:
        """MACs of every layer whose name is `prefix` or starts with `prefix.`."""
        return sum(sum(k.values()) for name, k in self.by_layer.items()
                   if name == prefix or name.startswith(prefix + "."))


@contextlib.contextmanager
def count_ops():
    """Count the MACs (by op kind and by layer name) of every op run inside the block."""
    counter = OpCounter()
    token = _counter.set(counter)
    try:
        yield counter
    finally:
        _counter.reset(token)


_NO_SCOPE = contextlib.nullcontext()


def layer_scope(name: str):
    """Name the layer that ops run inside this block report under. Outside `count_ops()` the
    name has no reader, and a forward opens a scope per layer: a shared no-op then."""
    return _NO_SCOPE if _counter.get() is None else _named(name)


@contextlib.contextmanager
def _named(name: str):
    token = _layer.set(name)
    try:
        yield
    finally:
        _layer.reset(token)


def report(kind: str, macs: int) -> None:
    """Called by each op with the MACs its operand shapes imply."""
    counter = _counter.get()
    if counter is None:
        return
    if kind not in MAC_KINDS:
        raise ValueError(f"unknown MAC kind {kind!r}")
    counter.by_kind[kind] += int(macs)
    counter.by_layer[_layer.get()][kind] += int(macs)


def report_elementwise(kind: str, elements: int) -> None:
    """Elementwise work, tallied apart from MACs (number of output elements touched)."""
    counter = _counter.get()
    if counter is not None:
        counter.elementwise[kind] += int(elements)
