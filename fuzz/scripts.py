"""A generated program as a self-contained Python script: it builds the program with ocannl_py,
compiles forward and backward on the C backend, runs them and compares every tensor's value and
gradient with the numpy reference's, written into the script. The fuzzer runs exactly this text,
so a failing program's script is its reproducer (`python that_script.py`)."""

from __future__ import annotations

import random

import numpy as np

from fuzz import reference as ref
from fuzz.programs import Program, sinks, used

#: (rtol, atol relative to max(1, max |expected|)) per value mode. Float mode: float32 against
#: float64 through at most a few dozen operations on values below 1e4, kept away from kinks;
#: errors there are ~1e-5 relative, a wrong formula or axis is off by O(1). Ties mode: small
#: integers, exact in float32 except the 1/n shares of tied gradients (one rounding).
TOLERANCES = {"float": (1e-3, 1e-3), "ties": (1e-5, 1e-5)}

CHECK = """
def rows_of(name):
    shape = globals()[name].shape
    return [list(shape.batch), list(shape.output), list(shape.input)]


def compare(what, name, got, want, grad):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    # Every tensor has the reference's rows: leaves are given all their dims, and a computed
    # tensor takes the least shape its operands allow (docs/shape_inference.md).
    got_rows, want_rows = rows_of(name), TYPES[name]
    if got_rows != want_rows:
        FAILURES.append(f"{what}: rows {got_rows} (batch, output, input), expected {want_rows}")
        return
    if got.shape != want.shape:
        FAILURES.append(f"{what}: shape {got.shape}, expected {want.shape}")
        return
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL * scale)
    if bad.any():
        FAILURES.append(
            f"{what}: {int(bad.sum())} of {bad.size} cells differ: got {got[bad][:4].tolist()}, "
            f"expected {want[bad][:4].tolist()}"
        )


FAILURES = []
for name, want in EXPECTED_VALUES.items():
    compare(f"{name}.value", name, globals()[name].value, want, grad=False)
for name, want in EXPECTED_GRADS.items():
    compare(f"{name}.grad", name, globals()[name].grad, want, grad=True)
if __name__ == "__main__":
    print("\\n".join(FAILURES) or "no difference")
    raise SystemExit(1 if FAILURES else 0)
"""


def program_script(program: Program, header: str) -> str:
    """The script of `program` (see the module docstring)."""
    rng = random.Random(len(program.lines))
    lines = [f'"""{header}"""', "import numpy as np", "import ocannl_py as oc",
             "from ocannl_py import Context, op, train", "", *program.lines]  # fmt: skip
    terms, seeds = [], {}
    for k, s in enumerate(sinks(program)):
        weights = np.array([rng.choice([-1.0, 0.5, 1.0, 2.0]) for _ in range(s.type.cells)])
        weights = weights.reshape(s.type.dims)
        dims = (f"batch_dims={list(s.type.batch)}, input_dims={list(s.type.input)}, "
                f"output_dims={list(s.type.output)}")  # fmt: skip
        lines += [f'w{k} = oc.term("w{k}", {dims})', f"w{k}.set_value({weights.tolist()!r})"]
        terms.append(f'oc.einsum1("...|...->... => ", {s.name} * w{k})')
        if s.grad:
            seeds[s.name] = weights
    lines.append(f"loss = {' + '.join(terms)}")
    lines.append('ctx = Context("c")')
    if seeds:
        lines.append("ctx.compile(train.grad_update(loss)).run()")
    else:
        lines.append("ctx.forward(loss)")
    nodes = used(program)
    grads = ref.gradients(nodes, program.values, seeds) if seeds else {}
    rtol, atol = TOLERANCES[program.mode]
    lines += [
        "",
        f"RTOL, ATOL = {rtol!r}, {atol!r}",
        "TYPES = {",
        *(f"    {n.name!r}: {[list(n.type.row(k)) for k in ref.KINDS]!r}," for n in nodes),
        "}",
        "EXPECTED_VALUES = {",
        *(f"    {n.name!r}: {program.values[n.name].tolist()!r}," for n in nodes),
        "}",
        "EXPECTED_GRADS = {",
        *(f"    {name!r}: {g.tolist()!r}," for name, g in grads.items()),
        "}",
    ]
    return "\n".join(lines) + "\n" + CHECK
