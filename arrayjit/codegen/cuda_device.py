"""Device-side pieces shared by the CUDA kernel printers: the prelude every source starts with,
vector types for wide loads, the PTX helper functions (asynchronous copies, tensor-core
products) and the record of how a kernel is launched."""

from __future__ import annotations

from dataclasses import dataclass

#: NVRTC has no libc headers: the few names the C templates use.
PRELUDE = """\
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
"""

#: Vector types for 8- and 16-byte loads (the alignment makes them single instructions).
VECTOR_TYPES = """\
struct alignas(16) ocannl_float4 { float x, y, z, w; };
struct alignas(8) ocannl_float2 { float x, y; };
struct alignas(16) ocannl_double2 { double x, y; };
struct alignas(16) ocannl_int4 { int x, y, z, w; };
struct alignas(8) ocannl_int2 { int x, y; };
"""

COMPONENTS = "xyzw"


def letters(n: int) -> str:
    """a, b, ..., z, aa, ab...: for names a kernel declares itself, which never contain digits
    (the printer's names are letters then digits, buffer names end in `_<digits>`)."""
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(97 + r) + out
    return out


#: The dynamic shared memory of a kernel (its size is given at launch), 16-byte aligned by type.
SHARED_DECLARATION = "extern __shared__ ocannl_float4 ocannl_smem[];"

#: Asynchronous global-to-shared copies (cp.async, sm_80+): `BYTES` (4, 8 or 16) from `src` to
#: `dst`, or zeros when `full` is false (`src` must still be a valid address). A group of copies
#: is committed, then waited for while at most N newer groups stay in flight.
ASYNC_COPY_HELPERS = r"""
__device__ __forceinline__ unsigned ocannl_shared_address(const void *p) {
  unsigned address;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(p));
  return address;
}
template <int BYTES>
__device__ __forceinline__ void ocannl_cp_async(void *dst, const void *src, bool full) {
  if (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(ocannl_shared_address(dst)), "l"(src), "r"(full ? 16 : 0) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n"
                 :: "r"(ocannl_shared_address(dst)), "l"(src), "n"(BYTES), "r"(full ? BYTES : 0)
                 : "memory");
}
__device__ __forceinline__ void ocannl_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void ocannl_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
"""

#: Tensor-core products of one warp (mma.sync, sm_80+), fragments as in the PTX ISA's
#: "Matrix Fragments for mma.m16n8k8 / m16n8k16": d (4 floats) += a * b. `ocannl_tf32` rounds
#: a float to TF32 (nearest, ties away); ldmatrix loads four 8x8 16-bit matrices, lane l giving
#: the address of row l % 8 of matrix l / 8.
MMA_HELPERS = r"""
__device__ __forceinline__ unsigned ocannl_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ void ocannl_mma_tf32(float *d, const unsigned *a, const unsigned *b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ocannl_mma_f16(float *d, const unsigned *a, const unsigned *b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ocannl_mma_bf16(float *d, const unsigned *a, const unsigned *b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ocannl_ldmatrix_x4(unsigned *out, const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
               : "r"(ocannl_shared_address(row)));
}
__device__ __forceinline__ void ocannl_ldmatrix_x4_trans(unsigned *out, const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
               : "r"(ocannl_shared_address(row)));
}
"""


def vector_type(c_name: str, width: int) -> str:
    return f"ocannl_{c_name}{width}"


@dataclass(frozen=True)
class Launch:
    """A kernel of the routine and how it is launched (`shared_bytes`: dynamic shared memory)."""

    name: str
    grid: int | tuple[int, int, int]
    block: int
    shared_bytes: int = 0
