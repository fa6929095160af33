"""The sm_90a matrix-product kernel: warpgroup MMA fed by TMA (see `arrayjit.schedule.gpu_wgmma`).

Shared memory, from a 1024-byte aligned start: `stages` stages of [A tile | B tile], each a
stack of 128-byte rows in the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8)),
then the `full` and `empty` mbarriers of each stage. Per k tile:

    producer (thread 0):  wait until the stage is empty (from its second use on); expect the
                          tile's bytes on `full`; issue the TMA copies of the A and B boxes.
    consumers:            wait until the stage is full; load the A fragments (ldmatrix for
                          16-bit values, 32-bit reads rounded to TF32 otherwise) for the whole
                          tile; fence; one wgmma per 8 (TF32) or 16 values of k, B through a
                          descriptor advanced 32 bytes a step; commit; wait; arrive on `empty`.

Blocks run in groups of 8 A tiles by all B tiles (their operand strips stay in L2 together).
Each consumer warpgroup owns 64 A rows and all `block_cols` B columns: accumulators
`acc[block_cols / 2]`, thread (warp w, lane l) holding rows 16 w + l / 4 (+ 8) and columns
8 i + 2 (l % 4) (+ 1) (the wgmma D fragment), stored at the end with the nest's initial value
applied. With `swap`, A rows are output columns. Partial tiles are zeros (TMA fills them).
"""

from __future__ import annotations

from arrayjit.codegen.cuda_device import SHARED_DECLARATION, Launch
from arrayjit.codegen.cuda_matmul import _rounded
from arrayjit.schedule.gpu_matmul import MatmulShape
from arrayjit.schedule.gpu_wgmma import ROW_BYTES, TmaOperand
from arrayjit.schedule.kernel_plan import KernelPlan
from arrayjit.tnode import TNode

#: A tiles per group of blocks (see the block order in `wgmma_kernel`).
GROUP = 8
#: Registers per thread after reallocation: producers give theirs to the consumers.
PRODUCER_REGISTERS = 40
CONSUMER_REGISTERS = 232


def wgmma_kernel(syntax, plan: KernelPlan, name: str, tnodes: list[TNode]):
    m: MatmulShape = plan.matmul
    cfg, w = m.config, m.wgmma
    brows, bcols, bk, stages = cfg.block_rows, cfg.block_cols, cfg.depth, cfg.stages
    consumers = brows // 64
    a_bytes, b_bytes = brows * ROW_BYTES, bcols * ROW_BYTES
    stage_bytes = a_bytes + b_bytes
    tiles = -(-m.reduction.extent // bk)
    steps = _steps(cfg)
    if cfg.overlap and steps < 2:
        raise ValueError(f"{cfg.describe()}: overlapping tiles need 2 products a tile at least")
    a_tiles, b_tiles = -(-w.a.side.extent // brows), -(-w.b.side.extent // bcols)
    map_a, map_b = (syntax.buffer(t) for t in w.maps)
    lines = [
        syntax.head(name, tnodes, cfg.threads, 1),
        f"  {SHARED_DECLARATION}",
        "  const unsigned raw = ocannl_shared_address(ocannl_smem);",
        "  unsigned char *const shared = reinterpret_cast<unsigned char *>(ocannl_smem)"
        " + (((raw + 1023u) & ~1023u) - raw);",
        "  unsigned long long *const full = reinterpret_cast<unsigned long long *>"
        f"(shared + {stages * stage_bytes});",
        f"  unsigned long long *const empty = full + {stages};",
        # Overlapped: what the consumers' first tile releases (no stage), so that the release
        # is no branch among the products (around one, ptxas serializes every wgmma).
        f"  unsigned long long *const spare = empty + {stages};",
        # Blocks in groups of GROUP A tiles by all B tiles: the blocks running at once share
        # their operands' strips in L2.
        f"  const int group = blockIdx.x / {GROUP * b_tiles}, first = group * {GROUP};",
        f"  const int size = {a_tiles} - first < {GROUP} ? {a_tiles} - first : {GROUP};",
        f"  const int pid = blockIdx.x % {GROUP * b_tiles};",
        f"  const int abase = (first + pid % size) * {brows}, bbase = (pid / size) * {bcols};",
    ]
    if m.batch:
        lines += syntax.unflatten(m.batch, "blockIdx.z", 1)
    lines += [
        "  if (threadIdx.x == 0) {",
        f"    for (int s = 0; s < {stages}; ++s) {{",
        "      ocannl_mbarrier_init(&full[s], 1);",
        f"      ocannl_mbarrier_init(&empty[s], {consumers * 128});",
        "    }",
        f"    ocannl_mbarrier_init(spare, {consumers * 128});",
        "    ocannl_fence_barrier_init();",
        "  }",
        "  __syncthreads();",
        "  if (threadIdx.x < 128) {",
        f"    ocannl_setmaxnreg_dec<{PRODUCER_REGISTERS}>();",
        "    if (threadIdx.x == 0) {",
        f"      ocannl_tensormap_acquire({map_a});",
        f"      ocannl_tensormap_acquire({map_b});",
        f"      for (int tile = 0; tile < {tiles}; ++tile) {{",
        f"        const int stage = tile % {stages};",
        f"        if (tile >= {stages}) ocannl_mbarrier_wait(&empty[stage], (tile / {stages} - 1) & 1);",
        f"        ocannl_mbarrier_expect_bytes(&full[stage], {stage_bytes});",
        f"        unsigned char *const tiles = shared + stage * {stage_bytes};",
        *(
            "        " + line
            for line in _copies(syntax, w.a, "tiles", map_a, "abase", w.a_boxes, bk)
        ),
        *(
            "        " + line
            for line in _copies(syntax, w.b, f"tiles + {a_bytes}", map_b, "bbase", 1, bk)
        ),
        "      }",
        "    }",
        "  } else {",
        f"    ocannl_setmaxnreg_inc<{CONSUMER_REGISTERS}>();",
        "    const int lane = threadIdx.x % 32;",
        "    const int arow = (threadIdx.x / 128 - 1) * 64 + ((threadIdx.x / 32) % 4) * 16;",
        f"    float acc[{bcols // 2}];",
        # Two fragment buffers: step ks loads one once the product of step ks - 2 (which read
        # it) is done, so at most two products are in flight and 8 registers hold fragments.
        "    unsigned frag[2][4];",
        "    #pragma unroll",
        f"    for (int q = 0; q < {bcols // 2}; ++q) acc[q] = 0.0f;",
        *([f"    ocannl_fence_operands<{bcols // 2}>(acc);"] if cfg.overlap else []),
        f"    for (int tile = 0; tile < {tiles}; ++tile) {{",
        f"      const int stage = tile % {stages};",
        f"      ocannl_mbarrier_wait(&full[stage], (tile / {stages}) & 1);",
        f"      const unsigned char *const atile = shared + stage * {stage_bytes};",
        f"      const unsigned btile = ocannl_shared_address(shared + stage * {stage_bytes} + {a_bytes});",
        # The B descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
        "      const unsigned long long desc = (1ull << 62) | (64ull << 32) | (1ull << 16)"
        " | ((btile >> 4) & 0x3FFF);",
        # (Overlapped, products are in flight here: touching the accumulators would make ptxas
        # serialize every wgmma.)
        *(
            [
                # (Chosen here: a choice among the products also makes ptxas serialize them.)
                "      unsigned long long *const release = tile > 0 ? "
                f"&empty[(tile - 1) % {stages}] : spare;"
            ]
            if cfg.overlap
            else [f"      ocannl_fence_operands<{bcols // 2}>(acc);"]
        ),
        "      #pragma unroll",
        f"      for (int ks = 0; ks < {steps}; ++ks) {{",
        *("        " + line for line in _retire(cfg, stages)),
        *("        " + line for line in _fragment(cfg, w.a, "frag[ks % 2]")),
        "        ocannl_wgmma_fence();",
        f"        ocannl_wgmma_{cfg.tensor_cores}_n{bcols}(acc, frag[ks % 2], desc + 2 * ks);",
        "        ocannl_wgmma_commit();",
        "      }",
        *(
            []
            if cfg.overlap
            else [
                "      ocannl_wgmma_wait<0>();",
                f"      ocannl_fence_operands<{bcols // 2}>(acc);",
                "      ocannl_mbarrier_arrive(&empty[stage]);",
            ]
        ),
        "    }",
        *(
            ["    ocannl_wgmma_wait<0>();", f"    ocannl_fence_operands<{bcols // 2}>(acc);"]
            if cfg.overlap
            else []
        ),
        *("    " + line for line in _store(syntax, m)),
        "  }",
        "}",
    ]
    grid = (a_tiles * b_tiles, 1, m.extents[0])
    launch = Launch(name, grid, cfg.threads, cfg.shared_bytes(0, 0))
    return "\n".join(lines), launch


def _retire(cfg, stages: int) -> list[str]:
    """Before step ks: wait until at most one product is in flight. Overlapped, the wait spans
    tiles (the previous tile's last product runs on while this tile's first is issued) and the
    previous tile's stage is released once none of its products is left (at step 1; the first
    tile releases the spare mbarrier)."""
    if not cfg.overlap:
        return ["if (ks >= 2) ocannl_wgmma_wait<1>();"]
    return [
        "ocannl_wgmma_wait<1>();",
        "if (ks == 1) ocannl_mbarrier_arrive(release);",
    ]


def _steps(cfg) -> int:
    """wgmma instructions per k tile (k of 8 for TF32, 16 for 16-bit values)."""
    return cfg.depth // (8 if cfg.tensor_cores == "tf32" else 16)


def _copies(syntax, op: TmaOperand, dst: str, tensor_map: str, base: str, boxes: int, bk: int):
    """The TMA copies of one operand's tile: `boxes` boxes, 128-byte rows each."""
    spec = op.spec
    box_bytes = spec.box_bytes
    batch = [syntax.iterator(it) for it in op.batch]
    rank = len(spec.dims)
    lines = []
    for box in range(boxes):
        side = f"{base} + {box * spec.box[0]}" if box else base
        coords = ["tile * " + str(bk), side] if op.k_major else [side, f"tile * {bk}"]
        args = ", ".join([*coords, *batch])
        target = f"{dst} + {box * box_bytes}" if box else dst
        lines.append(f"ocannl_tma_load_{rank}d({target}, {tensor_map}, {args}, &full[stage]);")
    return lines


def _fragment(cfg, a: TmaOperand, target: str) -> list[str]:
    """Load `target[4]`, the A fragment of k step `ks` (the wgmma A register layout, rows `arow
    + ...` of the warp), from the swizzled tile at `atile`."""
    bk = cfg.depth
    if cfg.tensor_cores == "tf32":
        # Thread (g = lane / 4, t = lane % 4) holds (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4).
        if a.k_major:
            at = (
                "*reinterpret_cast<const float *>(atile + (r) * 128 + "
                "((((k) >> 2) ^ ((r) & 7)) << 4) + ((k) & 3) * 4)"
            )
        else:
            at = (
                f"*reinterpret_cast<const float *>(atile + ((r) >> 5) * {bk * ROW_BYTES} + "
                "(k) * 128 + (((((r) & 31) >> 2) ^ ((k) & 7)) << 4) + ((r) & 3) * 4)"
            )
        lines = ["{", "  const int r = arow + lane / 4, k = ks * 8 + lane % 4;"]
        for q, (dr, dk) in enumerate([(0, 0), (8, 0), (0, 4), (8, 4)]):
            element = at.replace("(r)", f"(r + {dr})").replace("(k)", f"(k + {dk})")
            lines.append(f"  {target}[{q}] = ocannl_tf32({element});")
        return [*lines, "}"]
    if a.k_major:
        # ldmatrix: lane l gives row l % 8 of matrix l / 8; matrices (rows 0-7 | 8-15) x (k 0-7
        # | 8-15) in the order of the A fragment's four registers.
        return [
            "{",
            "  const int r = arow + lane % 8 + ((lane / 8) % 2) * 8, chunk = ks * 2 + lane / 16;",
            f"  ocannl_ldmatrix_x4({target}, atile + r * 128 + ((chunk ^ (r & 7)) << 4));",
            "}",
        ]
    # Transposed: lane l gives k row l % 8 (+ 8 for matrices 2, 3) of rows + 8 (matrices 1, 3).
    return [
        "{",
        "  const int k = ks * 16 + lane % 8 + (lane / 16) * 8, r = arow + ((lane / 8) % 2) * 8;",
        f"  ocannl_ldmatrix_x4_trans({target}, atile + (r >> 6) * {bk * ROW_BYTES} + k * 128 + "
        "((((r & 63) >> 3) ^ (k & 7)) << 4));",
        "}",
    ]


def _store(syntax, m: MatmulShape) -> list[str]:
    """Each accumulator to its output cell, with the nest's initial value applied."""
    w, cfg = m.wgmma, m.config
    syntax.renamed = {m.row.iterator: "row", m.col.iterator: "col"}
    target = f"{syntax.buffer(m.store.tnode)}[{syntax.offset(m.store.tnode, m.store.index)}]"
    acc_type = m.acc.dtype
    if acc_type.name == "float32":
        total = _rounded(
            syntax, m, syntax.apply(m.update.op, acc_type, syntax.expr(m.acc.init), "acc[q]")
        )
    else:  # a 16-bit result: the sum in fp32, rounded once
        total = f"({acc_type.c_name})((float)({syntax.expr(m.acc.init)}) + acc[q])"
    syntax.renamed = {}
    a_pos = "abase + arow + lane / 4 + ((q / 2) % 2) * 8"
    b_pos = "bbase + (q / 4) * 8 + (lane % 4) * 2 + q % 2"
    row, col = (b_pos, a_pos) if w.swap else (a_pos, b_pos)
    return [
        "#pragma unroll",
        f"for (int q = 0; q < {cfg.block_cols // 2}; ++q) {{",
        f"  const int row = {row};",
        f"  const int col = {col};",
        f"  if (row < {m.row.extent} && col < {m.col.extent}) {target} = {total};",
        "}",
    ]
