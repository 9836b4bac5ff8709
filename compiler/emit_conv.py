"""Convolution and fully-connected layers: `plan_conv` picks a tiling (rows per tile, output-channel
blocks per tile, input-channel blocks per step, loop order, resident weights or input), `conv2d`
emits it in the double-buffered steps of compiler/tiling.py.  A kernel runs as one CONV per tap
group per step (`tiling.tap_groups`: kernels over 15 taps, dilated kernels), and the input may be
several parts (a channel gather: their blocks, in order, are the input's channel blocks)."""

from __future__ import annotations

import dataclasses
import functools
import itertools

from softnpu.compiler.tiling import (
    Activation,
    LoweringError,
    _band_rows,
    _emit,
    _finish_layer,
    _halves,
    _input_band,
    _input_span,
    _pair,
    _Step,
    _store_rows,
    _Tile,
    tap_groups,
    widest_column_range,
)
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Buffer, Conv, ConvMode, Insn, Load, Requant, Rounding
from softnpu.hdl.timing import dma_cycles

__all__ = ["ConvPlan", "plan_conv", "conv2d"]


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How a convolution is tiled: output rows per tile, output channel blocks per tile, input
    channel blocks per step (the K split), the loop order and what stays in a scratchpad.

    * weights_resident: every weight of the layer fits the weight scratchpad; each out-block
      group's weights (and parameters) are loaded once, at the first step that needs them;
    * input_resident: one row tile and one K step cover the layer, so the (padded) input is loaded
      once, into the whole input scratchpad, and every out-block group reads it from there;
    * cols_per_tile: when the input band of one output row is wider than half the input scratchpad,
      tiles are also cut into column ranges (each loads its own columns and padding).
    """
    rows_per_tile: int
    out_blocks_per_tile: int
    in_blocks_per_step: int
    groups_outer: bool          # loop co-groups outside row tiles (input re-read per group)
    weights_resident: bool
    estimated_cycles: int
    input_resident: bool = False
    cols_per_tile: int = 0      # output columns per tile when a whole row does not fit (0: the row)


_REFINE = 4     # plans of the analytic model's best that are emitted and scheduled (compiler/cycles.py)
_TIE = 0.005    # schedules this close to the fastest count as equally fast


def plan_conv(config: NPUConfig, x: Activation, out_h: int, out_w: int, cout: int, kh: int, kw: int,
              stride, pads: tuple[int, int, int, int], name: str = "conv", dilation=(1, 1)) -> ConvPlan:
    """The fastest tiling found: candidates ranked by an analytic cost, the best few emitted and
    scheduled with the cycle model (`estimated_cycles` is that schedule's length).  Memoized on the
    layer's shape (networks repeat their blocks).  `stride` and `dilation`: an int or a
    (vertical, horizontal) pair."""
    try:
        return _plan_conv(config, x.h, x.w, x.c, out_h, out_w, cout, kh, kw, _pair(stride),
                          tuple(pads), _pair(dilation, "dilation"))
    except LoweringError as exc:
        raise LoweringError(f"{name}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _plan_conv(config: NPUConfig, h: int, w: int, c: int, out_h: int, out_w: int, cout: int, kh: int, kw: int,
               stride: tuple[int, int], pads: tuple[int, int, int, int],
               dilation: tuple[int, int] = (1, 1)) -> ConvPlan:
    x = Activation(0, h, w, c)
    b = config.cols
    half = _halves(config)
    cib, cob = x.blocks(b), -(-cout // b)
    sh, sw = stride
    ekh, ekw = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    q = pads[2] + x.w + pads[3]
    resident = cob * cib * kh * kw <= config.wgt_depth and 3 * cob <= config.param_depth // 2
    # the 24 largest K splits whose weights (one out block) and one input entry per tap fit
    wgt_limit = config.wgt_depth if resident else half["wgt"]
    chunk_options = sorted({chunk for chunk in {-(-cib // k) for k in range(1, cib + 1)}
                            if chunk * kh * kw <= wgt_limit and chunk <= half["inp"]}, reverse=True)[:24]

    def plans(tw: int, q: int, cols_per_tile: int) -> list[ConvPlan]:
        found = []
        n_cols = -(-out_w // tw)
        for chunk in chunk_options:
            n_chunks = -(-cib // chunk)
            for cob_t in range(1, min(cob, 255) + 1):
                if not resident and cob_t * chunk * kh * kw > half["wgt"]:
                    break
                if 3 * cob_t > half["param"]:
                    break
                th_max = min(out_h, half["acc"] // (cob_t * tw), half["out"] // (cob_t * tw))
                if th_max < 1:
                    break
                for input_resident in (False, True) if not cols_per_tile else (False,):
                    th = th_max
                    limit = config.inp_depth if input_resident else half["inp"]
                    if input_resident and (th < out_h or n_chunks > 1 or cob_t >= cob):
                        continue
                    while th >= 1 and chunk * _tile_rows(th, sh, ekh, pads) * q > limit:
                        th -= 1
                    if th < 1 or (input_resident and th < out_h):
                        continue
                    for groups_outer in (True, False):
                        if input_resident and not groups_outer:
                            continue
                        cost = n_cols * _conv_cost(config, Activation(0, h, q, c), out_h, tw, cob, cib, chunk,
                                                   cob_t, th, kh, kw, sh, ekh, resident, groups_outer,
                                                   input_resident)
                        found.append(ConvPlan(th, cob_t, chunk, groups_outer, resident, cost, input_resident,
                                              cols_per_tile))
        return found

    candidates = plans(out_w, q, 0)
    if not candidates:          # width tiling: the widest column range whose band and results fit
        tw = widest_column_range(out_w, (sh, sw), (ekh, ekw), pads, half)
        if tw >= 1:
            candidates = plans(tw, _band_rows(tw, sw, ekw, pads[2:]), tw)
    if not candidates:
        raise LoweringError(f"no tiling fits config {config.name!r}: one output pixel needs {ekh}x{ekw} "
                            f"input entries per input block (half the input scratchpad holds {half['inp']}) "
                            f"and {kh * kw} weight entries per block pair (half the weight scratchpad holds "
                            f"{half['wgt']})")
    candidates.sort(key=lambda p: p.estimated_cycles)
    if len(candidates) == 1:
        return candidates[0]
    from softnpu.compiler.cycles import estimate

    y = Activation(0, out_h, out_w, cout)
    scheduled = []
    for plan in candidates[:_REFINE]:
        tiles = _conv_tiles(config, (x,), y, plan, weights=0, params=0, kh=kh, kw=kw, stride=stride,
                            dilation=dilation, pads=pads, pad_value=0, zero_point=0, act_min=-128,
                            act_max=127, rounding=Rounding.FIXED)
        program = _finish_layer(_emit(tiles), 0, True, config)
        scheduled.append((estimate(config, program).cycles, len(program), plan))
    fastest = min(cycles for cycles, _, _ in scheduled)
    # among plans within _TIE of the fastest, the one with the fewest instructions (a smaller program,
    # larger instructions: the same hardware time, a faster simulation)
    cycles, _, plan = min((s for s in scheduled if s[0] <= fastest * (1 + _TIE)), key=lambda s: (s[1], s[0]))
    return dataclasses.replace(plan, estimated_cycles=cycles)


def _tile_rows(th: int, stride: int, kh: int, pads=(0, 0)) -> int:
    """Input rows a tile of `th` output rows loads: a 1x1 kernel with a stride loads only the rows
    it reads (the DMA's row stride skips the others) unless it is padded, any other kernel a
    contiguous band (`kh`: the kernel's extent in input rows)."""
    return th if kh == 1 and stride > 1 and pads[0] == pads[1] == 0 else _band_rows(th, stride, kh, pads)


def _conv_cost(config, x, out_h, out_w, cob, cib, chunk, cob_t, th, kh, kw, stride, ekh, resident,
               groups_outer, input_resident) -> int:
    """Analytic cycles, for ranking: each step takes the longer of its loads and its array time."""
    b = config.cols
    n_chunks, n_groups, n_rows = -(-cib // chunk), -(-cob // cob_t), -(-out_h // th)
    steps = n_groups * n_rows * n_chunks
    in_rows = min(_tile_rows(th, stride, ekh), x.h)
    inp = dma_cycles(config, chunk * in_rows, x.w * b)
    wgt = dma_cycles(config, 1 if chunk == cib else cob_t, cob_t * chunk * kh * kw * b * b
                     // (1 if chunk == cib else cob_t))
    mac = cob_t * th * out_w * chunk * kh * kw + config.mac_latency + 8
    if resident or (groups_outer and n_chunks == 1):
        changes = n_groups                       # weights change with the group only
    else:
        changes = steps
    step_inp = 0 if input_resident else inp
    total = changes * max(step_inp + wgt, mac) + (steps - changes) * max(step_inp, mac)
    store = dma_cycles(config, cob_t, th * out_w * b) + cob_t * th * out_w
    first = inp + wgt
    return int(total + first + store + steps * 12)


def _input_loads(config: NPUConfig, parts, ci0: int, nci: int, sram: int, plane_entries: int,
                 first_row: int, nin: int, row_stride_rows: int, cols, ptop: int, pbot: int,
                 pad_value: int) -> list[Load]:
    """The loads of input blocks [ci0, ci0+nci) of a (possibly multi-part) input into consecutive
    padded planes of `plane_entries` entries from `sram`; cols = (first column, columns, left pad,
    right pad)."""
    first_col, ncols, pleft, pright = cols
    b = config.cols
    loads, start = [], 0
    for part in parts:
        nb = part.blocks(b)
        lo, hi = max(ci0, start), min(ci0 + nci, start + nb)
        if lo < hi:
            loads.append(Load(buffer=Buffer.INP, sram=sram + (lo - ci0) * plane_entries,
                              dram=part.addr + (lo - start) * part.plane(b)
                              + (first_row * part.w + first_col) * b,
                              blocks=hi - lo, rows=nin, cols=ncols, row_stride=part.w * b * row_stride_rows,
                              block_stride=part.plane(b), pad_top=ptop, pad_bottom=pbot, pad_left=pleft,
                              pad_right=pright, pad_value=pad_value))
        start += nb
    return loads


def _conv_tiles(config: NPUConfig, parts, y: Activation, plan: ConvPlan, *, weights: int, params: int,
                kh: int, kw: int, stride, pads, pad_value: int, zero_point: int, act_min: int,
                act_max: int, rounding: Rounding, dilation=(1, 1)) -> list[_Tile]:
    b = config.cols
    half = _halves(config)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation, "dilation")
    x = parts[0]
    cib, cob = sum(p.blocks(b) for p in parts), y.blocks(b)
    th, cob_t, chunk = plan.rows_per_tile, plan.out_blocks_per_tile, plan.in_blocks_per_step
    wgt_entry, par_entry = b * b, 4 * b
    taps = tap_groups(kh, kw, (dh, dw))
    before = list(itertools.accumulate((g.taps for g in taps), initial=0))   # taps of earlier groups
    groups = [(g, min(cob_t, cob - g)) for g in range(0, cob, cob_t)]
    rows = [(r, min(th, y.h - r)) for r in range(0, y.h, th)]
    chunks = [(c, min(chunk, cib - c)) for c in range(0, cib, chunk)]
    tw = plan.cols_per_tile or y.w
    cols = [(c, min(tw, y.w - c)) for c in range(0, y.w, tw)]
    order = itertools.product(groups, rows, cols) if plan.groups_outer else \
        ((g, r, c) for r, g, c in itertools.product(rows, groups, cols))
    tiles: list[_Tile] = []
    step_index, wgt_half, par_half = 0, 1, 1
    loaded_wgt = loaded_par = None
    resident_groups: set = set()
    skip_rows = kh == 1 and sh > 1 and pads[0] == 0 and pads[1] == 0
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1

    def weight_loads(co0, nco, ci0, nci, sram_of):
        # tap group g's weights are [cob][cib][g.kh][g.kw] entries from weights + cob*cib*before[g]
        return [Load(buffer=Buffer.WGT, sram=sram_of(k),
                     dram=weights + (cob * cib * before[k] + (co0 * cib + ci0) * g.taps) * wgt_entry,
                     blocks=nco, rows=1, cols=nci * g.taps, block_stride=cib * g.taps * wgt_entry)
                for k, g in enumerate(taps)]

    for (co0, nco), (oh0, nrows), (ow0, ncols) in order:
        if plan.cols_per_tile:      # a column range: its own columns and padding
            first_col, in_cols, pleft, pright, skip_col = _input_span(x.w, ow0, ncols, sw, ekw, pads[2])
        else:
            first_col, in_cols, pleft, pright, skip_col = 0, x.w, pads[2], pads[3], 0
        q = pleft + in_cols + pright
        o = len(tiles)
        acc_base, out_base = (o % 2) * half["acc"], (o % 2) * half["out"]
        steps = []
        for ci0, nci in chunks:
            loads: list[Load] = []
            if plan.weights_resident:
                # resident weights: group g's out blocks, K chunk c, at their own place ([co][ci][kh][kw]
                # per (group, chunk), so one CONV reads them), loaded at the first step that needs them
                def wgt_at(k, co0=co0, ci0=ci0, nco=nco):
                    return cob * cib * before[k] + (co0 * cib + ci0 * nco) * taps[k].taps
                if (co0, ci0) not in resident_groups:
                    resident_groups.add((co0, ci0))
                    loads += weight_loads(co0, nco, ci0, nci, wgt_at)
                if co0 not in resident_groups:
                    resident_groups.add(co0)
                    loads.append(Load(buffer=Buffer.PARAM, sram=3 * co0, dram=params + 3 * co0 * par_entry,
                                      blocks=1, rows=1, cols=3 * nco))
                par_addr = 3 * co0
            else:
                wgt_key = (co0, nco, ci0, nci)
                new_weights = wgt_key != loaded_wgt
                if new_weights:
                    wgt_half ^= 1
                    loaded_wgt = wgt_key
                if (co0, nco) != loaded_par:
                    par_half ^= 1

                def wgt_at(k, base=wgt_half * half["wgt"], nco=nco, nci=nci):
                    return base + nco * nci * before[k]
                if new_weights:
                    loads += weight_loads(co0, nco, ci0, nci, wgt_at)
                if (co0, nco) != loaded_par:
                    loaded_par = (co0, nco)
                    loads.append(Load(buffer=Buffer.PARAM, sram=par_half * half["param"],
                                      dram=params + 3 * co0 * par_entry, blocks=1, rows=1, cols=3 * nco))
                par_addr = par_half * half["param"]
            if skip_rows:       # 1x1 kernel, vertical stride: load only the rows it reads
                first_row, nin, ptop, pbot, skip, stride_h = oh0 * sh, nrows, 0, 0, 0, 1
            else:
                first_row, nin, ptop, pbot, skip = _input_band(x, oh0, nrows, sh, ekh, pads[0])
                stride_h = sh
            inp_base = 0 if plan.input_resident else (step_index % 2) * half["inp"]
            p = ptop + nin + pbot
            if not plan.input_resident or step_index == 0:
                loads += _input_loads(config, parts, ci0, nci, inp_base, p * q, first_row, nin,
                                      sh if skip_rows else 1, (first_col, in_cols, pleft, pright), ptop, pbot,
                                      pad_value)
            convs = [Conv(mode=ConvMode.MAC, out_blocks=nco, in_blocks=nci, kh=g.kh, kw=g.kw,
                          stride_h=stride_h, stride_w=sw, out_h=nrows, out_w=ncols, acc=acc_base,
                          wgt=wgt_at(k),
                          inp=inp_base + (skip + g.i0 * dh) * q + skip_col + g.j0 * dw, inp_row=q,
                          inp_block=p * q, accumulate=int(ci0 > 0 or k > 0))
                     for k, g in enumerate(taps)]
            steps.append(_Step(loads, convs))
            step_index += 1
        outstage = [Requant(out=out_base, acc=acc_base, param=par_addr, blocks=nco, count=nrows * ncols,
                            zero_point=zero_point, act_min=act_min, act_max=act_max, rounding=rounding)]
        stores = [_store_rows(config, y, out_base, co0, nco, oh0, nrows, ow0, ncols)]
        tiles.append(_Tile(steps, outstage, stores))
    return tiles


def conv2d(config: NPUConfig, x, y: Activation, *, weights: int, params: int, kh: int,
           kw: int, stride, pads: tuple[int, int, int, int], pad_value: int, zero_point: int,
           act_min: int = -128, act_max: int = 127, rounding: Rounding = Rounding.FIXED, layer_id: int = 0,
           first: bool = False, name: str = "conv", plan: ConvPlan | None = None,
           dilation=(1, 1)) -> list[Insn]:
    """CONV_2D / FULLY_CONNECTED.  `weights` is the DRAM address of layout.pack_conv_weights' output
    (for these `tap_groups(kh, kw, dilation)`), `params` of pack_requant_params' (rounding fixed,
    CONV_2D) or pack_requant_params_double's (rounding double, FULLY_CONNECTED), with the bias
    already folded with the input zero point.  pads = (top, bottom, left, right); pad_value = the
    input zero point; `stride`, `dilation`: an int or a (vertical, horizontal) pair.  `x` is one
    Activation or a sequence of them (a channel gather: their blocks, in order, are the input's
    channel blocks).  `plan`: plan_conv's (computed here when not given)."""
    parts = (x,) if isinstance(x, Activation) else tuple(x)
    if any((p.h, p.w) != (parts[0].h, parts[0].w) for p in parts):
        raise LoweringError(f"{name}: input parts of different sizes {[(p.h, p.w) for p in parts]}")
    b = config.cols
    shape = Activation(0, parts[0].h, parts[0].w, sum(p.blocks(b) for p in parts) * b) if len(parts) > 1 \
        else parts[0]
    plan = plan or plan_conv(config, shape, y.h, y.w, y.c, kh, kw, stride, pads, name, dilation)
    tiles = _conv_tiles(config, parts, y, plan, weights=weights, params=params, kh=kh, kw=kw, stride=stride,
                        dilation=dilation, pads=pads, pad_value=pad_value, zero_point=zero_point,
                        act_min=act_min, act_max=act_max, rounding=rounding)
    return _finish_layer(_emit(tiles), layer_id, first, config)


