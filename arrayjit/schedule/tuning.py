"""Autotuning of the GPU kernel forms: the matrix-product nests of a routine whose tile
configuration can be chosen, and the record of a choice on disk.

A record is a small JSON artifact of `arrayjit.cache` (written atomically, digest-checked),
keyed by the nest's signature (extents, ops, dtypes, operand layouts), its kind (SIMT or TF32),
the candidates, the device and the compiler version: a nest is timed once per machine, and every
later compile, in any process, reads the choice. Timing itself needs the device: see
`arrayjit.backends.cuda.tuning`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from arrayjit import loop_ir as ir
from arrayjit.schedule.gpu_kernels import GpuOptions, KernelPlan, plan_kernels
from arrayjit.schedule.gpu_matmul import MatmulConfig, candidates, config_key

#: Bumped when the generated kernels change in a way that invalidates earlier timings.
VERSION = "matmul-tuning 3"


def tunable_nests(stmt: ir.Stmt, options: GpuOptions) -> dict[str, KernelPlan]:
    """The matmul kernels of a routine (with their default configuration), by config key."""
    found: dict[str, KernelPlan] = {}
    for plan in plan_kernels(stmt, replace(options, matmul_configs={})):
        if plan.matmul is not None:
            found.setdefault(config_key(plan.matmul, plan.matmul.config.tensor_cores), plan)
    return found


def fitting(
    kind: str | None, itemsizes: tuple[int, int], max_shared: int, wgmma: bool = False
) -> list[MatmulConfig]:
    """The candidates of `kind` whose tiles fit in `max_shared` bytes of shared memory."""
    layouts = [(False, False), (True, True)]
    return [
        c
        for c in candidates(kind, wgmma)
        if max(c.shared_bytes(*itemsizes, layout) for layout in layouts) <= max_shared
    ]


def record_text(config: MatmulConfig, seconds: dict[str, float]) -> str:
    """The JSON of a record: the chosen configuration and each candidate's time."""
    return json.dumps({"config": asdict(config), "seconds": seconds}, indent=1, sort_keys=True)


def read_record(path: Path) -> MatmulConfig:
    data = json.loads(Path(path).read_text())
    return MatmulConfig(**data["config"])
