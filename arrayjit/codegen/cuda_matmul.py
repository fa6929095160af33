"""The tiled matrix-product kernels (see `arrayjit.schedule.gpu_matmul`).

A block computes a `block_rows x block_cols` output tile. Its tiles of x and y live in shared
memory as `tilex[stage][k][row]` and `tiley[stage][k][col]` (k-major, rows padded), `stages` of
them: while the threads multiply one stage, the copies of the next ones are in flight. Per tile:

    wait for the oldest copies; barrier (everyone is done with the stage about to be refilled);
    issue the copies of the tile `stages - 1` ahead; multiply the current stage.

SIMT: a thread holds rows `trow * 4 + {0..3}` and `block_rows / 2 + trow * 4 + {0..3}` (and the
same for columns), read from shared memory 16 bytes at a time; each accumulator starts from the
nest's initial value and folds k in order, as the one-thread-per-cell kernel does. TF32: each
warp owns a 64 x 64 patch of 4 x 8 mma tiles of 16 x 8, fed one 8-deep slice at a time; partial
tiles along k are zero-filled, and the initial value is added at the store.

Names the kernel declares are plain words, which the printer's names (letters then digits) and
buffer names (ending in `_<digits>`) never are.
"""

from __future__ import annotations

from arrayjit import loop_ir as ir
from arrayjit.codegen.c_syntax import index_type
from arrayjit.codegen.cuda_device import COMPONENTS, SHARED_DECLARATION, Launch, vector_type
from arrayjit.schedule.gpu_matmul import MatmulShape, OperandLoad
from arrayjit.schedule.kernel_plan import KernelPlan
from arrayjit.tnode import TNode


def _dtype(e: ir.Expr):
    return e.tnode.dtype if isinstance(e, ir.Get) else e.dtype


def _half(cfg) -> bool:
    return cfg.tensor_cores in ("f16", "bf16")


def _position(m: MatmulShape, cfg) -> str:
    """The C type of tile origins and positions, which run up to a tile past the extents:
    64-bit only when that can pass 2^31 - 1."""
    extent = max(m.row.extent, m.col.extent, m.reduction.extent)
    return index_type(extent + max(cfg.block_rows, cfg.block_cols, cfg.depth))


def matmul_kernel(syntax, plan: KernelPlan, name: str, tnodes: list[TNode]):
    m: MatmulShape = plan.matmul
    cfg = m.config
    rows_n, cols_n, depth_n = m.row.extent, m.col.extent, m.reduction.extent
    brows, bcols, bk, stages, pad = (
        cfg.block_rows,
        cfg.block_cols,
        cfg.depth,
        cfg.stages,
        cfg.padding,
    )
    tx, ty = _dtype(m.x), _dtype(m.y)
    pos = _position(m, cfg)
    side_major = (m.loads[0].side_major, m.loads[1].side_major)
    shared = cfg.shared_bytes(tx.itemsize, ty.itemsize, side_major)
    tiles = -(-depth_n // bk)
    dims_x = f"[{brows}][{bk + 16 // tx.itemsize}]" if side_major[0] else f"[{bk}][{brows + pad}]"
    dims_y = f"[{bcols}][{bk + 16 // ty.itemsize}]" if side_major[1] else f"[{bk}][{bcols + pad}]"
    offset_y = stages * cfg.tile_elements(brows, side_major[0], tx.itemsize) * tx.itemsize
    # 16-bit operands stay bits in shared memory: the tensor cores read them as pairs.
    type_x = "unsigned short" if _half(cfg) else tx.c_name
    type_y = "unsigned short" if _half(cfg) else ty.c_name
    # SIMT: two blocks per multiprocessor (at most 128 registers a thread; left alone, 4 stages
    # take 151 and one block).
    lines = [
        syntax.head(name, tnodes, cfg.threads, 0 if cfg.tensor_cores else 2),
        f"  {SHARED_DECLARATION}",
        f"  {type_x} (*tilex){dims_x} = reinterpret_cast<{type_x} (*){dims_x}>(ocannl_smem);",
        "  unsigned char *const shared = reinterpret_cast<unsigned char *>(ocannl_smem);",
        f"  {type_y} (*tiley){dims_y} = "
        f"reinterpret_cast<{type_y} (*){dims_y}>(shared + {offset_y});",
        f"  const {pos} rowbase = ({pos})blockIdx.y * {brows}, colbase = ({pos})blockIdx.x * {bcols};",
    ]
    if m.batch:
        lines += syntax.unflatten(m.batch, "blockIdx.z", 1)

    # The tile loader: tile number `tile` into stage `stage`.
    lines.append(f"  auto loadtiles = [&]({pos} tile, int stage) {{")
    lines += _loader(syntax, m, m.x, m.loads[0], m.row, "tilex", brows, "rowbase", cfg)
    lines += _loader(syntax, m, m.y, m.loads[1], m.col, "tiley", bcols, "colbase", cfg)
    lines.append("  };")

    if cfg.tensor_cores:
        lines += _mma_setup(cfg)
    else:
        lines += _simt_setup(syntax, m, cfg)
    lines += [
        f"  for (int stage = 0; stage < {stages - 1}; ++stage) {{",
        f"    if (stage < {tiles}) loadtiles(stage, stage);",
        "    ocannl_cp_async_commit();",
        "  }",
        f"  for ({pos} tile = 0; tile < {tiles}; ++tile) {{",
        f"    ocannl_cp_async_wait<{stages - 2}>();",
        "    __syncthreads();",
        f"    if (tile + {stages - 1} < {tiles}) loadtiles(tile + {stages - 1}, (tile + {stages - 1}) % {stages});",
        "    ocannl_cp_async_commit();",
        f"    const int stage = (int)(tile % {stages});",
    ]
    if _half(cfg):
        lines += _mma16_step(cfg, m.loads)
    elif cfg.tensor_cores:
        lines += _mma_step(cfg, m.loads)
    else:
        lines += _simt_step(syntax, m, cfg, tiles)
    lines.append("  }")
    lines += _mma_store(syntax, m, cfg) if cfg.tensor_cores else _simt_store(syntax, m, cfg)
    lines.append("}")
    grid = (-(-cols_n // bcols), -(-rows_n // brows), m.extents[0])
    return "\n".join(lines), Launch(name, grid, cfg.threads, shared)


def _loader(
    syntax,
    m: MatmulShape,
    value: ir.Expr,
    load: OperandLoad,
    side: ir.For,
    tile: str,
    span: int,
    origin: str,
    cfg,
) -> list[str]:
    """Threads fill `tile[stage][kk][s]` with `value` at (side = origin + s, k = tile * depth
    + kk), neighbouring threads taking neighbouring memory; out of range: zeros."""
    bk, threads = cfg.depth, cfg.threads
    extent, depth = side.extent, m.reduction.extent
    vector = load.vector if load.mode == "async16" else 1
    count = span * bk // vector
    if load.side_major:
        split = [f"const int s = e / {bk // vector}, kk = (e % {bk // vector}) * {vector};"]
    elif load.mode == "async16":
        split = [f"const int kk = e / {span // vector}, s = (e % {span // vector}) * {vector};"]
    elif load.k_fast:
        split = [f"const int kk = e % {bk}, s = e / {bk};"]
    else:
        split = [f"const int kk = e / {span}, s = e % {span};"]
    # A fixed trip count (every configuration divides evenly) lets the loop unroll; by 4 at
    # most, which keeps the TF32 kernel under 255 registers (fully unrolled, it spills).
    if count % threads:
        head = [f"    for (int e = threadIdx.x; e < {count}; e += {threads}) {{"]
    else:
        head = [
            "    #pragma unroll 4",
            f"    for (int q = 0; q < {count // threads}; ++q) {{",
            f"      const int e = threadIdx.x + q * {threads};",
        ]
    lines = [
        *head,
        *("      " + line for line in split),
        f"      const {_position(m, cfg)} gs = {origin} + s, gk = tile * {bk} + kk;",
        f"      const bool ok = gs < {extent} && gk < {depth};",
    ]
    t = _dtype(value)
    cell = "[s][kk]" if load.side_major else "[kk][s]"
    if load.mode == "raw":
        syntax.renamed = {side.iterator: "gs", m.reduction.iterator: "gk"}
        bits = f"reinterpret_cast<const unsigned short *>({syntax.buffer(value.tnode)})"
        offset = syntax.offset(value.tnode, value.index)
        lines.append(f"      {tile}[stage]{cell} = ok ? {bits}[{offset}] : (unsigned short)0;")
    elif load.mode == "compute":
        syntax.renamed = {side.iterator: "gs", m.reduction.iterator: "gk"}
        lines.append(
            f"      {tile}[stage][kk][s] = ok ? ({t.c_name})({syntax.expr(value)}) : ({t.c_name})0;"
        )
    else:
        # The copy reads nothing when out of range, but its address must stay valid.
        syntax.renamed = {side.iterator: "(ok ? gs : 0)", m.reduction.iterator: "(ok ? gk : 0)"}
        address = f"&{syntax.buffer(value.tnode)}[{syntax.offset(value.tnode, value.index)}]"
        size = vector * t.itemsize
        lines.append(f"      ocannl_cp_async<{size}>(&{tile}[stage]{cell}, {address}, ok);")
    syntax.renamed = {}
    lines.append("    }")
    return lines


# ---- SIMT: an 8 x 8 patch per thread ------------------------------------------------------


def _simt_rows(brows: int) -> str:
    return f"trow * 4 + (r / 4) * {brows // 2} + r % 4"


def _simt_cols(bcols: int) -> str:
    return f"tcol * 4 + (c / 4) * {bcols // 2} + c % 4"


def _simt_setup(syntax, m: MatmulShape, cfg) -> list[str]:
    t = m.acc.dtype.c_name
    acc = syntax.local(m.acc.name)
    syntax.renamed = {m.row.iterator: "row", m.col.iterator: "col"}
    init = syntax.expr(m.acc.init)
    syntax.renamed = {}
    return [
        f"  const int tcol = threadIdx.x % {cfg.block_cols // 8}, trow = threadIdx.x / {cfg.block_cols // 8};",
        f"  {t} {acc}[8][8];",
        "  #pragma unroll",
        "  for (int r = 0; r < 8; ++r) {",
        "    #pragma unroll",
        "    for (int c = 0; c < 8; ++c) {",
        f"      const {_position(m, cfg)} row = rowbase + {_simt_rows(cfg.block_rows)};",
        f"      const {_position(m, cfg)} col = colbase + {_simt_cols(cfg.block_cols)};",
        f"      {acc}[r][c] = (row < {m.row.extent} && col < {m.col.extent}) ? {init} : ({t})0;",
        "    }",
        "  }",
    ]


def _load_four(target: str, first: int, dtype, address: str) -> list[str]:
    """`target[first .. first + 3]` from 4 consecutive shared values (16-byte aligned)."""
    width = 16 // dtype.itemsize
    if dtype.c_name not in ("float", "double", "int") or width not in (2, 4):
        return [f"{target}[{first} + u] = ({address})[u];" for u in range(4)]
    vt = vector_type(dtype.c_name, width)
    lines = []
    for half in range(4 // width):
        name = f"{target}v{'abcd'[first // width + half]}"
        lines.append(
            f"const {vt} {name} = *reinterpret_cast<const {vt} *>({address} + {half * width});"
        )
        lines += [
            f"{target}[{first + half * width + u}] = {name}.{COMPONENTS[u]};" for u in range(width)
        ]
    return lines


def _simt_step(syntax, m: MatmulShape, cfg, tiles: int) -> list[str]:
    acc = syntax.local(m.acc.name)
    combine = m.update.args[1]
    operands = ["xs[r]", "ys[c]"] if combine.args[0] is m.x else ["ys[c]", "xs[r]"]
    product = syntax.apply(combine.op, combine.dtype, *operands)
    step = syntax.apply(m.update.op, m.update.dtype, f"{acc}[r][c]", product)
    tx, ty = _dtype(m.x), _dtype(m.y)
    half_rows, half_cols = cfg.block_rows // 2, cfg.block_cols // 2
    body = [
        f"{tx.c_name} xs[8];",
        f"{ty.c_name} ys[8];",
        *_load_four("xs", 0, tx, "&tilex[stage][kk][trow * 4]"),
        *_load_four("xs", 4, tx, f"&tilex[stage][kk][{half_rows} + trow * 4]"),
        *_load_four("ys", 0, ty, "&tiley[stage][kk][tcol * 4]"),
        *_load_four("ys", 4, ty, f"&tiley[stage][kk][{half_cols} + tcol * 4]"),
        "#pragma unroll",
        "for (int r = 0; r < 8; ++r)",
        "  #pragma unroll",
        f"  for (int c = 0; c < 8; ++c) {acc}[r][c] = {step};",
    ]
    body = ["        " + line for line in body]
    bk, depth = cfg.depth, m.reduction.extent
    lines = [
        "    #pragma unroll",
        f"    for (int kk = 0; kk < {bk}; ++kk) {{",
        *body,
        "    }",
    ]
    if depth % bk == 0:
        return lines
    # The last tile is partial: only its first depth % bk steps hold values.
    return [
        f"    if (tile < {tiles - 1}) {{",
        *("  " + line for line in lines),
        "    } else {",
        f"      for (int kk = 0; kk < {depth % bk}; ++kk) {{",
        *("  " + line for line in body),
        "      }",
        "    }",
    ]


def _rounded(syntax, m: MatmulShape, value: str) -> str:
    """`value` (of the accumulator's type) as stored: rounded into a 16-bit buffer."""
    dtype = m.store.tnode.dtype
    return syntax.narrow(dtype, value) if dtype.storage_only else value


def _simt_store(syntax, m: MatmulShape, cfg) -> list[str]:
    acc = syntax.local(m.acc.name)
    syntax.renamed = {m.row.iterator: "row", m.col.iterator: "col"}
    target = f"{syntax.buffer(m.store.tnode)}[{syntax.offset(m.store.tnode, m.store.index)}]"
    syntax.renamed = {}
    return [
        "  #pragma unroll",
        "  for (int r = 0; r < 8; ++r) {",
        "    #pragma unroll",
        "    for (int c = 0; c < 8; ++c) {",
        f"      const {_position(m, cfg)} row = rowbase + {_simt_rows(cfg.block_rows)};",
        f"      const {_position(m, cfg)} col = colbase + {_simt_cols(cfg.block_cols)};",
        f"      if (row < {m.row.extent} && col < {m.col.extent}) {target} = {_rounded(syntax, m, f'{acc}[r][c]')};",
        "    }",
        "  }",
    ]


# ---- TF32 tensor cores: a 64 x 64 patch per warp --------------------------------------------


def _mma_setup(cfg) -> list[str]:
    warps_across = cfg.block_cols // 64
    return [
        "  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;",
        "  const int group = lane / 4, member = lane % 4;",
        f"  const int wrow = (warp / {warps_across}) * 64, wcol = (warp % {warps_across}) * 64;",
        "  float fragc[4][8][4];",
        "  #pragma unroll",
        "  for (int mt = 0; mt < 4; ++mt)",
        "    #pragma unroll",
        "    for (int nt = 0; nt < 8; ++nt)",
        "      #pragma unroll",
        "      for (int q = 0; q < 4; ++q) fragc[mt][nt][q] = 0.0f;",
    ]


def _mma_step(cfg, loads: tuple[OperandLoad, OperandLoad]) -> list[str]:
    def at(tile: str, load: OperandLoad, k: str, side: str) -> str:
        return f"{tile}[stage][{side}][{k}]" if load.side_major else f"{tile}[stage][{k}][{side}]"

    a, b = loads
    return [
        "    #pragma unroll",
        f"    for (int ks = 0; ks < {cfg.depth // 8}; ++ks) {{",
        "      unsigned fraga[4][4], fragb[8][2];",
        "      const int kr = ks * 8 + member;",
        "      #pragma unroll",
        "      for (int mt = 0; mt < 4; ++mt) {",
        "        const int rr = wrow + mt * 16 + group;",
        f"        fraga[mt][0] = ocannl_tf32({at('tilex', a, 'kr', 'rr')});",
        f"        fraga[mt][1] = ocannl_tf32({at('tilex', a, 'kr', 'rr + 8')});",
        f"        fraga[mt][2] = ocannl_tf32({at('tilex', a, 'kr + 4', 'rr')});",
        f"        fraga[mt][3] = ocannl_tf32({at('tilex', a, 'kr + 4', 'rr + 8')});",
        "      }",
        "      #pragma unroll",
        "      for (int nt = 0; nt < 8; ++nt) {",
        "        const int cc = wcol + nt * 8 + group;",
        f"        fragb[nt][0] = ocannl_tf32({at('tiley', b, 'kr', 'cc')});",
        f"        fragb[nt][1] = ocannl_tf32({at('tiley', b, 'kr + 4', 'cc')});",
        "      }",
        "      #pragma unroll",
        "      for (int mt = 0; mt < 4; ++mt)",
        "        #pragma unroll",
        "        for (int nt = 0; nt < 8; ++nt) ocannl_mma_tf32(fragc[mt][nt], fraga[mt], fragb[nt]);",
        "    }",
    ]


def _mma16_step(cfg, loads: tuple[OperandLoad, OperandLoad]) -> list[str]:
    """One 16-deep slice at a time: fragments by ldmatrix (transposing from [k][side] tiles),
    then 4 x 8 mma.m16n8k16 per warp."""
    a, b = loads
    if a.side_major:
        load_a = (
            "ocannl_ldmatrix_x4(fraga[mt], &tilex[stage][wrow + mt * 16 + lane % 8 + "
            "((lane / 8) % 2) * 8][ks * 16 + (lane / 16) * 8]);"
        )
    else:
        load_a = (
            "ocannl_ldmatrix_x4_trans(fraga[mt], &tilex[stage][ks * 16 + lane % 8 + "
            "(lane / 16) * 8][wrow + mt * 16 + ((lane / 8) % 2) * 8]);"
        )
    if b.side_major:
        load_b = (
            "ocannl_ldmatrix_x4(pair, &tiley[stage][wcol + np * 16 + (lane / 16) * 8 + lane % 8]"
            "[ks * 16 + ((lane / 8) % 2) * 8]);"
        )
    else:
        load_b = (
            "ocannl_ldmatrix_x4_trans(pair, &tiley[stage][ks * 16 + ((lane / 8) % 2) * 8 + "
            "lane % 8][wcol + np * 16 + (lane / 16) * 8]);"
        )
    return [
        "    #pragma unroll",
        f"    for (int ks = 0; ks < {cfg.depth // 16}; ++ks) {{",
        "      unsigned fraga[4][4], fragb[8][2];",
        "      #pragma unroll",
        f"      for (int mt = 0; mt < 4; ++mt) {load_a}",
        "      #pragma unroll",
        "      for (int np = 0; np < 4; ++np) {",
        "        unsigned pair[4];",
        f"        {load_b}",
        "        fragb[2 * np][0] = pair[0];",
        "        fragb[2 * np][1] = pair[1];",
        "        fragb[2 * np + 1][0] = pair[2];",
        "        fragb[2 * np + 1][1] = pair[3];",
        "      }",
        "      #pragma unroll",
        "      for (int mt = 0; mt < 4; ++mt)",
        "        #pragma unroll",
        "        for (int nt = 0; nt < 8; ++nt)",
        f"          ocannl_mma_{cfg.tensor_cores}(fragc[mt][nt], fraga[mt], fragb[nt]);",
        "    }",
    ]


def _mma_store(syntax, m: MatmulShape, cfg) -> list[str]:
    syntax.renamed = {m.row.iterator: "row", m.col.iterator: "col"}
    target = f"{syntax.buffer(m.store.tnode)}[{syntax.offset(m.store.tnode, m.store.index)}]"
    acc_type = m.acc.dtype
    if acc_type.name == "float32":
        total = syntax.apply(m.update.op, acc_type, syntax.expr(m.acc.init), "fragc[mt][nt][q]")
    else:  # a 16-bit result: the sum in fp32, rounded once
        init = f"(float)({syntax.expr(m.acc.init)})"
        total = f"({acc_type.c_name})({init} + fragc[mt][nt][q])"
    syntax.renamed = {}
    return [
        "  #pragma unroll",
        "  for (int mt = 0; mt < 4; ++mt)",
        "    #pragma unroll",
        "    for (int nt = 0; nt < 8; ++nt)",
        "      #pragma unroll",
        "      for (int q = 0; q < 4; ++q) {",
        f"        const {_position(m, cfg)} row = rowbase + wrow + mt * 16 + group + (q / 2) * 8;",
        f"        const {_position(m, cfg)} col = colbase + wcol + nt * 8 + 2 * member + q % 2;",
        f"        if (row < {m.row.extent} && col < {m.col.extent}) {target} = {_rounded(syntax, m, total)};",
        "      }",
    ]
