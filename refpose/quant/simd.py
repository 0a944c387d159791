"""An int8 register tile written in LLVM IR, in the style of `refpose.ops.simd.tile_fma`: a tile of
`rows` x `nvec` vectors of int32 sums stays in registers while the summed axis runs.

Two bodies, chosen from the CPU features Numba compiles for (`refpose.ops.simd.target_features`):

- with AVX-512 VNNI or AVX-VNNI, `vpdpbusd` (`llvm.x86.avx512.vpdpbusd.{256,512}`): each 32-bit
  lane adds four products of an unsigned byte of A and a signed byte of B. A holds the uint8
  codes as they are (the zero point's share, zx * sum_k w[j, k], is taken off the bias), B the
  int8 weights, four consecutive k of a column in each lane: `GROUP` = 4;
- elsewhere, `vpmaddwd` (`llvm.x86.avx2.pmadd.wd`, or its 512-bit form): each lane adds two
  products of int16. A holds x - zx as int16, B the weights as int16: `GROUP` = 2. (`vpmaddubsw`,
  the 8-bit product of AVX2, saturates its pair sums at 2^15 - 1 and so is not exact for 8-bit
  weights; ONNX Runtime documents the same limit.)

Either way every product is exact and summed in int32, so both bodies, any tiling and any thread
count give the same integers. The operands are grouped as tuples, as `tile_fma`'s:

    A = (a, a0, lda)        row r of the tile starts at a[a0 + r*lda]; GROUP elements per k group
    B = (b, b0, ldb)        k group g of the tile's columns starts at b[b0 + g*ldb]: vector v of it is
                            b[b0 + g*ldb + v*LANES*GROUP ...], GROUP elements per column, columns in order
    C = (c, c0, ldc)        int32: C[r, j] is c[c0 + r*ldc + j]
    epilogue = (bias, bias0)  int32: bias[bias0 + j] is added to column j
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..ops.simd import VECTOR_BYTES, target_features, tile_arguments


def has_vnni(features: str) -> bool:
    """Whether `features` ("+avx2,+avxvnni,...") have an 8-bit dot product instruction (vpdpbusd):
    AVX-512 VNNI (with 512-bit vectors) or AVX-VNNI (256-bit)."""
    f = set(features.split(","))
    return ("+avx512vnni" in f and "+avx512f" in f) or "+avxvnni" in f


VNNI = has_vnni(target_features())
# AVX-VNNI on a CPU without AVX-512 F runs on 256-bit vectors; AVX-512 VNNI on 512-bit ones
LANES = VECTOR_BYTES // 4                 # int32 lanes of a vector
GROUP = 4 if VNNI else 2                  # k per lane and step
TILE_ROWS = 8 if VECTOR_BYTES == 64 else 4
INSTRUCTION = ("vpdpbusd" if VNNI else "vpmaddwd") + f" ({8 * VECTOR_BYTES}-bit)"

OPERANDS = {"A": ("array", "index", "index"), "B": ("array", "index", "index"), "C": ("array", "index", "index"),
            "epilogue": ("array", "index")}


def _is_operand(t, kinds) -> bool:
    test = {"array": lambda m: isinstance(m, types.Array), "index": lambda m: isinstance(m, types.Integer)}
    return isinstance(t, types.BaseTuple) and len(t) == len(kinds) and all(test[k](m) for k, m in zip(kinds, t.types))


def _element(vnni: bool) -> tuple:
    return (types.uint8, types.int8) if vnni else (types.int16, types.int16)


@intrinsic
def tile_dot(typingctx, rows, nvec, K, A, B, C, epilogue):
    """C[r, j] = bias[bias0 + j] + sum_{g < K} sum_{i < GROUP} A[r, g*GROUP + i] B[g, j, i] for
    r < rows and j < nvec * LANES (int32, exact); `rows`, `nvec` compile-time constants; K counts
    k groups. Arrays are contiguous and addressed by flat element offsets (the caller checks the
    bounds); A's row is read GROUP elements at a time (one broadcast lane), B one vector per
    LANES columns; c is written once, at the end. uint8 A and int8 B take the vpdpbusd body (GROUP 4,
    only where the CPU has it), int16 A and B the vpmaddwd body (GROUP 2, every AVX2 CPU). The
    attention's products take the body of the matmuls (`refpose.quant.kernels`, A_CODES)."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(nvec, types.IntegerLiteral)):
        return None
    if not isinstance(K, types.Integer) or not all(_is_operand(t, k) for t, k in zip((A, B, C, epilogue),
                                                                                    OPERANDS.values())):
        return None
    vnni = A.types[0].dtype == types.uint8          # the body follows the operands: bytes need vpdpbusd
    if vnni and not VNNI:
        return None
    ea, eb = _element(vnni)
    if (A.types[0].dtype, B.types[0].dtype, C.types[0].dtype, epilogue.types[0].dtype) != (ea, eb, types.int32,
                                                                                           types.int32):
        return None
    R, V = rows.literal_value, nvec.literal_value
    sig = types.void(rows, nvec, K, A, B, C, epilogue)

    def codegen(context, builder, signature, args):
        operands = tile_arguments(context, builder, signature, args)
        fn = _tile_function(builder.module, R, V, context.get_value_type(types.intp), vnni)
        builder.call(fn, operands)
        return context.get_dummy_value()

    return sig, codegen


def _tile_function(module, R: int, V: int, intp, vnni: bool):
    """The tile as a function of its own (noinline, as `refpose.ops.simd._tile_function`).
    Arguments: K, a, a0, lda, b, b0, ldb, c, c0, ldc, bias, bias0."""
    name = f"refpose_qtile_{R}x{V}_{'vnni' if vnni else 'wd'}{8 * VECTOR_BYTES}"
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    elem = i8 if vnni else i16
    ep = elem.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [intp, ep, intp, intp, ep, intp, intp, i32.as_pointer(), intp, intp,
                                           i32.as_pointer(), intp])
    fn = cgutils.get_or_insert_function(module, fnty, name)
    if not fn.is_declaration:
        return fn
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    K_, pa, a_base, lda_, pb, b_base, ldb_, pc, c_base, ldc_, pbias, bias_base = fn.args
    L = LANES
    group = 4 if vnni else 2
    vt = ir.VectorType(i32, L)                       # the accumulators
    wide = ir.VectorType(elem, L * group)            # a vector of B, and the broadcast of A, as elements
    if vnni:
        dot = cgutils.get_or_insert_function(module, ir.FunctionType(vt, [vt, vt, vt]),
                                             f"llvm.x86.avx512.vpdpbusd.{32 * L}")
    else:
        intrinsic_name = "llvm.x86.avx2.pmadd.wd" if L == 8 else "llvm.x86.avx512.pmaddw.d.512"
        madd = cgutils.get_or_insert_function(module, ir.FunctionType(vt, [wide, wide]), intrinsic_name)

    def at(base, offset):
        return builder.gep(base, [offset])

    acc = [[cgutils.alloca_once_value(builder, ir.Constant(vt, None)) for _ in range(V)] for _ in range(R)]
    zero32 = ir.Constant(ir.VectorType(i32, L), None)        # all lanes from lane 0
    with cgutils.for_range(builder, K_) as loop:
        g = loop.index
        b_row = builder.add(b_base, builder.mul(g, ldb_))
        bv = [builder.load(builder.bitcast(at(pb, builder.add(b_row, ir.Constant(intp, v * L * group))),
                                           wide.as_pointer()), align=1) for v in range(V)]
        for r in range(R):
            off = builder.add(builder.add(a_base, builder.mul(ir.Constant(intp, r), lda_)),
                              builder.mul(g, ir.Constant(intp, group)))
            lane = builder.load(builder.bitcast(at(pa, off), i32.as_pointer()), align=1)   # GROUP elements of A
            av = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, ir.Undefined), lane,
                                                               ir.Constant(i32, 0)),
                                        ir.Constant(vt, ir.Undefined), zero32)
            for v in range(V):
                old = builder.load(acc[r][v])
                if vnni:
                    new = builder.call(dot, [old, av, builder.bitcast(bv[v], vt)])
                else:
                    new = builder.add(old, builder.call(madd, [builder.bitcast(av, wide), bv[v]]))
                builder.store(new, acc[r][v])
    for v in range(V):
        bias_v = builder.load(builder.bitcast(at(pbias, builder.add(bias_base, ir.Constant(intp, v * L))),
                                              vt.as_pointer()), align=4)
        for r in range(R):
            row = builder.add(c_base, builder.mul(ir.Constant(intp, r), ldc_))
            dst = builder.bitcast(at(pc, builder.add(row, ir.Constant(intp, v * L))), vt.as_pointer())
            builder.store(builder.add(bias_v, builder.load(acc[r][v])), dst, align=4)
    builder.ret_void()
    return fn
