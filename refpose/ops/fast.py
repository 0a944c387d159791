"""Fast path: the reference ops, to be replaced op by op with Numba kernels."""
from .reference import (conv2d, conv_transpose2d, depthwise_conv2d, grouped_attention,  # noqa: F401
                        layer_norm, linear, squeeze_excite)
