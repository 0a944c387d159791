"""Calling a compiled kernel by its address, so that the caller does not compile it again.

When a Numba function calls another by name, the callee's LLVM IR is linked into the caller's
module and optimised and turned into machine code once more; a `prange` loop links it twice more
(Numba compiles the loop body as a separate function whose module links the callee, then links
that into the kernel). For the fused attention the parallel wrapper around one group took ~5.5 s
of CPU to compile that way, of a first forward's ~29 s, against 0.6 s when it calls the group
function through a pointer.

`call_at(address, args)` calls the Numba function compiled at `address` with the tuple `args`
unpacked, through Numba's own calling convention (what a call by name does, minus the linking).
The address comes from `jit_address(dispatcher, args)`, which compiles the function for the
types of exactly those Python values, or loads it from the on-disk cache, and returns where its
machine code lies in this process. Pass the kernel the same values, in the same order, that the
address was taken for: the pointer carries no types, and a mismatch is undefined behaviour. The
kernels that take an address take it as their first argument and are wrapped by a Python
function made by `parallel`, which gets it right.

Numba internals used, as of Numba 0.68: `numba._dispatcher.compute_fingerprint` (the key the
dispatcher types its arguments by), a compile result's `library.get_pointer_to_function` and
`fndesc.llvm_func_name`, and the target context's `call_conv` (as Numba's own first-class
function calls use them).
"""
from __future__ import annotations

from numba import typeof, types
from numba._dispatcher import compute_fingerprint
from numba.extending import intrinsic


@intrinsic
def call_at(typingctx, address, args):
    """Call the function at `address` (an integer from `jit_address`) with the tuple `args`
    unpacked; it returns None. Error statuses are passed on as a call by name passes them."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtypes = tuple(args.types)

    def codegen(context, builder, signature, llargs):
        addr, packed = llargs
        values = [builder.extract_value(packed, i) for i in range(len(argtypes))]
        fnty = context.call_conv.get_function_type(types.none, argtypes)
        status, _ = context.call_conv.call_function(builder, builder.inttoptr(addr, fnty.as_pointer()),
                                                    types.none, argtypes, values)
        with builder.if_then(status.is_error, likely=False):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, args), codegen


_addresses: dict = {}


def jit_address(dispatcher, args: tuple) -> int:
    """The address of `dispatcher` compiled for the Numba types of the values `args` (compiled
    or loaded from the cache the first time; then kept for this process, under the fingerprint
    Numba's dispatcher itself keys its types by: ~2 us, where `typeof` of the operands of a
    matmul takes ~100)."""
    key = (dispatcher, compute_fingerprint(args))
    address = _addresses.get(key)
    if address is None:
        argtypes = tuple(typeof(a) for a in args)
        dispatcher.compile(argtypes)
        cres = dispatcher.overloads[argtypes]
        address = _addresses[key] = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    return address


def parallel(kernel, item):
    """The Python function that runs `kernel(address, *args)` -- a `prange` over items, each
    `call_at(address, (i,) + args)` -- with the address of `item` compiled for (0,) + args."""
    def run(*args):
        kernel(jit_address(item, (0,) + args), *args)
    run.__name__ = kernel.__name__.lstrip("_")
    run.__doc__ = f"`{kernel.__name__}` on these operands, each item `{item.__name__}` (refpose.ops.pointers)."
    return run
