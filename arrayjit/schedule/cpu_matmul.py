"""How a matrix product runs on a CPU: packing, cache blocking and the split over threads.

The product `c[m, n] (+)= sum_k a[m, k] * b[k, n]` is computed as in BLIS / GotoBLAS: a
`kc`-deep slice of `b` (`nc` columns) is packed into panels of NR columns, a `mc` x `kc` block of
`a` into panels of MR rows, and a register-blocked micro-kernel multiplies one MR-row panel by one
NR-column panel into an MR x NR tile of accumulators held in vector registers, then adds the tile
to `c` (or stores it, for the first slice of a product that overwrites). Packing evaluates the
operand expressions once per element, so an operand may be any expression (an inlined virtual
tensor, a transposed or strided read).

The register tile follows the instruction set the compiler targets, which the generated C tests
(`__AVX512F__`, `__AVX__`, else 16-byte vectors): MR x NR is 12 x 32 floats with AVX-512, 6 x 16
with AVX/AVX2, 6 x 8 otherwise (halve NR for doubles). The Python side never assumes one: block
sizes are multiples of every MR (12) and of every NR (`NR_MULTIPLE`).

A product of few rows (`IN_PLACE_MAX_ROWS`: one text of a few tokens through a linear layer)
whose operands are both contiguous along k reads them in place instead: packing would copy the
whole of `b` (a weight) to use each element a few times. Tiles of IN_PLACE_ROWS rows x
IN_PLACE_COLS columns keep one vector of partial sums along k per cell, added up at the end.

Threads split the output into `threads_m` x `threads_n` rectangles; each thread packs what its
rectangle needs into its own buffers (no barrier, no shared writes) and sums over k in the same
order whatever the thread count: results do not depend on the number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from arrayjit.dtypes import DType
from arrayjit.schedule.cpu_target import CpuTarget

#: A multiple of the micro-kernel's rows (MR) on every instruction set.
MR_MULTIPLE = 12
#: Depth of the packed slices: a micro-panel pair (MR + NR rows, KC deep) stays in L1.
KC = 256
#: Cache budgets in bytes: a packed block of `a` stays in L2, a packed slice of `b` in L3.
L2_BYTES = 144 * 1024
L3_BYTES = 4 * 1024 * 1024
#: Elements after each thread's packing region: a panel whose rows are not a whole number of
#: vectors is packed with whole-vector stores, the last of which may write past the region.
PACK_SLACK = 16
#: One packed element costs about this many multiply-adds (a strided load and a store).
PACK_COST = 8
#: Products of at most this many rows, both operands contiguous along k, read them in place
#: (on the development machine's Zen 3: 1.3 to 2x faster than packing at 10 to 16 rows; even
#: at 32).
IN_PLACE_MAX_ROWS = 20
#: The in-place tile (also in the generated C): rows x columns of vectors of partial sums.
IN_PLACE_ROWS, IN_PLACE_COLS = 4, 3


def nr_multiple(dtype: DType) -> int:
    """A multiple of the micro-kernel's columns (NR: two vectors) on every instruction set."""
    return 128 // dtype.itemsize


@dataclass(frozen=True)
class Blocking:
    """The block sizes of one product and its split over threads."""

    mc: int  # rows of `a` packed at once (a multiple of MR_MULTIPLE)
    kc: int  # depth packed at once
    nc: int  # columns of `b` packed at once (a multiple of `nr_multiple`)
    threads_m: int  # row slices, one per thread
    threads_n: int  # column slices
    rows_per_thread: int  # a multiple of MR_MULTIPLE
    cols_per_thread: int  # a multiple of `nr_multiple`
    #: Threads of a loop around the product (a batch of products, each on one thread): each
    #: packs into its own part of the buffers, at its thread number.
    batch_threads: int = 1
    #: Operands read in place, unpacked (few rows, both contiguous along k); the threads split
    #: the columns.
    in_place: bool = False

    @property
    def threads(self) -> int:
        return self.threads_m * self.threads_n

    @property
    def a_pack_size(self) -> int:
        """Elements of the packed-`a` buffer: one mc x kc block per thread."""
        if self.in_place:
            return 0
        return max(self.threads, self.batch_threads) * (self.mc * self.kc + PACK_SLACK)

    @property
    def b_pack_size(self) -> int:
        """Elements of the packed-`b` buffer: one kc x nc slice per thread."""
        if self.in_place:
            return 0
        return max(self.threads, self.batch_threads) * (self.kc * self.nc + PACK_SLACK)

    def __str__(self) -> str:
        split = f"threads={self.threads_m}x{self.threads_n}"
        if self.batch_threads > 1:
            split = f"one thread each, {self.batch_threads} threads over the batch"
        if self.in_place:
            return f"in place, {self.threads} threads over the columns"
        return f"mc={self.mc} kc={self.kc} nc={self.nc} {split}"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def blocking(
    m: int,
    n: int,
    k: int,
    dtype: DType,
    target: CpuTarget,
    batch_threads: int = 1,
    contiguous_k: bool = False,
) -> Blocking:
    """Block sizes for an m x n x k product of `dtype` on `target`; with `batch_threads` > 1,
    for one of a batch of products that a loop around them splits over that many threads;
    `contiguous_k`: both operands are contiguous along k (they may be read in place)."""
    nr = nr_multiple(dtype)
    size = dtype.itemsize
    kc = -(-k // -(-k // KC))  # slices of equal depth, at most KC
    if contiguous_k and m <= IN_PLACE_MAX_ROWS:
        threads = 1 if batch_threads > 1 else _in_place_threads(m, n, k, target)
        return Blocking(0, kc, 0, 1, threads, m, n, batch_threads, in_place=True)
    threads_m, threads_n = (1, 1) if batch_threads > 1 else _split(m, n, k, target, nr)
    rows = _round_up(-(-m // threads_m), MR_MULTIPLE)
    cols = _round_up(-(-n // threads_n), nr)
    mc_max = max(MR_MULTIPLE, L2_BYTES // (kc * size) // MR_MULTIPLE * MR_MULTIPLE)
    nc_max = max(nr, L3_BYTES // (kc * size) // nr * nr)
    # Blocks of equal size (the last one not much smaller than the others).
    mc = _round_up(-(-rows // -(-rows // mc_max)), MR_MULTIPLE)
    nc = _round_up(-(-cols // -(-cols // nc_max)), nr)
    return Blocking(mc, kc, nc, threads_m, threads_n, rows, cols, batch_threads)


def batch_threads(batch: int, m: int, n: int, k: int, target: CpuTarget) -> int:
    """Threads for a loop of `batch` products (m x n x k each) that may run at once: each
    product on one thread when there are enough of them (at least two per thread, so that the
    threads' shares differ by at most a third) and the whole batch is worth threads."""
    if target.threads <= 1 or batch < 2 * target.threads:
        return 1
    return target.threads if batch * m * n * k >= target.parallel_min_work else 1


def _in_place_threads(m: int, n: int, k: int, target: CpuTarget) -> int:
    """Threads for an in-place product: each takes a run of whole tiles' columns."""
    if m * n * k < target.parallel_min_work:
        return 1
    return max(1, min(target.threads, n // IN_PLACE_COLS))


def _split(m: int, n: int, k: int, target: CpuTarget, nr: int) -> tuple[int, int]:
    """The thread grid (row slices, column slices) that minimizes the largest thread's work:
    its multiply-adds, padded to whole micro-tiles, plus what it packs."""
    threads = target.threads if m * n * k >= target.parallel_min_work else 1

    def work(threads_m: int, threads_n: int) -> float:
        rows = _round_up(-(-m // threads_m), MR_MULTIPLE)
        cols = _round_up(-(-n // threads_n), nr)
        return rows * cols * k + PACK_COST * k * (rows + cols)

    grids = [(t, threads // t) for t in range(1, threads + 1) if threads % t == 0]
    return min(grids, key=lambda grid: (work(*grid), grid))


def worth_packing(m: int, n: int, k: int, target: CpuTarget) -> bool:
    """Whether a product is large enough for packing to pay."""
    return m * n * k >= target.matmul_min_volume
