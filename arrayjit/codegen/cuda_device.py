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


#: The sm_90a pieces of the wgmma kernel (`arrayjit.codegen.cuda_wgmma`): mbarriers (init, arrive,
#: arrive with expected bytes, a wait on a phase's parity that traps after 4 s rather than hang on
#: a deadlock), TMA tile copies into shared memory completing on an mbarrier (the tensor map in
#: global memory, fenced once per thread before its first use, as the CUDA programming guide asks
#: of maps written by a host copy), warpgroup register reallocation, and wgmma's fence, commit
#: and wait. `ocannl_fence_operands` keeps the compiler from moving accumulator registers across
#: the asynchronous products (as CUTLASS's warpgroup_fence_operand).
WGMMA_HELPERS = r"""
__device__ __forceinline__ void ocannl_mbarrier_init(unsigned long long *bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n"
               :: "r"(ocannl_shared_address(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void ocannl_fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void ocannl_mbarrier_arrive(unsigned long long *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n"
               :: "r"(ocannl_shared_address(bar)) : "memory");
}
__device__ __forceinline__ void ocannl_mbarrier_expect_bytes(unsigned long long *bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
               :: "r"(ocannl_shared_address(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool ocannl_mbarrier_try_wait(unsigned bar, unsigned parity) {
  unsigned done;
  asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
               "selp.u32 %0, 1, 0, p;\n}\n"
               : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  return done != 0;
}
__device__ __forceinline__ unsigned long long ocannl_globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
__device__ __forceinline__ void ocannl_mbarrier_wait(unsigned long long *bar, unsigned parity) {
  const unsigned address = ocannl_shared_address(bar);
  if (ocannl_mbarrier_try_wait(address, parity)) return;
  const unsigned long long start = ocannl_globaltimer();
  while (!ocannl_mbarrier_try_wait(address, parity))
    if (ocannl_globaltimer() - start > 4000000000ull) __trap();
}
__device__ __forceinline__ void ocannl_tensormap_acquire(const void *map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.sys [%0], 128;\n" :: "l"(map) : "memory");
}
__device__ __forceinline__ void ocannl_tma_load_2d(void *dst, const void *map, int c0, int c1,
                                                   unsigned long long *bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4}], [%2];\n"
               :: "r"(ocannl_shared_address(dst)), "l"(map), "r"(ocannl_shared_address(bar)),
                  "r"(c0), "r"(c1) : "memory");
}
__device__ __forceinline__ void ocannl_tma_load_3d(void *dst, const void *map, int c0, int c1,
                                                   int c2, unsigned long long *bar) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4, %5}], [%2];\n"
               :: "r"(ocannl_shared_address(dst)), "l"(map), "r"(ocannl_shared_address(bar)),
                  "r"(c0), "r"(c1), "r"(c2) : "memory");
}
__device__ __forceinline__ void ocannl_tma_load_4d(void *dst, const void *map, int c0, int c1,
                                                   int c2, int c3, unsigned long long *bar) {
  asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4, %5, %6}], [%2];\n"
               :: "r"(ocannl_shared_address(dst)), "l"(map), "r"(ocannl_shared_address(bar)),
                  "r"(c0), "r"(c1), "r"(c2), "r"(c3) : "memory");
}
__device__ __forceinline__ void ocannl_tma_load_5d(void *dst, const void *map, int c0, int c1,
                                                   int c2, int c3, int c4,
                                                   unsigned long long *bar) {
  asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4, %5, %6, %7}], [%2];\n"
               :: "r"(ocannl_shared_address(dst)), "l"(map), "r"(ocannl_shared_address(bar)),
                  "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4) : "memory");
}
template <int REGISTERS> __device__ __forceinline__ void ocannl_setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(REGISTERS));
}
template <int REGISTERS> __device__ __forceinline__ void ocannl_setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(REGISTERS));
}
__device__ __forceinline__ void ocannl_wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ocannl_wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void ocannl_wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
template <int COUNT> __device__ __forceinline__ void ocannl_fence_operands(float *d) {
  #pragma unroll
  for (int i = 0; i < COUNT; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
"""

#: wgmma's element type names and the k of one instruction, per tensor-core kind.
WGMMA_KINDS = {"tf32": ("tf32", 8), "f16": ("f16", 16), "bf16": ("bf16", 16)}


def wgmma_function(kind: str, n: int) -> str:
    """`ocannl_wgmma_<kind>_n<n>(d, a, desc)`: d (n / 2 floats) += A (4 registers, the warpgroup's
    64 x k fragment) * B (n x k, K-major, described by `desc`), one `wgmma.mma_async`."""
    ptx_type, k = WGMMA_KINDS[kind]
    count = n // 2
    d_list = ", ".join(f"%{i}" for i in range(count))
    a_list = ", ".join(f"%{count + i}" for i in range(4))
    desc = f"%{count + 4}"
    immediates = "1, 1, 1" if kind == "tf32" else "1, 1, 1, 0"
    outputs = ", ".join(f'"+f"(d[{i}])' for i in range(count))
    return (
        f"__device__ __forceinline__ void ocannl_wgmma_{kind}_n{n}(float *d, const unsigned *a,"
        " unsigned long long desc) {\n"
        f'  asm volatile("wgmma.mma_async.sync.aligned.m64n{n}k{k}.f32.{ptx_type}.{ptx_type} '
        f'{{{d_list}}}, {{{a_list}}}, {desc}, {immediates};\\n"\n'
        f"               : {outputs}\n"
        '               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));\n'
        "}\n"
    )
