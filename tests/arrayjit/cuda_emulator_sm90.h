// The sm_90 pieces of the kernel emulator (included by cuda_emulator.h): shared-memory addresses,
// mbarriers, TMA tile copies and warpgroup MMA, per the PTX ISA.
//
// Shared memory is one 1024-byte aligned window; a kernel's dynamic shared memory starts 528 bytes
// into it (as a real base need not be 1024-byte aligned, a kernel must align its swizzled tiles
// itself), and shared addresses are offsets into the window (the 128-byte swizzle XORs address
// bits 4-6 with bits 7-9, so it depends on them).
//
// mbarrier: an expected arrival count, pending arrivals and a transaction count (bytes expected
// minus bytes landed); a phase completes when both reach zero. A TMA copy lands either when it is
// issued or, drawn at random, only once the phase has all its arrivals and a thread waits on it:
// a stage overwritten before the consumers released it, or read before it was full, then shows.
//
// wgmma: the product is computed from shared memory both when issued and at the wait_group that
// retires it; if the two differ (the B tile changed while the product was in flight) the run
// fails; the accumulators change only at that wait. A's fragments travel through the warp (a
// thread's D rows are rows of its own warp's A fragment), B is read through the descriptor
// (K-major, 128-byte swizzle: row n of the tile at start + (n / 8) * SBO + (n % 8) * 128, then
// the swizzle), TF32 operands lose their low 13 bits as the ISA says.
#pragma once

#include <map>

constexpr size_t EMU_SHARED_BYTES = 232448;
constexpr size_t EMU_DYNAMIC_OFFSET = 528;
alignas(1024) inline unsigned char emu_shared_window[EMU_SHARED_BYTES + 2048];

namespace emu {

// An error found outside a fiber (the scheduler landing copies): reported, no jump.
inline void report(const char *message) {
  if (!error[0]) std::snprintf(error, sizeof error, "%s (block %u,%u,%u)", message, blockIdx.x,
                               blockIdx.y, blockIdx.z);
}

inline unsigned shared_offset(const void *p, bool in_fiber = true) {
  auto at = static_cast<const unsigned char *>(p);
  if (at < emu_shared_window || at >= emu_shared_window + sizeof emu_shared_window) {
    if (in_fiber) fail("a shared-memory address outside shared memory");
    report("a shared-memory address outside shared memory");
    return 0;
  }
  return unsigned(at - emu_shared_window);
}

inline size_t swizzle128(size_t address) { return address ^ (((address >> 7) & 7) << 4); }

struct TensorMap {  // the emulated CUtensorMap (cuda_emulator.py packs it)
  uint64_t address;
  uint32_t rank, elemsize, swizzle, pad;
  uint64_t dims[5];
  uint64_t strides[4];  // bytes, of dimensions 1 ...
  uint32_t box[5];
};
static_assert(sizeof(TensorMap) <= 128, "the tensor map fits in its 128-byte buffer");

struct TileCopy {
  unsigned dst;  // shared offset
  std::vector<unsigned char> data;
  bool swizzle;
};

struct Barrier {
  unsigned expected = 0, pending = 0;
  long tx = 0;
  unsigned phase = 0;  // completed phases
  std::vector<TileCopy> late;
};

inline std::map<const void *, Barrier> barriers;

inline void land(Barrier &b, const TileCopy &copy) {
  for (size_t i = 0; i < copy.data.size(); ++i) {
    size_t at = copy.dst + i;
    emu_shared_window[copy.swizzle ? swizzle128(at) : at] = copy.data[i];
  }
  b.tx -= long(copy.data.size());
}

inline void complete(Barrier &b) {
  if (b.pending == 0 && b.tx == 0) {
    b.phase += 1;
    b.pending = b.expected;
  }
}

inline Barrier &barrier(const void *bar) {
  auto found = barriers.find(bar);
  if (found == barriers.end()) fail("an mbarrier used before mbarrier.init");
  return found->second;
}

// One issued wgmma of a thread: its D fragment, its two A rows, the descriptor.
struct Wgmma {
  float *d;
  const unsigned *a_registers;  // must hold `a_bits` until the wgmma is retired
  unsigned a_bits[4];
  int n, k, kind;  // kind: 0 tf32, 1 f16, 2 bf16
  float a[2][16];
  uint64_t desc;
  std::vector<float> issued;
};

struct WgmmaThread {
  std::vector<Wgmma> pending;
  std::vector<std::vector<Wgmma>> groups;
};

inline std::vector<WgmmaThread> wgmma_threads;

}  // namespace emu

namespace emu {
inline void sm90_reset(unsigned threads) {
  barriers.clear();
  wgmma_threads.assign(threads, WgmmaThread{});
}

inline bool mbarrier_ready(void *bar, unsigned parity) {
  auto found = barriers.find(bar);
  if (found == barriers.end()) return false;
  Barrier &b = found->second;
  if (b.pending == 0 && !b.late.empty()) {
    for (const auto &copy : b.late) land(b, copy);
    b.late.clear();
    complete(b);
  }
  return (b.phase & 1) != parity;
}
}  // namespace emu

// ---- mbarriers -------------------------------------------------------------------------------

inline void emu_mbarrier_init(void *bar, unsigned count) {
  emu::shared_offset(bar);
  if (reinterpret_cast<uintptr_t>(bar) % 8) emu::fail("misaligned mbarrier");
  emu::Barrier b;
  b.expected = b.pending = count;
  emu::barriers[bar] = b;
}

inline void emu_mbarrier_arrive(void *bar, unsigned bytes) {
  emu::Barrier &b = emu::barrier(bar);
  if (b.pending == 0) emu::fail("an mbarrier arrival beyond its expected count");
  b.tx += bytes;
  b.pending -= 1;
  emu::complete(b);
  // Others may act on a release before this thread goes on (a premature release shows).
  if (bytes == 0) emu::yield(emu::RUNNABLE);
}

inline void emu_mbarrier_wait(void *bar, unsigned parity) {
  emu::barrier(bar);
  auto &f = emu::fibers[emu::current];
  while (!emu::mbarrier_ready(bar, parity)) {
    f.wait_bar = bar;
    f.wait_parity = parity;
    emu::yield(emu::AT_MBARRIER);
  }
}

// ---- TMA -------------------------------------------------------------------------------------

inline void emu_tma_load(void *dst, const void *map_bytes, const int *coords, unsigned rank,
                         void *bar) {
  emu::TensorMap map;
  std::memcpy(&map, map_bytes, sizeof map);
  if (map.rank != rank) emu::fail("a TMA copy of the wrong dimensionality for its tensor map");
  unsigned offset = emu::shared_offset(dst);
  if (offset % 128) emu::fail("a TMA destination not 128-byte aligned");
  if (map.swizzle && offset % 1024) emu::fail("a swizzled TMA destination not 1024-byte aligned");
  if (map.swizzle && map.box[0] * map.elemsize > 128)
    emu::fail("a swizzled TMA box wider than 128 bytes");
  emu::Barrier &b = emu::barrier(bar);
  size_t count = 1;
  for (unsigned d = 0; d < rank; ++d) count *= map.box[d];
  emu::TileCopy copy{offset, std::vector<unsigned char>(count * map.elemsize, 0),
                     map.swizzle != 0};
  for (size_t e = 0; e < count; ++e) {
    size_t rest = e, address = map.address;
    bool inside = true;
    for (unsigned d = 0; d < rank; ++d) {
      long long c = coords[d] + (long long)(rest % map.box[d]);
      rest /= map.box[d];
      if (c < 0 || c >= (long long)map.dims[d]) inside = false;
      address += size_t(c) * (d ? map.strides[d - 1] : map.elemsize);
    }
    if (inside)
      std::memcpy(&copy.data[e * map.elemsize], reinterpret_cast<const void *>(address),
                  map.elemsize);
  }
  if (offset + copy.data.size() > sizeof emu_shared_window) emu::fail("a TMA copy past shared memory");
  if (emu::order->below(2)) {
    emu::land(b, copy);
    emu::complete(b);
  } else {
    b.late.push_back(std::move(copy));
  }
}

// ---- wgmma -----------------------------------------------------------------------------------

inline float emu_wgmma_value(unsigned bits16or32, int kind) {
  if (kind == 0) return __uint_as_float(bits16or32 & 0xffffe000u);
  return kind == 1 ? emu_half((unsigned short)bits16or32) : emu_bfloat16((unsigned short)bits16or32);
}

// B(k, n) of the descriptor: K-major, 128-byte swizzle.
inline float emu_wgmma_b(uint64_t desc, int k, int n, int kind) {
  size_t start = (desc & 0x3FFF) << 4, sbo = ((desc >> 32) & 0x3FFF) << 4;
  if ((desc >> 62) != 1) emu::fail("a wgmma descriptor without the 128-byte swizzle");
  if ((desc >> 49) & 7) emu::fail("a wgmma descriptor with a base offset");
  size_t size = kind == 0 ? 4 : 2;
  size_t address = emu::swizzle128(start + size_t(n / 8) * sbo + size_t(n % 8) * 128 + k * size);
  if (address + size > sizeof emu_shared_window) emu::fail("a wgmma operand past shared memory");
  unsigned bits = 0;
  std::memcpy(&bits, emu_shared_window + address, size);
  return emu_wgmma_value(bits, kind);
}

inline std::vector<float> emu_wgmma_product(const emu::Wgmma &op) {
  int lane = emu::current % 32;
  std::vector<float> out(op.n / 2);
  for (int q = 0; q < op.n / 2; ++q) {
    int row = (q / 2) % 2, col = (q / 4) * 8 + (lane % 4) * 2 + q % 2;
    float sum = 0;
    for (int k = 0; k < op.k; ++k) sum += op.a[row][k] * emu_wgmma_b(op.desc, k, col, op.kind);
    out[q] = sum;
  }
  return out;
}

// d (n / 2 floats) += A (64 x k, registers) * B (n x k, descriptor), for one thread.
inline void emu_wgmma(float *d, const unsigned *a, unsigned long long desc, int n, int kind) {
  struct Lane {
    unsigned a[4];
    uint64_t desc;
  } mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  mine.desc = desc;
  std::memcpy(emu::warp_slot(emu::current), &mine, sizeof mine);
  emu::warp_barrier();
  int lane = emu::current % 32, base = emu::current - lane;
  Lane lanes[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&lanes[l], emu::warp_slot(base + l), sizeof(Lane));
  emu::warp_barrier();
  for (int l = 0; l < 32; ++l)
    if (lanes[l].desc != desc) emu::fail("wgmma descriptors differ across the warp");
  emu::Wgmma op{d, a, {a[0], a[1], a[2], a[3]}, n, kind == 0 ? 8 : 16, kind, {}, desc, {}};
  // A(row, k), rows g and g + 8 of the warp's 16, in the mma.m16n8k8 / m16n8k16 A layout.
  int group = lane / 4;
  for (int upper = 0; upper < 2; ++upper)
    for (int k = 0; k < op.k; ++k) {
      if (kind == 0) {
        op.a[upper][k] = emu_wgmma_value(lanes[group * 4 + k % 4].a[upper + 2 * (k / 4)], 0);
      } else {
        unsigned reg = lanes[group * 4 + (k % 8) / 2].a[upper + 2 * (k / 8)];
        op.a[upper][k] = emu_wgmma_value(k % 2 ? reg >> 16 : reg & 0xffff, kind);
      }
    }
  op.issued = emu_wgmma_product(op);
  emu::wgmma_threads[emu::current].pending.push_back(std::move(op));
}

inline void emu_wgmma_commit() {
  auto &t = emu::wgmma_threads[emu::current];
  t.groups.push_back(std::move(t.pending));
  t.pending.clear();
}

inline void emu_wgmma_wait(int newest_left) {
  auto &t = emu::wgmma_threads[emu::current];
  while (int(t.groups.size()) > newest_left) {
    for (const auto &op : t.groups.front()) {
      std::vector<float> now = emu_wgmma_product(op);
      if (std::memcmp(now.data(), op.issued.data(), now.size() * sizeof(float)))
        emu::fail("shared memory read by a wgmma changed while it was in flight");
      if (std::memcmp(op.a_registers, op.a_bits, sizeof op.a_bits))
        emu::fail("a wgmma's A registers changed while it was in flight");
      for (int q = 0; q < op.n / 2; ++q) op.d[q] += now[q];
    }
    t.groups.erase(t.groups.begin());
  }
}
