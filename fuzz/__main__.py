"""`python -m fuzz --minutes N --seed S`: differential fuzzing of whole programs (C backend
against the numpy reference, values and gradients) and of the spec and DSL parsers. Prints the
counts; writes each failure's reproducer under `--out`; exits 1 if anything failed."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fuzz.driver import fuzz
from fuzz.specs import KNOWN_ISSUES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"),
                        help="folder for the reproducers of failures")  # fmt: skip
    parser.add_argument("--program-share", type=float, default=0.7,
                        help="share of the time spent on programs (the rest: parsers)")  # fmt: skip
    parser.add_argument("--include-known", action="store_true",
                        help="also generate what triggers the open bugs of fuzz.specs.KNOWN_ISSUES")  # fmt: skip
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    own_cache = "ARRAYJIT_CACHE_DIR" not in os.environ
    if own_cache:  # thousands of one-off routines: not in the user's cache
        os.environ["ARRAYJIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="arrayjit-fuzz-")
    print(f"fuzz: seed {seed}, {args.minutes:g} minutes, reproducers in {args.out}/")
    if KNOWN_ISSUES and not args.include_known:
        print(f"fuzz: steering clear of known open bugs: {', '.join(KNOWN_ISSUES)}")
    start = time.monotonic()
    try:
        stats = fuzz(args.minutes, seed, args.out, args.program_share, args.include_known)
    finally:
        if own_cache:
            shutil.rmtree(os.environ["ARRAYJIT_CACHE_DIR"], ignore_errors=True)
    elapsed = time.monotonic() - start
    print(f"fuzz: {stats.programs} programs, {stats.parser_inputs} parser inputs, "
          f"{stats.failure_count} failures in {elapsed / 60:.1f} minutes (seed {seed})")  # fmt: skip
    for key, count in stats.failures.most_common():
        print(f"  {count:5d} x {key}")
    for path in stats.written:
        print(f"  reproducer: {path}")
    return 1 if stats.failure_count else 0


if __name__ == "__main__":
    sys.exit(main())
