"""The C of `Matmul` statements: a call per product, and once per translation unit and dtype the
function it calls, `ocannl_matmul_<type>`: per thread, loops over packed slices and blocks, the
packing of both operands, and the register-blocked micro-kernel (the algorithm is described in
`arrayjit.schedule.cpu_matmul`).

The micro-kernel is written with GCC/Clang vector extensions; the register tile (MR x NR) and
the vector type are chosen by the preprocessor from the instruction set the compiler targets, so
the same source is right on every machine. Operands are read through strides, so transposed,
strided and batched operands need no copy beyond the packing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrayjit import loop_ir as ir
from arrayjit.dtypes import DType
from arrayjit.indexing import Iterator, affine, as_affine, row_major_offset
from arrayjit.schedule.cpu_matmul import IN_PLACE_COLS, IN_PLACE_ROWS, PACK_SLACK

if TYPE_CHECKING:
    from arrayjit.codegen.c_syntax import CSyntax

#: (preprocessor test, vector bytes, MR): AVX-512 has 32 vector registers, the others 16. The
#: micro-kernel keeps MR x 2 vectors of accumulators, two vectors of `b` and one broadcast `a`.
ISA_TILES = (("defined(__AVX512F__)", 64, 12), ("defined(__AVX__)", 32, 6), (None, 16, 6))


def matmul_call(syntax: CSyntax, node: ir.Matmul) -> str:
    """The call computing `node` (its operands are reads of buffers, see `matmul_blocking`)."""
    m_extent, n_extent, k_extent = node.extents
    b = node.blocking
    args = [str(m_extent), str(n_extent), str(k_extent)]
    args += _strided(syntax, node.a, (node.m, node.k))
    args += _strided(syntax, node.b, (node.k, node.n))
    args += _strided(syntax, ir.Get(node.tnode, node.index), (node.m, node.n))
    a_pack, b_pack = syntax.buffer(node.a_pack), syntax.buffer(node.b_pack)
    if b.batch_threads > 1:
        # One product per thread of the loop around: each packs into its own part.
        a_pack += f" + OCANNL_THREAD_NUM * (int64_t){b.mc * b.kc + PACK_SLACK}"
        b_pack += f" + OCANNL_THREAD_NUM * (int64_t){b.kc * b.nc + PACK_SLACK}"
    args += [
        "1" if node.accumulate else "0",
        "1" if b.in_place else "0",
        a_pack,
        b_pack,
        *map(str, (b.mc, b.kc, b.nc, b.threads, b.threads_n)),
        *map(str, (b.rows_per_thread, b.cols_per_thread)),
    ]
    return f"ocannl_matmul_{node.tnode.dtype.c_name}({', '.join(args)});"


def _strided(syntax: CSyntax, read: ir.Expr, iterators: tuple[Iterator, Iterator]) -> list[str]:
    """The address `read` has when `iterators` are 0, and their strides."""
    if not isinstance(read, ir.Get):
        raise TypeError(f"a matmul operand must read a buffer, got {ir.expr_string(read)}")
    terms, offset = as_affine(row_major_offset(read.tnode.dims, read.index))
    stride = {it: c for c, it in terms}
    rest = affine(*((c, it) for c, it in terms if it not in iterators), offset=offset)
    base = f"{syntax.buffer(read.tnode)} + {syntax.index_expr(rest, wide=True)}"
    return [base, *(str(stride.get(it, 0)) for it in iterators)]


def matmul_functions(dtypes: set[DType]) -> str:
    """`ocannl_matmul_<type>` for each of `dtypes`."""
    if not dtypes:
        return ""
    return _PRELUDE + "".join(_function(d) for d in sorted(dtypes, key=lambda d: d.name))


def _function(dtype: DType) -> str:
    t = dtype.c_name
    isa = []
    for n_isa, (test, vector_bytes, mr) in enumerate(ISA_TILES):
        keyword = "#if" if n_isa == 0 else "#elif" if test else "#else"
        lanes = vector_bytes // dtype.itemsize
        isa += [
            f"{keyword} {test}" if test else keyword,
            f"enum {{ OCANNL_MR_{t} = {mr}, OCANNL_NR_{t} = {2 * lanes}, "
            f"OCANNL_LANES_{t} = {lanes} }};",
            f"typedef {t} ocannl_vec_{t} __attribute__((vector_size({vector_bytes}), "
            f"aligned({dtype.itemsize}), may_alias));",
            "#ifdef OCANNL_SHUFFLE",
            _transpose(t, lanes),
            _lane_sums(t, lanes),
            "#endif",
        ]
    isa.append("#endif")
    # The tile's size, then a switch case per row count of a tile (the last may be short).
    cases = "\n".join(
        f"        case {r}: ocannl_in_place_tile_$T({r}, $COLS, K, ai, a_m, bj, b_n, cij, c_m, "
        "c_n, accumulate, pf); break;"
        for r in range(IN_PLACE_ROWS, 0, -1)
    )
    text = _TEMPLATE.replace("$ISA", "\n".join(isa)).replace("$IN_PLACE", _IN_PLACE)
    text = text.replace("$CASES", cases).replace("$ROWS", str(IN_PLACE_ROWS))
    text = text.replace("$COLS", str(IN_PLACE_COLS)).replace("$T", t)
    return text.replace("$SLACK", str(PACK_SLACK))


def _transpose(t: str, lanes: int) -> str:
    """`ocannl_transpose_<t>(v)`: the `lanes` x `lanes` block held in `v[0..lanes)` transposed
    in registers. Stage s swaps the off-diagonal s x s blocks of every 2s x 2s block."""
    lines = [f"static inline void ocannl_transpose_{t}(ocannl_vec_{t} *v) {{"]
    s = lanes // 2
    while s >= 1:
        for i in range(lanes):
            if i & s:
                continue
            low = [j if j & s == 0 else lanes + j - s for j in range(lanes)]
            high = [j + s if j & s == 0 else lanes + j for j in range(lanes)]
            lines += [
                "  {",
                f"    const ocannl_vec_{t} a = v[{i}], b = v[{i + s}];",
                f"    v[{i}] = OCANNL_SHUFFLE(a, b, {', '.join(map(str, low))});",
                f"    v[{i + s}] = OCANNL_SHUFFLE(a, b, {', '.join(map(str, high))});",
                "  }",
            ]
        s //= 2
    return "\n".join([*lines, "}"])


def _lane_sums(t: str, lanes: int) -> str:
    """`ocannl_lane_sums_<t>(v, out)`: out[i] = the sum of v[i]'s lanes, for v[0..lanes). Each
    level adds the halves of two vectors' partial sums into one vector: lanes - 1 steps of two
    shuffles and an addition instead of lanes - 1 scalar additions per vector."""
    lines = [
        "static inline __attribute__((always_inline)) void "
        f"ocannl_lane_sums_{t}(ocannl_vec_{t} *v, {t} *out) {{"
    ]
    count, size = lanes, lanes  # vectors at this level, lanes of each one's partial sums
    while count > 1:
        half = size // 2
        per = lanes // size  # partial sums each input vector holds
        low, high = [], []
        for i in range(lanes):
            segment, offset = divmod(i, half)
            base = 0 if segment < per else lanes
            start = (segment % per) * size + offset
            low.append(base + start)
            high.append(base + start + half)
        for j in range(count // 2):
            lines.append(
                f"  v[{j}] = OCANNL_SHUFFLE(v[{2 * j}], v[{2 * j + 1}], {', '.join(map(str, low))})"
                f" + OCANNL_SHUFFLE(v[{2 * j}], v[{2 * j + 1}], {', '.join(map(str, high))});"
            )
        count, size = count // 2, half
    lines.append(f"  *(ocannl_vec_{t} *)out = v[0];")
    return "\n".join([*lines, "}"])


_PRELUDE = """
#ifdef _OPENMP
#include <omp.h>
#define OCANNL_THREAD_NUM omp_get_thread_num()
#else
#define OCANNL_THREAD_NUM 0
#endif
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define OCANNL_SHUFFLE __builtin_shufflevector
#endif
"""

_IN_PLACE = r"""
/* A tile of R rows x C columns of c (R, C <= the tile's size) from operands contiguous along k:
   one vector of partial sums per cell, along k, added up (halves onto halves) at the end, then
   the last K % LANES terms. `next` (or 0): the columns of b the following tile reads, fetched
   meanwhile (a weight streams from memory, in runs too short for the hardware to foresee). */
static inline __attribute__((always_inline)) void ocannl_in_place_tile_$T(
    const int R, const int C, int K, const $T *restrict a, int64_t a_m, const $T *restrict b,
    int64_t b_n, $T *restrict c, int64_t c_m, int64_t c_n, int accumulate, const $T *next) {
  enum { LANES_ = OCANNL_LANES_$T };
  typedef ocannl_vec_$T vec_;
  vec_ acc[$ROWS][$COLS];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = (vec_){0};
  int k = 0;
  for (; k + LANES_ <= K; k += LANES_) {
    vec_ bv[$COLS];
    for (int j = 0; j < C; ++j) bv[j] = *(const vec_ *)(b + j * b_n + k);
    if (next)
      for (int j = 0; j < C; ++j) __builtin_prefetch(next + j * b_n + k);
    for (int r = 0; r < R; ++r) {
      const vec_ av = *(const vec_ *)(a + r * a_m + k);
      for (int j = 0; j < C; ++j) acc[r][j] += av * bv[j];
    }
  }
  $T sums[$ROWS * $COLS + LANES_];
#ifdef OCANNL_SHUFFLE
  /* LANES cells at a time (the last group padded with zeros). */
  for (int g = 0; g < R * C; g += LANES_) {
    vec_ v[LANES_];
#pragma GCC unroll 16
    for (int i = 0; i < LANES_; ++i) v[i] = g + i < R * C ? acc[(g + i) / C][(g + i) % C] : (vec_){0};
    ocannl_lane_sums_$T(v, sums + g);
  }
#else
  for (int cell = 0; cell < R * C; ++cell) {
    $T lane[LANES_];
    *(vec_ *)lane = acc[cell / C][cell % C];
    for (int h = LANES_ / 2; h >= 1; h /= 2)
      for (int l = 0; l < h; ++l) lane[l] += lane[l + h];
    sums[cell] = lane[0];
  }
#endif
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) {
      $T sum = sums[r * C + j];
      for (int i = k; i < K; ++i) sum += a[r * a_m + i] * b[j * b_n + i];
      $T *cell = c + r * c_m + j * c_n;
      *cell = accumulate ? *cell + sum : sum;
    }
}

/* Not inlined: the last columns, one at a time. */
__attribute__((noinline)) static void ocannl_in_place_column_$T(
    int R, int K, const $T *restrict a, int64_t a_m, const $T *restrict b, $T *restrict c,
    int64_t c_m, int accumulate) {
  for (int r = 0; r < R; ++r)
    ocannl_in_place_tile_$T(1, 1, K, a + r * a_m, a_m, b, 0, c + r * c_m, c_m, 0, accumulate,
                            0);
}

/* Rows [0, M) and columns [lo, hi) of c (see ocannl_matmul_$T), operands read in place. Each
   cell's sum is computed alike wherever its tile falls: the bits do not depend on the threads. */
static void ocannl_in_place_$T(int M, int lo, int hi, int K, const $T *restrict a, int64_t a_m,
                               const $T *restrict b, int64_t b_n, $T *restrict c, int64_t c_m,
                               int64_t c_n, int accumulate) {
  enum { TR = $ROWS, TC = $COLS };
  for (int j = lo; j < hi; j += TC) {
    const $T *bj = b + j * b_n;
    if (hi - j < TC) {
      for (int col = j; col < hi; ++col)
        ocannl_in_place_column_$T(M, K, a, a_m, b + col * b_n, c + col * c_n, c_m, accumulate);
      break;
    }
    /* The first row tile fetches the next columns; the others find these in cache. */
    const $T *next = j + 2 * TC <= hi ? bj + TC * b_n : 0;
    for (int i = 0; i < M; i += TR) {
      const $T *ai = a + i * a_m;
      $T *cij = c + i * c_m + j * c_n;
      const $T *pf = i == 0 ? next : 0;
      switch (M - i < TR ? M - i : TR) {
$CASES
      }
    }
  }
}
"""

_TEMPLATE = r"""
$ISA

/* The rows [from, from + count) (or columns) of an operand, kc deep from `src`, packed into
   panels of `panel` rows: element (k, r) of a panel at k * panel + r; rows past `count` are 0. */
/* Not inlined: one copy serves both operands (compile time). */
__attribute__((noinline)) static void ocannl_pack_$T($T *restrict dst, const $T *restrict src,
                                                    int64_t along, int64_t depth, int count,
                                                    int kc, int panel) {
  const int lanes = OCANNL_LANES_$T;
  for (int p = 0; p < count; p += panel) {
    $T *restrict d = dst + (int64_t)p * kc;
    const $T *restrict s = src + p * along;
    const int rows = count - p < panel ? count - p : panel;
    int k0 = 0;
#ifdef OCANNL_SHUFFLE
    if (depth == 1) {
      /* Rows contiguous along k: lanes x lanes blocks transposed in registers, row chunks from
         the last (a padded chunk writes past its panel row, into the next one's first chunk,
         written after it; the last one into the slack after the region). */
      for (; k0 + lanes <= kc; k0 += lanes)
        for (int c = (panel - 1) / lanes * lanes; c >= 0; c -= lanes) {
          ocannl_vec_$T v[OCANNL_LANES_$T];
          for (int i = 0; i < lanes; ++i)
            v[i] = c + i < rows ? *(const ocannl_vec_$T *)(s + (c + i) * along + k0)
                                : (ocannl_vec_$T){0};
          ocannl_transpose_$T(v);
          for (int j = 0; j < lanes; ++j) *(ocannl_vec_$T *)(d + (k0 + j) * panel + c) = v[j];
        }
    }
#endif
    if (depth == 1) {
      for (int r = 0; r < rows; ++r)
        for (int k = k0; k < kc; ++k) d[k * panel + r] = s[r * along + k];
    } else if (along == 1 && rows == panel && panel == 2 * lanes) {
      /* A full panel of `b` whose rows are contiguous: two vectors per k. */
      for (int k = 0; k < kc; ++k) {
        const ocannl_vec_$T low = *(const ocannl_vec_$T *)(s + k * depth);
        const ocannl_vec_$T high = *(const ocannl_vec_$T *)(s + k * depth + lanes);
        *(ocannl_vec_$T *)(d + k * panel) = low;
        *(ocannl_vec_$T *)(d + k * panel + lanes) = high;
      }
    } else {
      for (int k = k0; k < kc; ++k)
        for (int r = 0; r < rows; ++r) d[k * panel + r] = s[r * along + k * depth];
    }
    for (int r = rows; r < panel; ++r)
      for (int k = k0; k < kc; ++k) d[k * panel + r] = 0;
  }
}

$IN_PLACE

/* c[m, n] := (accumulate ? c[m, n] : 0) + sum_k a[m, k] * b[k, n] for m < M, n < N, k < K, where
   x[i, j] is x[i * x_i + j * x_j]. Each of the threads_m x threads_n threads (thread t takes
   row slice t / threads_n and column slice t % threads_n) packs its operands into its own part
   of a_pack and b_pack and sums over k in the same order, whatever the thread count. With
   `in_place` (a_k == b_k == 1), thread t takes the t-th of `threads` runs of columns and reads
   the operands where they are. */
static void ocannl_matmul_$T(int M, int N, int K, const $T *restrict a, int64_t a_m,
                             int64_t a_k, const $T *restrict b, int64_t b_k, int64_t b_n,
                             $T *restrict c, int64_t c_m, int64_t c_n, int accumulate,
                             int in_place, $T *restrict a_pack, $T *restrict b_pack, int mc,
                             int kc_max, int nc_max, int threads, int threads_n,
                             int rows_per_thread, int cols_per_thread) {
  enum { MR_ = OCANNL_MR_$T, NR_ = OCANNL_NR_$T, LANES_ = OCANNL_LANES_$T };
  typedef ocannl_vec_$T vec_;
  if (in_place) {
    /* Runs of whole tiles, as equal as they can be. */
    const int tiles = (N + $COLS - 1) / $COLS;
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1 && ocannl_threads_ok)
    for (int t = 0; t < threads; ++t) {
      const int lo = (int)((int64_t)tiles * t / threads) * $COLS;
      const int hi_tile = (int)((int64_t)tiles * (t + 1) / threads) * $COLS;
      ocannl_in_place_$T(M, lo, hi_tile < N ? hi_tile : N, K, a, a_m, b, b_n, c, c_m, c_n,
                         accumulate);
    }
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1 && ocannl_threads_ok)
  for (int t = 0; t < threads; ++t) {
    const int m_lo = t / threads_n * rows_per_thread;
    const int m_hi = m_lo + rows_per_thread < M ? m_lo + rows_per_thread : M;
    const int n_lo = t % threads_n * cols_per_thread;
    const int n_hi = n_lo + cols_per_thread < N ? n_lo + cols_per_thread : N;
    $T *restrict ap = a_pack + (int64_t)t * (mc * kc_max + $SLACK);
    $T *restrict bp = b_pack + (int64_t)t * (kc_max * nc_max + $SLACK);
    for (int jc = n_lo; jc < n_hi; jc += nc_max) {
      const int nc = n_hi - jc < nc_max ? n_hi - jc : nc_max;
      for (int pc = 0; pc < K; pc += kc_max) {
        const int kc = K - pc < kc_max ? K - pc : kc_max;
        const int overwrite = !accumulate && pc == 0;
        ocannl_pack_$T(bp, b + jc * b_n + pc * b_k, b_n, b_k, nc, kc, NR_);
        for (int ic = m_lo; ic < m_hi; ic += mc) {
          const int rows_in_block = m_hi - ic < mc ? m_hi - ic : mc;
          ocannl_pack_$T(ap, a + ic * a_m + pc * a_k, a_m, a_k, rows_in_block, kc, MR_);
          for (int jr = 0; jr < nc; jr += NR_) {
            const int cols = nc - jr < NR_ ? nc - jr : NR_;
            for (int ir = 0; ir < rows_in_block; ir += MR_) {
              const int rows = rows_in_block - ir < MR_ ? rows_in_block - ir : MR_;
              const $T *restrict pa = ap + (int64_t)ir * kc;
              const $T *restrict pb = bp + (int64_t)jr * kc;
              $T *restrict cp = c + (ic + ir) * c_m + (jc + jr) * c_n;
              vec_ acc[MR_][2];
#pragma GCC unroll 12
              for (int r = 0; r < MR_; ++r) {
                acc[r][0] = acc[r][1] = (vec_){0};
                /* The tile of c is read (or written) after the loop: fetch it meanwhile. */
                if (r < rows) __builtin_prefetch(cp + r * c_m, 1);
              }
#pragma GCC unroll 4
              for (int k = 0; k < kc; ++k) {
                const vec_ b0 = *(const vec_ *)(pb + k * NR_);
                const vec_ b1 = *(const vec_ *)(pb + k * NR_ + LANES_);
#pragma GCC unroll 12
                for (int r = 0; r < MR_; ++r) {
                  /* x - 0 is x for every x (-0 included): a plain broadcast. */
                  const vec_ a_r = pa[k * MR_ + r] - (vec_){0};
                  acc[r][0] += a_r * b0;
                  acc[r][1] += a_r * b1;
                }
              }
              if (rows == MR_ && cols == NR_ && c_n == 1) {
#pragma GCC unroll 12
                for (int r = 0; r < MR_; ++r) {
                  vec_ *row = (vec_ *)(cp + r * c_m);
                  if (overwrite) {
                    row[0] = acc[r][0];
                    row[1] = acc[r][1];
                  } else {
                    row[0] += acc[r][0];
                    row[1] += acc[r][1];
                  }
                }
              } else {
                $T tile[MR_ * NR_];
#pragma GCC unroll 12
                for (int r = 0; r < MR_; ++r) {
                  *(vec_ *)(tile + r * NR_) = acc[r][0];
                  *(vec_ *)(tile + r * NR_ + LANES_) = acc[r][1];
                }
                for (int r = 0; r < rows; ++r)
                  for (int col = 0; col < cols; ++col) {
                    $T *cell = cp + r * c_m + col * c_n;
                    *cell = overwrite ? tile[r * NR_ + col] : *cell + tile[r * NR_ + col];
                  }
              }
            }
          }
        }
      }
    }
  }
}
"""
