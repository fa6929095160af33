// A CPU emulation of the CUDA execution model, for running generated kernels in tests without a
// GPU. Each CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after
// another. A fiber runs until it reaches a block barrier (__syncthreads) or a warp collective
// (shuffle, mma, ldmatrix), then the next runnable fiber runs, in an order drawn from a seed so
// that a missing barrier shows up as a wrong result. A barrier releases once every thread that has
// not exited reached it (as the hardware counts exited threads as arrived); a warp collective
// needs all 32 lanes; a thread waiting on an mbarrier phase runs again once the phase completed
// (cuda_emulator_sm90.h: mbarriers, TMA copies and wgmma). Asynchronous copies (cp.async) land in shared memory only at the matching
// wait, so reading a tile before waiting for it reads stale data, as it may on the device.
//
// The kernel source is compiled inside `namespace dev`, so its own typedefs (int64_t...) do not
// clash with the C++ library's; `__shared__` variables become function statics, shared by the
// fibers of the block being run.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#undef INFINITY
#undef NAN

struct emu_dim3 {
  unsigned x, y, z;
};

emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, AT_MBARRIER, DONE };

struct Copy {
  void *dst;
  const void *src;
  int bytes, src_bytes;
};

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  State state = RUNNABLE;
  std::vector<Copy> pending;               // issued, not yet committed
  std::vector<std::vector<Copy>> groups;  // committed groups, oldest first
  void *wait_bar = nullptr;               // AT_MBARRIER: the mbarrier and the phase parity
  unsigned wait_parity = 0;
  // The barrier or collective the thread waits at: the source line of the call, what else tells
  // it apart (a shuffle's lane mask and width), and how many of its kind the thread has reached,
  // this one included: the threads it waits for must be at the same one.
  int site = 0;
  unsigned detail = 0;
  unsigned long long reached[2] = {0, 0};  // warp collectives, block barriers
};

constexpr size_t STACK_BYTES = 256 * 1024;

inline std::vector<Fiber> fibers;
inline ucontext_t scheduler;
inline int current = 0;
inline void (*body)(void *) = nullptr;
inline void *body_context = nullptr;
// One 16-byte slot per lane and value for warp exchanges (shuffles, mma fragments).
inline std::vector<unsigned char> exchange;
constexpr int SLOT_BYTES = 64;
inline char error[512] = "";

[[noreturn]] inline void fail(const char *message) {
  std::snprintf(error, sizeof error, "%s (block %u,%u,%u thread %d)", message, blockIdx.x,
                blockIdx.y, blockIdx.z, current);
  // Unwind to the scheduler, which reports the error.
  fibers[current].state = DONE;
  setcontext(&scheduler);
  std::abort();
}

inline void yield(State state) {
  fibers[current].state = state;
  swapcontext(&fibers[current].context, &scheduler);
}

inline void trampoline() {
  body(body_context);
  fibers[current].state = DONE;
  setcontext(&scheduler);
}

// Deposit `bytes` of this lane's data, wait for the warp, then read lane `lane`'s deposit.
inline unsigned char *warp_slot(int thread) { return &exchange[size_t(thread) * SLOT_BYTES]; }

// Wait for the warp's other lanes at the collective called from line `site` of the source.
inline void warp_barrier(int site = __builtin_LINE(), unsigned detail = 0) {
  Fiber &f = fibers[current];
  f.site = site;
  f.detail = detail;
  ++f.reached[0];
  yield(AT_WARP_BARRIER);
}

inline void block_barrier(int site) {
  Fiber &f = fibers[current];
  f.site = site;
  f.detail = 0;
  ++f.reached[1];
  yield(AT_BLOCK_BARRIER);
}

// Whether threads `a` and `b` wait at the same barrier or collective (else `error` says where).
inline bool same_instance(unsigned a, unsigned b, int kind, const char *what) {
  const Fiber &x = fibers[a], &y = fibers[b];
  if (x.site == y.site && x.detail == y.detail && x.reached[kind] == y.reached[kind]) return true;
  std::snprintf(error, sizeof error,
                "%s: thread %u waits at line %d (its %llu-th, detail %u), thread %u at line %d"
                " (its %llu-th, detail %u) (block %u,%u,%u)",
                what, a, x.site, x.reached[kind], x.detail, b, y.site, y.reached[kind], y.detail,
                blockIdx.x, blockIdx.y, blockIdx.z);
  return false;
}

// Defined in cuda_emulator_sm90.h: the block's mbarriers, TMA and wgmma state start afresh; whether
// a thread waiting for the phase of `bar` with parity `parity` may go on.
inline void sm90_reset(unsigned threads);
inline bool mbarrier_ready(void *bar, unsigned parity);

// Runs one block; returns false (with `error` set) on a deadlock or a failure.
// A small generator for the order in which runnable threads run (xorshift).
struct Order {
  uint64_t state;
  unsigned below(unsigned n) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return unsigned(state % n);
  }
};

// The order generator of the block being run (intrinsics draw from it too).
inline Order *order = nullptr;

inline bool run_block(unsigned threads, Order &rng) {
  order = &rng;
  sm90_reset(threads);
  fibers.resize(threads);
  exchange.assign(size_t(threads) * SLOT_BYTES, 0);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber &f = fibers[t];
    if (f.stack.empty()) f.stack.resize(STACK_BYTES);
    f.state = RUNNABLE;
    f.pending.clear();
    f.groups.clear();
    f.reached[0] = f.reached[1] = 0;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = nullptr;
    makecontext(&f.context, trampoline, 0);
  }
  std::vector<unsigned> order(threads);
  for (unsigned t = 0; t < threads; ++t) order[t] = t;
  while (true) {
    for (unsigned k = threads; k > 1; --k) std::swap(order[k - 1], order[rng.below(k)]);
    for (unsigned t : order) {
      if (fibers[t].state != RUNNABLE) continue;
      current = int(t);
      threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
      swapcontext(&scheduler, &fibers[t].context);
      if (error[0]) return false;
    }
    unsigned live = 0, at_block = 0;
    for (auto &f : fibers) {
      live += f.state != DONE;
      at_block += f.state == AT_BLOCK_BARRIER;
    }
    if (live == 0) return true;
    bool released = false;
    for (auto &f : fibers)
      if (f.state == AT_MBARRIER && mbarrier_ready(f.wait_bar, f.wait_parity)) {
        f.state = RUNNABLE;
        released = true;
      }
    if (error[0]) return false;
    if (at_block == live) {
      if (live < threads) {
        std::snprintf(error, sizeof error,
                      "a __syncthreads that %u exited threads of the block never reach (block"
                      " %u,%u,%u)",
                      threads - live, blockIdx.x, blockIdx.y, blockIdx.z);
        return false;
      }
      for (unsigned t = 1; t < threads; ++t)
        if (!same_instance(0, t, 1, "threads of a block at different __syncthreads")) return false;
      for (auto &f : fibers)
        if (f.state == AT_BLOCK_BARRIER) f.state = RUNNABLE;
      released = true;
    }
    for (unsigned w = 0; w * 32 < threads; ++w) {
      unsigned waiting = 0, done = 0;
      unsigned lanes = threads - w * 32 < 32 ? threads - w * 32 : 32;
      for (unsigned l = w * 32; l < w * 32 + lanes; ++l) {
        waiting += fibers[l].state == AT_WARP_BARRIER;
        done += fibers[l].state == DONE;
      }
      if (waiting == 32) {
        for (unsigned l = w * 32 + 1; l < w * 32 + 32; ++l)
          if (!same_instance(w * 32, l, 0, "lanes of a warp at different warp collectives"))
            return false;
        for (unsigned l = w * 32; l < w * 32 + 32; ++l) fibers[l].state = RUNNABLE;
        released = true;
      } else if (waiting > 0 && waiting + done == lanes) {
        std::snprintf(error, sizeof error, "a warp collective with exited lanes (warp %u)", w);
        return false;
      }
    }
    bool runnable = false;
    for (auto &f : fibers) runnable |= f.state == RUNNABLE;
    if (!runnable && !released) {
      std::snprintf(error, sizeof error,
                    "deadlock: %u threads live, %u at __syncthreads, the rest at warp collectives"
                    " or mbarrier waits",
                    live, at_block);
      return false;
    }
  }
}

}  // namespace emu

// ---- intrinsics ------------------------------------------------------------------------------

inline void __syncthreads(int site = __builtin_LINE()) { emu::block_barrier(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, int site = __builtin_LINE()) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask");
  emu::warp_barrier(site);
}
inline void __threadfence_block() {}
inline void __threadfence() {}
// Fibers of one launch run one at a time and switch only at barriers: plain code is atomic.
inline int atomicCAS(int *address, int compare, int value) {
  int old = *address;
  if (old == compare) *address = value;
  return old;
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                  int site = __builtin_LINE()) {
  if (mask != 0xffffffffu) emu::fail("shuffle with a partial mask");
  static_assert(sizeof(T) <= 16, "shuffle of a large type");
  std::memcpy(emu::warp_slot(emu::current), &value, sizeof(T));
  emu::warp_barrier(site, unsigned(lane_mask) << 8 | unsigned(width));
  int lane = emu::current % 32, base = emu::current - lane;
  int source = lane ^ lane_mask;
  // Beyond the lane's segment of `width` lanes the hardware returns the lane's own value.
  if (source / width != lane / width) source = lane;
  T out;
  std::memcpy(&out, emu::warp_slot(base + source), sizeof(T));
  emu::warp_barrier();
  return out;
}

template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32,
                   int site = __builtin_LINE()) {
  if (mask != 0xffffffffu) emu::fail("shuffle with a partial mask");
  std::memcpy(emu::warp_slot(emu::current), &value, sizeof(T));
  emu::warp_barrier(site, delta << 8 | unsigned(width));
  int lane = emu::current % 32, base = emu::current - lane;
  int source = lane + int(delta);
  if (source / width != lane / width) source = lane;
  T out;
  std::memcpy(&out, emu::warp_slot(base + source), sizeof(T));
  emu::warp_barrier();
  return out;
}

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline unsigned __float_as_uint(float x) {
  unsigned i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ---- 16-bit element types, converting through float as cuda_fp16.h / cuda_bf16.h do ---------

struct __half {
  unsigned short bits;
  __half() = default;
  __half(float f) {
    _Float16 h = static_cast<_Float16>(f);  // round to nearest even
    std::memcpy(&bits, &h, 2);
  }
  operator float() const {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
};

struct __nv_bfloat16 {
  unsigned short bits;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {
    unsigned u = __float_as_uint(f);
    bits = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0 : (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
  }
  operator float() const { return __uint_as_float(unsigned(bits) << 16); }
};

inline float __half2float(__half h) { return float(h); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// ---- asynchronous copies ---------------------------------------------------------------------

inline void emu_cp_async(void *dst, const void *src, int bytes, int src_bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes)
    emu::fail("misaligned cp.async");
  emu::fibers[emu::current].pending.push_back({dst, src, bytes, src_bytes});
}

inline void emu_cp_async_commit() {
  auto &f = emu::fibers[emu::current];
  f.groups.push_back(std::move(f.pending));
  f.pending.clear();
}

inline void emu_cp_async_wait(int newest_left) {
  auto &f = emu::fibers[emu::current];
  while (int(f.groups.size()) > newest_left) {
    for (const auto &c : f.groups.front()) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<char *>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    f.groups.erase(f.groups.begin());
  }
}

// ---- tensor-core fragments -------------------------------------------------------------------

inline float emu_tf32(unsigned bits) {
  // The tensor cores read the top 19 bits of a tf32 operand.
  return __uint_as_float(bits & 0xffffe000u);
}

inline unsigned emu_cvt_tf32(float x) {
  unsigned bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;  // inf, NaN
  return (bits + 0x1000u) & 0xffffe000u;                  // nearest, ties away from zero
}

inline float emu_half(unsigned short h) {
  int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
  float v;
  if (exponent == 0)
    v = std::ldexp(float(mantissa), -24);
  else if (exponent == 31)
    v = mantissa ? std::numeric_limits<float>::quiet_NaN() : HUGE_VALF;
  else
    v = std::ldexp(float(mantissa | 1024), exponent - 25);
  return sign ? -v : v;
}

inline float emu_bfloat16(unsigned short h) { return __uint_as_float(unsigned(h) << 16); }

// d += a * b for one m16n8k8 (tf32) or m16n8k16 (16-bit, `half_kind` 1: fp16, 2: bf16) product
// of the warp, with the fragment layouts of the PTX ISA's mma.m16n8k8 / m16n8k16 sections.
inline void emu_mma(float *d, const unsigned *a, const unsigned *b, int k_extent, int half_kind) {
  struct Lane {
    unsigned a[4], b[2];
  } mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(emu::warp_slot(emu::current), &mine, sizeof mine);
  emu::warp_barrier();
  int lane = emu::current % 32, base = emu::current - lane;
  Lane lanes[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&lanes[l], emu::warp_slot(base + l), sizeof(Lane));
  auto lane_data = [&](int l) -> const Lane & { return lanes[l]; };
  auto value = [&](unsigned reg, int half) -> float {
    if (half_kind == 0) return emu_tf32(reg);
    unsigned short h = half ? reg >> 16 : reg & 0xffff;
    return half_kind == 1 ? emu_half(h) : emu_bfloat16(h);
  };
  // A(row, k) and B(k, col).
  auto A = [&](int row, int k) -> float {
    int group = row % 8, upper = row / 8;
    if (half_kind == 0) {
      int t = k % 4, hi = k / 4;
      return value(lane_data(group * 4 + t).a[upper + 2 * hi], 0);
    }
    int t = (k % 8) / 2, hi = k / 8;
    return value(lane_data(group * 4 + t).a[upper + 2 * hi], k % 2);
  };
  auto B = [&](int k, int col) -> float {
    if (half_kind == 0) return value(lane_data(col * 4 + k % 4).b[k / 4], 0);
    int t = (k % 8) / 2, hi = k / 8;
    return value(lane_data(col * 4 + t).b[hi], k % 2);
  };
  int group = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    int row = group + 8 * (r / 2), col = 2 * t + r % 2;
    float sum = 0;
    for (int k = 0; k < k_extent; ++k) sum += A(row, k) * B(k, col);
    d[r] += sum;
  }
  emu::warp_barrier();
}

// ldmatrix .x4 (optionally .trans): lane l gives the address of row l % 8 of matrix l / 8; each
// lane receives, per matrix, the 32-bit word at row lane / 4, 16-bit columns 2 (lane % 4) + {0, 1}
// (transposed: the two halves come from rows 2 (lane % 4) + {0, 1}, column lane / 4).
inline void emu_ldmatrix_x4(unsigned *out, const void *row_address, bool transpose) {
  std::memcpy(emu::warp_slot(emu::current), &row_address, sizeof row_address);
  emu::warp_barrier();
  int lane = emu::current % 32, base = emu::current - lane;
  auto row = [&](int matrix, int r) {
    const unsigned short *p;
    std::memcpy(&p, emu::warp_slot(base + matrix * 8 + r), sizeof p);
    return p;
  };
  for (int m = 0; m < 4; ++m) {
    unsigned short lo, hi;
    if (!transpose) {
      lo = row(m, lane / 4)[2 * (lane % 4)];
      hi = row(m, lane / 4)[2 * (lane % 4) + 1];
    } else {
      lo = row(m, 2 * (lane % 4))[lane / 4];
      hi = row(m, 2 * (lane % 4) + 1)[lane / 4];
    }
    out[m] = unsigned(lo) | (unsigned(hi) << 16);
  }
  emu::warp_barrier();
}

// ---- the __restrict__ contract ---------------------------------------------------------------

// A kernel parameter declared `T *__restrict__` promises the compiler that, within one launch, the
// memory it reaches changes only through the thread's own accesses: NVCC may then move a read of it
// across __syncwarp / __syncthreads (and above another lane's store), so threads must not
// communicate through it. The emulator holds such a parameter as `Restrict<T>`, which records
// which thread of the launch read or wrote each element, and fails at an element that one thread
// writes and another reads or writes. (Accesses through a pointer taken from it are not seen.)
namespace emu {

struct Touch {
  unsigned long long first;  // the first thread (block * threads + thread) to reach the element
  bool several = false;      // reached by other threads too
  bool written = false;
};

inline std::unordered_map<const void *, Touch> touched;

inline void touch(const void *at, bool write) {
  unsigned long long who =
      ((unsigned long long)(blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) *
          blockDim.x +
      unsigned(current);
  auto [it, fresh] = touched.try_emplace(at, Touch{who, false, write});
  if (fresh) return;
  Touch &t = it->second;
  bool other = t.several || t.first != who;
  if (other && (write || t.written)) {
    char message[200];
    std::snprintf(message, sizeof message,
                  "threads %llu and %llu of the launch share %p, of a __restrict__ parameter,"
                  " one writing it",
                  t.first, who, at);
    fail(message);
  }
  t.several |= other;
  t.written |= write;
}

template <class T>
struct Element {
  T *at;
  operator T() const {
    touch(at, false);
    return *at;
  }
  const Element &operator=(const T &value) const {
    touch(at, true);
    *at = value;
    return *this;
  }
  const Element &operator=(const Element &other) const { return *this = T(other); }
  T *operator&() const { return at; }
};

template <class T>
struct Restrict {
  T *p;
  Restrict(T *p) : p(p) {}
  Element<T> operator[](long long i) const { return {p + i}; }
  operator T *() const { return p; }
  T *get() const { return p; }
};

}  // namespace emu

// A pointer given to reinterpret_cast: a `Restrict` parameter's own.
template <class T>
T *emu_pointer(const emu::Restrict<T> &r) {
  return r.p;
}
template <class T>
T emu_pointer(T value) {
  return value;
}

// ---- launching -------------------------------------------------------------------------------

// Runs a kernel over a grid; returns an error message, or nullptr.
template <class Kernel>
const char *emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned seed,
                       Kernel kernel) {
  emu::error[0] = 0;
  emu::touched.clear();
  emu::body = [](void *k) { (*static_cast<Kernel *>(k))(); };
  emu::body_context = &kernel;
  gridDim = {gx, gy, gz};
  blockDim = {bx, 1, 1};
  emu::Order rng{0x9e3779b97f4a7c15ull ^ seed};
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        blockIdx = {x, y, z};
        if (!emu::run_block(bx, rng)) return emu::error;
      }
  return nullptr;
}

#include "cuda_emulator_sm90.h"
