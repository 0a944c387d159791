"""The ops WGNet runs on, and the one place where they report what they compute.

`reference` holds the plain NumPy definitions; `fast` the same functions backed by Numba
kernels where they pay. `Ops(impl)` picks one of the two for a model; every call goes
through it, so counting (DESIGN section 2) is the same whichever implementation runs.
"""
from __future__ import annotations

import numpy as np

from ..counting import layer_scope, report, report_elementwise
from . import geometry, reference

IMPLS = ("reference", "fast")


class Ops:
    """A model's op set: `Ops("reference")` or `Ops("fast")`. Maps are NHWC."""

    def __init__(self, impl: str = "fast"):
        if impl == "reference":
            self.impl = reference
        elif impl == "fast":
            from ..threads import policy
            from . import fast
            policy()                         # the thread policy, decided before any kernel runs
            from . import precompile
            precompile.start()               # with a cold cache: the attention kernels compile in a helper process
            self.impl = fast
        else:
            raise ValueError(f"unknown op implementation {impl!r}; choose one of {', '.join(IMPLS)}")
        self.name = impl
        self.fused = impl == "fast"          # the fast ops take relu6 and residual sums and fuse them

    def conv(self, x, w, b, stride=1, relu6=False, residual=None):
        """Dense conv (used for 1x1 projections); w (Cout, Cin, k, k); `residual` (the output's
        shape) is added last."""
        N, H, W, Cin = x.shape
        Cout, _, kh, kw = w.shape
        Ho, Wo = geometry.conv_out_size(H, kh, stride), geometry.conv_out_size(W, kw, stride)
        report("conv", N * Ho * Wo * Cout * Cin * kh * kw)
        return self._act(self.impl.conv2d, relu6, residual, x, w, b, stride)

    def depthwise_conv(self, x, w, b, stride=1, relu6=False):
        """Depthwise conv; w (C, 1, k, k)."""
        N, H, W, C = x.shape
        _, _, kh, kw = w.shape
        Ho, Wo = geometry.conv_out_size(H, kh, stride), geometry.conv_out_size(W, kw, stride)
        report("depthwise_conv", N * Ho * Wo * C * kh * kw)
        return self._act(self.impl.depthwise_conv2d, relu6, None, x, w, b, stride)

    def conv_transpose(self, x, w, b, stride=2, relu6=False):
        """Transposed conv with kernel == stride; w (Cin, Cout, k, k)."""
        N, H, W, Cin = x.shape
        _, Cout, kh, kw = w.shape
        report("conv_transpose", N * H * W * Cin * Cout * kh * kw)
        return self._act(self.impl.conv_transpose2d, relu6, None, x, w, b, stride)

    def linear(self, x, w, b, residual=None):
        """x (..., in) -> (..., out); w (out, in); `residual` (the output's shape) is added last."""
        self._count_linear(x, w)
        return self._act(self.impl.linear, False, residual, x, w, b)

    def layer_norm(self, x, weight, bias, eps=1e-5):
        report_elementwise("layer_norm", x.size)
        return self.impl.layer_norm(x, weight, bias, eps)

    def grouped_attention(self, qkv, heads, kind, window, patch):
        """Multi-head attention inside window or global groups; (N, H, W, 3C) -> (N, H, W, C)."""
        self._count_attention(qkv.shape, heads, kind, window, patch)
        return self.impl.grouped_attention(qkv, heads, kind, window, patch)

    def attention_block(self, x, norm, qkv, proj, eps, heads, kind, window, patch):
        """x + proj(MHSA(group(qkv(norm(x))))), the attention sub-block of paper section 3.2;
        norm, qkv and proj are the layers (their weights, and the names they are counted under).

        The reference runs the ops one by one; the fast path runs the whole block as one kernel
        over the groups (see `fast.attention_block`), counted as the same ops under the same names.
        """
        if not self.fused:
            with layer_scope(norm.path):
                t = self.layer_norm(x, norm.weight, norm.bias, eps)
            with layer_scope(qkv.path):
                t = self.linear(t, qkv.weight, qkv.bias)
            y = self.grouped_attention(t, heads, kind, window, patch)
            with layer_scope(proj.path):
                return self.linear(y, proj.weight, proj.bias, residual=x)
        N, H, W, C = x.shape
        with layer_scope(norm.path):
            report_elementwise("layer_norm", x.size)
        with layer_scope(qkv.path):
            self._count_linear(x, qkv.weight)
        self._count_attention((N, H, W, qkv.weight.shape[0]), heads, kind, window, patch)
        with layer_scope(proj.path):
            self._count_linear(x, proj.weight)
            report_elementwise("add", x.size)
        return self.impl.attention_block(x, norm.weight, norm.bias, eps, qkv.weight, qkv.bias, heads, kind,
                                         window, patch, proj.weight, proj.bias)

    @staticmethod
    def _count_linear(x, w) -> None:
        report("linear", x.size // x.shape[-1] * w.shape[0] * w.shape[1])

    @staticmethod
    def _count_attention(qkv_shape, heads, kind, window, patch) -> None:
        N, H, W, C3 = qkv_shape
        C = C3 // 3
        geometry.check_grouping(H, W, kind, window, patch)
        # the grouping the kernels receive, (groups, tokens): counted from its shape, not from a formula
        G, T = geometry.token_pixels(N, H, W, kind, window, patch).shape
        # each group: Q K^T is (T x C) (C x T) and A V is (T x T) (T x C), C summed across heads
        report("attention_qk", G * T * T * C)
        report("attention_av", G * T * T * C)
        report_elementwise("softmax", G * heads * T * T)

    def squeeze_excite(self, x, w1, b1, w2, b2):
        N, H, W, C = x.shape
        report("conv", N * (w1.shape[0] * w1.shape[1] + w2.shape[0] * w2.shape[1]))
        report_elementwise("pool", x.size)
        report_elementwise("se_gate", x.size)
        return self.impl.squeeze_excite(x, w1, b1, w2, b2)

    def add(self, x, fresh):
        """x + fresh, written into `fresh`: an intermediate the caller made for this sum (the
        residual branch's output), so no new map is allocated and faulted in for each sum."""
        report_elementwise("add", x.size)
        return np.add(x, fresh, out=fresh)

    def _act(self, op, relu6: bool, residual, *args) -> np.ndarray:
        """Run a conv or linear op, then ReLU6 and the residual sum if asked: fused into the op's
        kernel on the fast path, NumPy passes after it on the reference path."""
        if self.fused:
            fused = {"relu6": True} if relu6 else {}
            if residual is not None:
                fused["residual"] = residual
            y = op(*args, **fused)
        else:
            y = op(*args)
            if relu6:
                np.clip(y, 0, 6, out=y)
            if residual is not None:
                np.add(residual, y, out=y)
        if relu6:
            report_elementwise("relu6", y.size)
        if residual is not None:
            report_elementwise("add", y.size)
        return y
