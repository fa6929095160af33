"""Counter-based random numbers: Threefry-4x32 (Random123), in generated C/CUDA and in numpy.

Threefry-4x32-20 is the counter-based generator of Salmon, Moraes, Dror & Shaw, "Parallel random
numbers: as easy as 1, 2, 3" (SC 2011), as distributed in Random123 and used by OCANNL. It maps a
128-bit key and a 128-bit counter to 128 random bits with no state, so every element of a tensor
can draw its own number independently, in any order, on any device.

`C_SOURCE` holds portable C99 that also compiles as CUDA device code. The caller includes
<stdint.h> and <math.h> and defines the qualifier macro first::

    #define OCANNL_FN static inline                 /* C */
    #define OCANNL_FN __device__ __forceinline__    /* CUDA */

It defines

    typedef struct { uint32_t v[4]; } ocannl_u32x4;
    OCANNL_FN ocannl_u32x4 ocannl_threefry4x32(ocannl_u32x4 key, ocannl_u32x4 ctr);
    OCANNL_FN uint64_t ocannl_rng_u64(double x);
    OCANNL_FN float ocannl_uniform_float(float seed, float counter);
    OCANNL_FN double ocannl_uniform_double(double seed, double counter);

The uniform functions read `seed` and `counter` as non-negative integers carried in floating point
(`ocannl_rng_u64`: truncation toward zero; negative numbers and NaN read as 0, values of 2^64 or
more as 2^64 - 1). Both the key and the counter are `{low 32 bits, high 32 bits, 0, 0}` of those
integers (a float carries integers exactly up to 2^24, a double up to 2^53; larger floats still
name a definite integer). The float result is `(w0 >> 8) * 2^-24`, the double result
`((w0 << 21) | (w1 >> 11)) * 2^-53` with `w0, w1` the first two output words: both lie in [0, 1)
and are computed exactly, so `uniform_reference` reproduces them bit for bit.
"""

from __future__ import annotations

import numpy as np

PARITY = 0x1BD11BDA
"""Key-schedule parity constant of Threefry (Random123's SKEIN_KS_PARITY32)."""

ROTATIONS: tuple[tuple[int, int], ...] = (
    (10, 26),
    (11, 21),
    (13, 27),
    (23, 5),
    (6, 20),
    (17, 11),
    (25, 10),
    (18, 20),
)
"""Random123's R_32x4_{r}_{0,1} rotation constants; round r uses ROTATIONS[r % 8]."""

ROUNDS = 20

_MASK32 = 0xFFFFFFFF


def _mix_steps(r: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The two (add-into, rotated-word, rotation) MIX steps of round r: even rounds pair
    words (0,1),(2,3), odd rounds (0,3),(2,1)."""
    ra, rb = ROTATIONS[r % 8]
    if r % 2 == 0:
        return (0, 1, ra), (2, 3, rb)
    return (0, 3, ra), (2, 1, rb)


def _c_source(rounds: int = ROUNDS) -> str:
    lines = [
        "/* Threefry-4x32 (Random123; Salmon et al., SC 2011), fully unrolled. */",
        "typedef struct { uint32_t v[4]; } ocannl_u32x4;",
        "",
        "OCANNL_FN ocannl_u32x4 ocannl_threefry4x32(ocannl_u32x4 key, ocannl_u32x4 ctr) {",
        "  uint32_t k0 = key.v[0], k1 = key.v[1], k2 = key.v[2], k3 = key.v[3];",
        f"  uint32_t k4 = 0x{PARITY:08X}u ^ k0 ^ k1 ^ k2 ^ k3;",
        "  uint32_t x0 = ctr.v[0] + k0, x1 = ctr.v[1] + k1;",
        "  uint32_t x2 = ctr.v[2] + k2, x3 = ctr.v[3] + k3;",
    ]
    for r in range(rounds):
        for a, b, rot in _mix_steps(r):
            lines.append(
                f"  x{a} += x{b}; x{b} = (x{b} << {rot}) | (x{b} >> {32 - rot}); x{b} ^= x{a};"
            )
        if r % 4 == 3:
            s = (r + 1) // 4
            ks = [f"k{(s + i) % 5}" for i in range(4)]
            lines.append(
                f"  x0 += {ks[0]}; x1 += {ks[1]}; x2 += {ks[2]}; x3 += {ks[3]} + {s}u;"
                f"  /* key injection {s} */"
            )
    lines += [
        "  ocannl_u32x4 out;",
        "  out.v[0] = x0; out.v[1] = x1; out.v[2] = x2; out.v[3] = x3;",
        "  return out;",
        "}",
        "",
        "/* A non-negative integer carried in a float: truncated; negative and NaN give 0,",
        "   2^64 and above give 2^64 - 1 (avoids C's undefined out-of-range conversion). */",
        "OCANNL_FN uint64_t ocannl_rng_u64(double x) {",
        "  if (!(x > 0.0)) return 0;",
        "  if (x >= 18446744073709551616.0) return ~(uint64_t)0;",
        "  return (uint64_t)x;",
        "}",
        "",
        "OCANNL_FN ocannl_u32x4 ocannl_rng_words(double seed, double counter) {",
        "  uint64_t s = ocannl_rng_u64(seed), c = ocannl_rng_u64(counter);",
        "  ocannl_u32x4 key, ctr;",
        "  key.v[0] = (uint32_t)s; key.v[1] = (uint32_t)(s >> 32); key.v[2] = 0; key.v[3] = 0;",
        "  ctr.v[0] = (uint32_t)c; ctr.v[1] = (uint32_t)(c >> 32); ctr.v[2] = 0; ctr.v[3] = 0;",
        "  return ocannl_threefry4x32(key, ctr);",
        "}",
        "",
        "/* Uniform in [0, 1): the top 24 bits of word 0, times 2^-24 (exact). */",
        "OCANNL_FN float ocannl_uniform_float(float seed, float counter) {",
        "  ocannl_u32x4 w = ocannl_rng_words((double)seed, (double)counter);",
        "  return (float)(w.v[0] >> 8) * 5.9604644775390625e-08f;",
        "}",
        "",
        "/* Uniform in [0, 1): 32 bits of word 0 and the top 21 of word 1, times 2^-53 (exact). */",
        "OCANNL_FN double ocannl_uniform_double(double seed, double counter) {",
        "  ocannl_u32x4 w = ocannl_rng_words(seed, counter);",
        "  uint64_t u = ((uint64_t)w.v[0] << 21) | (uint64_t)(w.v[1] >> 11);",
        "  return (double)u * 1.1102230246251565404236316680908203125e-16;",
        "}",
    ]
    return "\n".join(lines) + "\n"


C_SOURCE: str = _c_source()


def _rotl(x: np.ndarray, n: int) -> np.ndarray:
    return (x << np.uint32(n)) | (x >> np.uint32(32 - n))


def threefry4x32(key, counter, rounds: int = ROUNDS) -> np.ndarray:
    """Random123's threefry4x32_R(rounds, counter, key), vectorized: `key` and `counter` are
    uint32 arrays of shape (..., 4) (broadcast together); returns uint32 of shape (..., 4)."""
    key = np.asarray(key, dtype=np.uint32)
    counter = np.asarray(counter, dtype=np.uint32)
    if key.shape[-1:] != (4,) or counter.shape[-1:] != (4,):
        raise ValueError("key and counter need a last axis of length 4")
    key, counter = np.broadcast_arrays(key, counter)
    with np.errstate(over="ignore"):
        k = [key[..., i].copy() for i in range(4)]
        k.append(np.uint32(PARITY) ^ k[0] ^ k[1] ^ k[2] ^ k[3])
        x = [counter[..., i] + k[i] for i in range(4)]
        for r in range(rounds):
            for a, b, rot in _mix_steps(r):
                x[a] = x[a] + x[b]
                x[b] = _rotl(x[b], rot) ^ x[a]
            if r % 4 == 3:
                s = (r + 1) // 4
                for i in range(4):
                    x[i] = x[i] + k[(s + i) % 5]
                x[3] = x[3] + np.uint32(s)
    return np.stack(x, axis=-1).astype(np.uint32, copy=False)


def _rng_u64(x: np.ndarray) -> np.ndarray:
    """`ocannl_rng_u64` on a float64 array."""
    x = np.asarray(x, dtype=np.float64)
    ok = x > 0.0  # False for NaN too
    big = x >= 18446744073709551616.0
    safe = np.where(ok & ~big, x, 0.0)
    out = safe.astype(np.uint64)
    return np.where(big, np.uint64(0xFFFFFFFFFFFFFFFF), out)


def _words(u: np.ndarray) -> np.ndarray:
    lo = (u & np.uint64(_MASK32)).astype(np.uint32)
    hi = (u >> np.uint64(32)).astype(np.uint32)
    zero = np.zeros_like(lo)
    return np.stack([lo, hi, zero, zero], axis=-1)


def uniform_reference(seed, counter, dtype) -> np.ndarray:
    """Bit-exact numpy twin of `ocannl_uniform_float` (dtype float32) and
    `ocannl_uniform_double` (dtype float64), broadcast over `seed` and `counter`.

    As in C, the arguments are first rounded to `dtype` (the C parameter type)."""
    dt = np.dtype(getattr(dtype, "numpy", dtype))
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"uniform_reference supports float32 and float64, not {dt}")
    seed = np.asarray(seed).astype(dt).astype(np.float64)
    counter = np.asarray(counter).astype(dt).astype(np.float64)
    seed, counter = np.broadcast_arrays(seed, counter)
    w = threefry4x32(_words(_rng_u64(seed)), _words(_rng_u64(counter)))
    if dt == np.dtype(np.float32):
        return (w[..., 0] >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    u = (w[..., 0].astype(np.uint64) << np.uint64(21)) | (w[..., 1] >> np.uint32(11)).astype(
        np.uint64
    )
    return u.astype(np.float64) * 2.0**-53
