"""The kernels of a routine, printed, compiled and cached one by one.

Each kernel plan (`arrayjit.schedule.gpu_kernels`) is printed as a kernel `ocannl_k<key>` whose
parameters are the buffers it uses, in order of first appearance, and whose text does not depend
on the routine (buffers are named by position while hashing), so the same layer in two places
of a model is one kernel. Kernels the cache lacks are grouped into a few modules compiled at once
(`arrayjit.backends.units`); each kernel is indexed by its key. Pure Python: nothing here needs a
GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from arrayjit import cache, ops
from arrayjit import loop_ir as ir
from arrayjit.codegen.c_syntax import fill_names
from arrayjit.codegen.cuda_device import ASYNC_COPY_HELPERS, MMA_HELPERS, PRELUDE, VECTOR_TYPES
from arrayjit.codegen.cuda_syntax import CudaSyntax
from arrayjit.dtypes import DType
from arrayjit.schedule.gpu_kernels import KernelPlan
from arrayjit.tnode import TNode

#: The kernel's name while its key is computed.
_NAME = "@kernel@"


@dataclass(frozen=True, eq=False)
class KernelFunction:
    """One kernel: its key, its text with buffer names and its own name left as placeholders,
    what its helpers need (dtypes, random bits, asynchronous copies, tensor-core fragments) and
    its launch shape."""

    key: str
    body: str
    labels: tuple[str, ...]
    dtypes: tuple[DType, ...]
    random: bool
    async_copies: bool
    tensor_cores: bool
    grid: int | tuple[int, ...]
    block: int
    shared_bytes: int
    checks: bool = False

    @property
    def symbol(self) -> str:
        return f"ocannl_k{self.key}"

    @property
    def lines(self) -> int:
        return self.body.count("\n") + 1

    def text(self) -> str:
        return fill_names(self.body.replace(_NAME, self.symbol), list(self.labels))


def kernel_tnodes(plan: KernelPlan) -> list[TNode]:
    """The buffers a kernel uses, in order of first appearance, then the scratch buffers its
    plan added (partial results): its parameters."""
    used = ir.tnodes_in(ir.Block((*plan.prologue, *plan.body)))
    return list(dict.fromkeys([*used, *plan.scratch]))


@functools.cache
def prelude(
    dtypes: tuple[DType, ...],
    random: bool,
    async_copies: bool = False,
    tensor_cores: bool = False,
    checks: bool = False,
) -> str:
    used = set(ops.RANDOM_OPS) if random else set()
    parts = [PRELUDE, VECTOR_TYPES, CudaSyntax().prelude(list(dtypes), used, checks)]
    if async_copies:
        parts.append(ASYNC_COPY_HELPERS)
    if tensor_cores:
        parts.append(MMA_HELPERS)
    return "\n".join(parts)


def kernel_function(
    syntax: CudaSyntax, plan: KernelPlan, tnodes: Sequence[TNode], identity: str
) -> KernelFunction:
    """Print `plan` as a kernel over `tnodes`; `identity` is what besides the text determines
    the compiled code (compiler version, options, architecture)."""
    syntax.begin(list(tnodes), placeholders=True)
    body, launch = syntax.kernel(plan, _NAME, list(tnodes))
    stmts = ir.Block((*plan.prologue, *plan.body))
    dtypes = tuple(sorted({t.dtype for t in tnodes}, key=lambda d: d.name))
    random = bool(ops.RANDOM_OPS & ir.ops_used(stmts))
    async_copies = plan.matmul is not None
    tensor_cores = plan.matmul is not None and bool(plan.matmul.config.tensor_cores)
    checks = bool(ir.index_checks(stmts))
    key = cache.key(prelude(dtypes, random, async_copies, tensor_cores, checks), body, identity)
    labels = tuple(t.label for t in tnodes)
    return KernelFunction(
        key, body, labels, dtypes, random, async_copies, tensor_cores, launch.grid,
        launch.block, launch.shared_bytes, checks,
    )  # fmt: skip


def module_source(kernels: Sequence[KernelFunction]) -> str:
    """A module defining `kernels`: NVRTC's stand-ins for libc headers, helpers, the kernels."""
    dtypes = tuple(sorted({d for k in kernels for d in k.dtypes}, key=lambda d: d.name))
    helpers = prelude(
        dtypes,
        any(k.random for k in kernels),
        any(k.async_copies for k in kernels),
        any(k.tensor_cores for k in kernels),
        any(k.checks for k in kernels),
    )
    return "\n".join([helpers, *(k.text() for k in kernels)]) + "\n"
