"""A register-tiled multiply-add written in LLVM IR, for the Numba kernels' matmuls.

LLVM vectorises a plain loop nest, but it keeps the output rows in memory: every step along
the summed axis loads and stores them again, and the loop runs at about half the machine's
multiply-add rate. `tile_fma` is the inner block of a BLAS-style kernel instead (Goto & van de
Geijn 2008): a tile of `rows` x (`nvec` vectors) output elements lives in registers while the
summed axis runs, one vector load of `b` and one broadcast of `a` per step, the products
added with `llvm.fma`. The vector width follows the CPU the kernels are compiled for
(`VECTOR_BYTES`): 512 bits where it has AVX-512, whose 32 registers hold an 8 x 3 tile (24
accumulators, three loads of b and one broadcast of a); 256 bits elsewhere, where a 4 x 3 tile
fills the 16 registers of AVX2. On this project's test machine the 8 x 3 tile of 512-bit
vectors runs 1.3-1.8x the multiply-adds per second of the 4 x 3 tile of 256-bit ones.

Each output element is c + sum_k a[r, k] b[k, j], the sum in k order with one rounding per
fused multiply-add and one for the final addition to c: the same bits in every build, for
any tiling of the output, whatever the thread count.
"""
from __future__ import annotations

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload


def target_features() -> str:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES if set (as Numba reads it),
    else the host's, as LLVM reports them (only what the OS enables: no AVX-512 without the
    OS saving its registers)."""
    return config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()


def vector_bytes(features: str) -> int:
    """64 (512-bit vectors) when `features` ("+avx2,-avx512f,...") has AVX-512F, else 32."""
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = vector_bytes(target_features())
TILE_ROWS = 8 if VECTOR_BYTES == 64 else 4       # rows of the whole tiles (see the module's docstring)


def lanes(dtype) -> int:
    """Elements per vector for a NumPy dtype (8 float32, 4 float64)."""
    return VECTOR_BYTES // dtype.itemsize


def vector_lanes(a) -> int:
    """Elements per vector for the dtype of array a; in a kernel, a compile-time constant, so that
    the divisions by it that lay out panels and tiles cost a multiply and a shift."""
    return VECTOR_BYTES // a.itemsize


@overload(vector_lanes)
def _vector_lanes_impl(a):
    n = VECTOR_BYTES * 8 // a.dtype.bitwidth
    return lambda a: n


# The operands of a tile, each a tuple: a flat array with its offset and strides, in BLAS's words.
#   A = (a, a0, lda, ka)                A[r, k] is a[a0 + r*lda + k*ka]
#   B = (b, b0, ldb)                    B[k, j] is b[b0 + k*ldb + j]
#   C = (c, c0, ldc)                    C[r, j] is c[c0 + r*ldc + j]
#   epilogue = (bias, bias0, relu6, res, add_res)
#       bias[bias0 + j] added to column j, then the clip to [0, 6] if relu6, then the residual
#       res[c0 + r*ldc + j] added if add_res (res has c's layout)
# A compiled function takes a tuple's members as separate arguments: the grouping costs nothing.
# Members by kind: an array of the tile's dtype, an index (offset or stride, in elements), a flag.
OPERANDS = {"A": ("array", "index", "index", "index"), "B": ("array", "index", "index"),
            "C": ("array", "index", "index"), "epilogue": ("array", "index", "flag", "array", "flag")}


def _is_operand(t, kinds, dtype) -> bool:
    """Whether the Numba type t is a tuple with members of these kinds (see `OPERANDS`)."""
    test = {"array": lambda m: isinstance(m, types.Array) and m.dtype == dtype,
            "index": lambda m: isinstance(m, types.Integer), "flag": lambda m: isinstance(m, types.Boolean)}
    return isinstance(t, types.BaseTuple) and len(t) == len(kinds) and all(test[k](m) for k, m in zip(kinds, t.types))


@intrinsic
def tile_fma(typingctx, rows, nvec, K, A, B, C, epilogue):
    """C[r, j] = bias[bias0 + j] + sum_{k < K} A[r, k] B[k, j] for r < rows and j < nvec * lanes,
    then clipped to [0, 6] when `relu6` (NaN stays NaN, as np.clip), then added to res at C's
    place when `add_res` (A, B, C, epilogue: the tuples described at `OPERANDS`); `rows` and
    `nvec` are compile-time constants. A is read one element at a time (broadcast), so its
    strides are free: ka = 1 reads a row-major, lda = 1 a transposed.

    a, b, c, bias, res are contiguous arrays of one float dtype addressed by flat element
    offsets (the caller checks the bounds); the k loop keeps rows x nvec accumulators in
    registers, and c is only written, once, at the end: no read of c, so no narrower store
    in front of a wide load.
    """
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(nvec, types.IntegerLiteral)):
        return None
    dtype = getattr(C.types[0], "dtype", None) if isinstance(C, types.BaseTuple) and len(C) else None
    if dtype not in (types.float32, types.float64) or not isinstance(K, types.Integer):
        return None
    if not all(_is_operand(t, kinds, dtype) for t, kinds in zip((A, B, C, epilogue), OPERANDS.values())):
        return None
    R, V = rows.literal_value, nvec.literal_value
    sig = types.void(rows, nvec, K, A, B, C, epilogue)

    def codegen(context, builder, signature, args):
        operands = tile_arguments(context, builder, signature, args)
        fn = _tile_function(builder.module, context.get_value_type(dtype), dtype.bitwidth, R, V,
                            context.get_value_type(types.intp))
        builder.call(fn, operands)
        return context.get_dummy_value()

    return sig, codegen


def tile_arguments(context, builder, signature, args) -> list:
    """The arguments of a tile function from those of a tile intrinsic (rows, nvec, K, then one
    tuple per operand): K, then every operand's members in order, each as the tile function takes
    it — the data pointer of an array, a flag as i8, an index as intp."""
    def scalar(value, ty):
        if isinstance(ty, types.Array):
            return context.make_array(ty)(context, builder, value=value).data
        if isinstance(ty, types.Boolean):
            return builder.zext(context.cast(builder, value, ty, types.boolean), ir.IntType(8))
        return context.cast(builder, value, ty, types.intp)

    operands = [scalar(args[2], signature.args[2])]
    for value, ty in zip(args[3:], signature.args[3:]):
        operands += [scalar(v, t) for v, t in zip(cgutils.unpack_tuple(builder, value, len(ty)), ty.types)]
    return operands


def _tile_function(module, ft, bits: int, R: int, V: int, intp):
    """The tile as a function of its own in the module (one per shape and dtype), so that each
    call site only passes pointers and offsets: a loop that calls tiles of several shapes keeps
    each tile's accumulators in registers (inlined side by side, they were spilled and the loop
    ran at half speed). Arguments: K, then the members of A, B, C and the epilogue in order (see
    `OPERANDS`): a, a0, lda, ka, b, b0, ldb, c, c0, ldc, bias, bias0, relu6, res, add_res
    (pointers to the first element, offsets in elements, flags as i8).

    Linkage linkonce_odr, under a name that says all it depends on, so that a kernel keeps one
    copy of each tile however many of its linked functions define it: with 256-bit vectors
    `_tiles` and `_edge_tile` both define the tiles of 4 rows, and with internal linkage every
    kernel that calls `_tiles` compiled each of them twice."""
    name = f"refpose_tile_{R}x{V}_f{bits}_v{VECTOR_BYTES * 8}"
    fp, i8 = ft.as_pointer(), ir.IntType(8)
    fnty = ir.FunctionType(ir.VoidType(), [intp, fp, intp, intp, intp, fp, intp, intp, fp, intp, intp, fp, intp, i8, fp, i8])
    fn = cgutils.get_or_insert_function(module, fnty, name)
    if not fn.is_declaration:
        return fn
    fn.linkage = "linkonce_odr"
    fn.attributes.add("noinline")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    K_, pa, a_base, lda_, ka_, pb, b_base, ldb_, pc, c_base, ldc_, pbias, bias_base, relu6, pres, add_res = fn.args
    n_lanes = VECTOR_BYTES * 8 // bits
    vt = ir.VectorType(ft, n_lanes)
    align = bits // 8
    fma = cgutils.get_or_insert_function(module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{n_lanes}f{bits}")

    def vector_at(base, offset, v=0):
        return builder.bitcast(builder.gep(base, [builder.add(offset, ir.Constant(intp, v * n_lanes))]), vt.as_pointer())

    def const(value):
        return ir.Constant(vt, [ir.Constant(ft, value)] * n_lanes)

    acc = [[cgutils.alloca_once_value(builder, const(0.0)) for _ in range(V)] for _ in range(R)]
    broadcast = ir.Constant(ir.VectorType(ir.IntType(32), n_lanes), None)      # all lanes from lane 0
    with cgutils.for_range(builder, K_) as loop:
        k = loop.index
        b_row = builder.add(b_base, builder.mul(k, ldb_))
        bv = [builder.load(vector_at(pb, b_row, v), align=align) for v in range(V)]
        for r in range(R):
            at = builder.add(builder.add(a_base, builder.mul(ir.Constant(intp, r), lda_)), builder.mul(k, ka_))
            s = builder.load(builder.gep(pa, [at]), align=align)
            xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, ir.Undefined), s,
                                                               ir.Constant(ir.IntType(32), 0)),
                                        ir.Constant(vt, ir.Undefined), broadcast)
            for v in range(V):
                builder.store(builder.call(fma, [xv, bv[v], builder.load(acc[r][v])]), acc[r][v])
    clip = builder.icmp_unsigned("!=", relu6, ir.Constant(i8, 0))
    add = builder.icmp_unsigned("!=", add_res, ir.Constant(i8, 0))
    lo, hi = const(0.0), const(6.0)
    bias_v = [builder.load(vector_at(pbias, bias_base, v), align=align) for v in range(V)]
    for r in range(R):
        row = builder.add(c_base, builder.mul(ir.Constant(intp, r), ldc_))
        for v in range(V):
            y = builder.fadd(bias_v[v], builder.load(acc[r][v]))
            # ordered comparisons are false for NaN, so a NaN passes through both selects
            clipped = builder.select(builder.fcmp_ordered("<", y, lo), lo, y)
            clipped = builder.select(builder.fcmp_ordered(">", clipped, hi), hi, clipped)
            y = builder.select(clip, clipped, y)
            out = cgutils.alloca_once_value(builder, y)
            with builder.if_then(add):
                builder.store(builder.fadd(builder.load(vector_at(pres, row, v), align=align), y), out)
            builder.store(builder.load(out), vector_at(pc, row, v), align=align)
    builder.ret_void()
    return fn


@intrinsic
def full_width_loops(typingctx):
    """Let LLVM's loop vectoriser use vectors of VECTOR_BYTES in the function that calls this.

    On AVX-512 machines LLVM vectorises plain loops with 256-bit vectors by default
    ("prefer-256-bit": 512-bit code lowers the clock of some CPUs). The tiles already run
    512-bit code, so for the loops that follow them (the softmax's exps) the wider vectors are
    nearly free speed: the function gets the attribute "prefer-vector-width"="512". Vector
    width changes no result: those loops are elementwise, and each element takes the same
    operations either way.
    """
    def codegen(context, builder, signature, args):
        if VECTOR_BYTES == 64:
            # a string attribute, which llvmlite's list of known attributes does not hold
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (`llvm.fma`), the step `tile_fma` takes for each of its elements."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        ft = context.get_value_type(a)
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft, ft, ft]),
                                           f"llvm.fma.f{a.bitwidth}")
        return builder.call(f, list(args))

    return a(a, b, c), codegen
