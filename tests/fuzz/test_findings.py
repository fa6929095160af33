"""Programs on which the differential fuzzer found wrong values or a wrong ShapeError, kept as
regression tests once fixed. Each file is the fuzzer's reproducer less its appended check: the
program, then the values and gradients that the fuzzer's numpy interpreter (float64,
fuzz/reference.py) computed for it, recorded with the program. The test runs it followed by
today's check (fuzz.scripts.CHECK: rows equal to the reference's, values within the tolerance of
the program's value mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.scripts import CHECK

FINDINGS = sorted((Path(__file__).parent / "findings").glob("program_*.py"))


@pytest.mark.parametrize("path", FINDINGS, ids=[p.stem for p in FINDINGS])
def test_fuzz_finding_stays_fixed(path: Path) -> None:
    found = {"__name__": "fuzz_finding"}
    exec(compile(path.read_text() + "\n" + CHECK, str(path), "exec"), found)
    assert found["FAILURES"] == [], f"{path.name}: " + "; ".join(found["FAILURES"])


def test_findings_are_there():
    assert len(FINDINGS) >= 7
