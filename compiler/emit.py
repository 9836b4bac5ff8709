"""Tile-level code generation: one layer's NPU instructions, tiled to the scratchpads and double
buffered with dependency tokens.

A layer is a sequence of *steps* (loads into one half of the input/weight scratchpads, then the
CONV instructions that read them) grouped into *output tiles* (the vector op that narrows the
accumulators into one half of the output scratchpad, then the STOREs).  Token protocol:

* load of step s waits (pop_next) for "step s-2 is done with its half" (s >= 2), and its last
  load pushes "data ready" (push_next);
* compute pops "data ready" before the step's first CONV; the step's last compute instruction
  pushes "half free" (push_prev) when a step s+2 exists;
* the output stage of tile o waits (pop_next) for "store of tile o-2 done" (o >= 2) and pushes
  "result ready"; the tile's first STORE pops it, its last STORE pushes "output half free" when a
  tile o+2 exists.

Layers are separated by a MARKER (their trace id) that waits for the previous layer's last store
and releases the first load of the next layer, so DRAM read-after-write between layers is safe.
Every pop is matched by a push earlier in program order, so in-order fetch cannot deadlock.

Activations are channel-blocked in DRAM ([C/b][H][W][b] int8, b = config.cols); see hdl/isa.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import (
    Add,
    Buffer,
    Conv,
    ConvMode,
    Insn,
    Load,
    Marker,
    Mul,
    Narrow,
    Requant,
    Rounding,
    Store,
)
from softnpu.hdl.timing import dma_cycles

__all__ = ["Activation", "LoweringError", "conv2d", "pool2d", "mean", "elementwise", "layer_marker",
           "coalesce"]


class LoweringError(ValueError):
    """A layer that cannot be mapped on this NPU configuration; says which layer and why."""


@dataclasses.dataclass(frozen=True)
class Activation:
    """An int8 activation tensor in device memory, channel-blocked.  `block_stride` may exceed
    h*w*b when the tensor is a channel slice of a wider one (an in-place concatenation)."""
    addr: int
    h: int
    w: int
    c: int
    block_stride: int | None = None

    def blocks(self, b: int) -> int:
        return -(-self.c // b)

    def plane(self, b: int) -> int:
        return self.block_stride if self.block_stride is not None else self.h * self.w * b

    def nbytes(self, b: int) -> int:
        return self.blocks(b) * self.h * self.w * b

    def channel_slice(self, b: int, first_block: int, c: int) -> Activation:
        """The view of `c` channels starting at channel block `first_block` (for concatenation)."""
        return Activation(self.addr + first_block * self.plane(b), self.h, self.w, c, self.plane(b))


# ----------------------------------------------------------------------------------------------
# Steps, tiles and tokens
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Step:
    loads: list[Load]
    computes: list[Insn]


@dataclasses.dataclass
class _Tile:
    steps: list[_Step]
    outstage: list[Insn]
    stores: list[Store]


def _flag(insn: Insn, **flags) -> Insn:
    for name, value in flags.items():
        if value:
            setattr(insn, name, True)
    return insn


def _emit(tiles: list[_Tile]) -> list[Insn]:
    steps = [s for t in tiles for s in t.steps]
    n_steps, n_tiles = len(steps), len(tiles)
    program: list[Insn] = []
    s = 0
    for o, tile in enumerate(tiles):
        for k, step in enumerate(tile.steps):
            if not step.loads or not step.computes:
                raise AssertionError("a step needs loads and computes")
            _flag(step.loads[0], pop_next=s >= 2)
            _flag(step.loads[-1], push_next=True)
            program += step.loads
            _flag(step.computes[0], pop_prev=True)
            last_of_tile = k == len(tile.steps) - 1
            if not last_of_tile:
                _flag(step.computes[-1], push_prev=s + 2 < n_steps)
            program += step.computes
            if last_of_tile:
                _flag(tile.outstage[0], pop_next=o >= 2)
                _flag(tile.outstage[-1], push_next=True, push_prev=s + 2 < n_steps)
                program += tile.outstage
                _flag(tile.stores[0], pop_prev=True)
                _flag(tile.stores[-1], push_prev=o + 2 < n_tiles)
                program += tile.stores
            s += 1
    return program


def layer_marker(layer_id: int, first: bool) -> Marker:
    """The barrier before a layer (see the module docstring): waits for the previous layer's last
    store unless this is the first layer, and releases this layer's first load."""
    return Marker(id=layer_id, pop_next=not first, push_prev=True)


_LOAD_ENTRY = {Buffer.INP: "inp", Buffer.WGT: "wgt", Buffer.PARAM: "param"}


def coalesce(config: NPUConfig, insn: Insn) -> Insn:
    """Merge a DMA's rows (and then its blocks) into one longer row when they are contiguous in DRAM
    and the scratchpad layout is the same (no padding): fewer, longer runs pay fewer partial
    bursts and per-row costs.  Returns the instruction, changed in place."""
    if isinstance(insn, Load):
        if insn.pad_top or insn.pad_bottom or insn.pad_left or insn.pad_right:
            return insn
        entry = config.entry_bytes(_LOAD_ENTRY[Buffer(insn.buffer)])
    elif isinstance(insn, Store):
        entry = config.rows
    else:
        return insn
    if insn.rows > 1 and insn.row_stride == insn.cols * entry and insn.rows * insn.cols < 1 << 16:
        insn.cols, insn.rows = insn.rows * insn.cols, 1
    if insn.rows == 1 and insn.blocks > 1 and insn.block_stride == insn.cols * entry \
            and insn.blocks * insn.cols < 1 << 16:
        insn.cols, insn.blocks = insn.blocks * insn.cols, 1
    return insn


def _finish_layer(program: list[Insn], layer_id: int, first: bool, config: NPUConfig) -> list[Insn]:
    for insn in program:
        coalesce(config, insn)
    first_load = next(i for i in program if isinstance(i, Load))
    first_load.pop_next = True
    last_store = [i for i in program if isinstance(i, Store)][-1]
    last_store.push_prev = True
    return [layer_marker(layer_id, first)] + program


def _halves(config: NPUConfig) -> dict[str, int]:
    return {name: config.depth(name) // 2 for name in ("inp", "wgt", "acc", "out", "param")}


def _store_rows(config, y: Activation, sram: int, cb0: int, nblocks: int, r0: int, rows: int) -> Store:
    b = config.cols
    return Store(sram=sram, dram=y.addr + cb0 * y.plane(b) + r0 * y.w * b, blocks=nblocks, rows=rows,
                 cols=y.w, row_stride=y.w * b, block_stride=y.plane(b))


def _input_rows(x: Activation, oh0: int, th: int, stride: int, kh: int, pad_top: int):
    """DRAM rows [first, first+count) feeding output rows [oh0, oh0+th), the pads they need, and
    the loaded rows before the band's first (`kh` is the kernel's extent in input rows:
    (kh - 1) * dilation + 1).  A band wholly inside the padding (an explicit PAD wider than the
    kernel) still loads one real row, which no tap reads: one row more than the band."""
    lo = oh0 * stride - pad_top
    hi = (oh0 + th - 1) * stride - pad_top + kh - 1
    first, last = max(lo, 0), min(hi, x.h - 1)
    if last < first:
        if hi < 0:                  # above the input: the band, then row 0
            return 0, 1, hi - lo + 1, 0, 0
        return x.h - 1, 1, 0, hi - lo + 1, 1        # below: the last row, then the band
    return first, last - first + 1, first - lo, hi - last, 0


def _band_rows(th: int, stride: int, kh: int, pads) -> int:
    """Rows of the input scratchpad a band for `th` output rows may take (see _input_rows)."""
    return (th - 1) * stride + kh + (1 if max(pads[0], pads[1]) >= kh else 0)


def _pair(v, name: str = "stride") -> tuple[int, int]:
    """(vertical, horizontal) from an int or a pair."""
    pair = (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)
    if len(pair) != 2 or min(pair) < 1:
        raise LoweringError(f"{name} {v!r}: need one positive int or a (vertical, horizontal) pair")
    return pair


TAP_SPAN = 15     # the largest kh/kw one CONV takes (its 4-bit fields)


@dataclasses.dataclass(frozen=True)
class TapGroup:
    """A rectangle of kernel taps that one CONV runs: kernel rows i0..i0+kh-1 and columns
    j0..j0+kw-1, adjacent in the input (dilation 1 inside the group).  A kernel wider than a CONV
    takes, or a dilated one, runs as several groups accumulating into the same accumulators."""
    i0: int
    j0: int
    kh: int
    kw: int

    @property
    def taps(self) -> int:
        return self.kh * self.kw


def tap_groups(kh: int, kw: int, dilation=(1, 1)) -> tuple[TapGroup, ...]:
    """The CONVs of a kh x kw kernel at `dilation` (rows, columns): with dilation 1, rectangles of
    at most 15x15 taps; along a dilated axis one tap per group."""
    dh, dw = _pair(dilation, "dilation")

    def spans(k, d):
        return [(a, min(TAP_SPAN, k - a)) for a in range(0, k, TAP_SPAN)] if d == 1 else [(a, 1) for a in range(k)]
    return tuple(TapGroup(i0, j0, gh, gw) for i0, gh in spans(kh, dh) for j0, gw in spans(kw, dw))


# ----------------------------------------------------------------------------------------------
# Convolution and fully-connected layers
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How a convolution is tiled: output rows per tile, output channel blocks per tile, input
    channel blocks per step (the K split), the loop order and what stays in a scratchpad.

    * weights_resident: every weight of the layer fits the weight scratchpad; each out-block
      group's weights (and parameters) are loaded once, at the first step that needs them;
    * input_resident: one row tile and one K step cover the layer, so the (padded) input is loaded
      once, into the whole input scratchpad, and every out-block group reads it from there.
    """
    rows_per_tile: int
    out_blocks_per_tile: int
    in_blocks_per_step: int
    groups_outer: bool          # loop co-groups outside row tiles (input re-read per group)
    weights_resident: bool
    estimated_cycles: int
    input_resident: bool = False


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
    sh = stride[0]
    ekh = (kh - 1) * dilation[0] + 1
    q = pads[2] + x.w + pads[3]
    resident = cob * cib * kh * kw <= config.wgt_depth and 3 * cob <= config.param_depth // 2
    candidates = []
    chunk_options = sorted({-(-cib // k) for k in range(1, cib + 1)}, reverse=True)[:24]
    for chunk in chunk_options:
        n_chunks = -(-cib // chunk)
        for cob_t in range(1, min(cob, 255) + 1):
            if not resident and cob_t * chunk * kh * kw > half["wgt"]:
                break
            if 3 * cob_t > half["param"]:
                break
            th_max = min(out_h, half["acc"] // (cob_t * out_w), half["out"] // (cob_t * out_w))
            if th_max < 1:
                break
            for input_resident in (False, True):
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
                    cost = _conv_cost(config, x, out_h, out_w, cob, cib, chunk, cob_t, th, kh, kw, sh, ekh,
                                      resident, groups_outer, input_resident)
                    candidates.append(ConvPlan(th, cob_t, chunk, groups_outer, resident, cost,
                                               input_resident))
    if not candidates:
        raise LoweringError(f"one output row needs {ekh} input rows of {q} entries per input "
                            f"block, more than half the input scratchpad ({half['inp']} entries) of "
                            f"config {config.name!r}: width tiling is not implemented")
    candidates.sort(key=lambda p: p.estimated_cycles)
    if len(candidates) == 1:
        return candidates[0]
    from softnpu.compiler.cycles import estimate

    y = Activation(0, out_h, out_w, cout)
    scheduled = []
    for plan in candidates[:_REFINE]:
        tiles = _conv_tiles(config, (x,), y, plan, weights=0, params=0, kh=kh, kw=kw, stride=stride,
                            dilation=dilation, pads=pads, pad_value=0, zero_point=0, act_min=-128, act_max=127,
                            rounding=Rounding.FIXED)
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
                 first_row: int, nin: int, row_stride_rows: int, pads, ptop: int, pbot: int,
                 pad_value: int) -> list[Load]:
    """The loads of input blocks [ci0, ci0+nci) of a (possibly multi-part) input into consecutive
    padded planes of `plane_entries` entries from `sram`."""
    b = config.cols
    loads, start = [], 0
    for part in parts:
        nb = part.blocks(b)
        lo, hi = max(ci0, start), min(ci0 + nci, start + nb)
        if lo < hi:
            loads.append(Load(buffer=Buffer.INP, sram=sram + (lo - ci0) * plane_entries,
                              dram=part.addr + (lo - start) * part.plane(b) + first_row * part.w * b,
                              blocks=hi - lo, rows=nin, cols=part.w, row_stride=part.w * b * row_stride_rows,
                              block_stride=part.plane(b), pad_top=ptop, pad_bottom=pbot, pad_left=pads[2],
                              pad_right=pads[3], pad_value=pad_value))
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
    q = pads[2] + x.w + pads[3]
    wgt_entry, par_entry = b * b, 4 * b
    taps = tap_groups(kh, kw, (dh, dw))
    before = list(itertools.accumulate((g.taps for g in taps), initial=0))   # taps of earlier groups
    groups = [(g, min(cob_t, cob - g)) for g in range(0, cob, cob_t)]
    rows = [(r, min(th, y.h - r)) for r in range(0, y.h, th)]
    chunks = [(c, min(chunk, cib - c)) for c in range(0, cib, chunk)]
    order = itertools.product(groups, rows) if plan.groups_outer else \
        ((g, r) for r, g in itertools.product(rows, groups))
    tiles: list[_Tile] = []
    step_index, wgt_half, par_half = 0, 1, 1
    loaded_wgt = loaded_par = None
    resident_groups: set = set()
    skip_rows = kh == 1 and sh > 1 and pads[0] == 0 and pads[1] == 0
    ekh = (kh - 1) * dh + 1

    def weight_loads(co0, nco, ci0, nci, sram_of):
        # tap group g's weights are [cob][cib][g.kh][g.kw] entries from weights + cob*cib*before[g]
        return [Load(buffer=Buffer.WGT, sram=sram_of(k),
                     dram=weights + (cob * cib * before[k] + (co0 * cib + ci0) * g.taps) * wgt_entry,
                     blocks=nco, rows=1, cols=nci * g.taps, block_stride=cib * g.taps * wgt_entry)
                for k, g in enumerate(taps)]

    for (co0, nco), (oh0, nrows) in order:
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
                first_row, nin, ptop, pbot, skip = _input_rows(x, oh0, nrows, sh, ekh, pads[0])
                stride_h = sh
            inp_base = 0 if plan.input_resident else (step_index % 2) * half["inp"]
            p = ptop + nin + pbot
            if not plan.input_resident or step_index == 0:
                loads += _input_loads(config, parts, ci0, nci, inp_base, p * q, first_row, nin,
                                      sh if skip_rows else 1, pads, ptop, pbot, pad_value)
            convs = [Conv(mode=ConvMode.MAC, out_blocks=nco, in_blocks=nci, kh=g.kh, kw=g.kw, stride_h=stride_h,
                          stride_w=sw, out_h=nrows, out_w=y.w, acc=acc_base, wgt=wgt_at(k),
                          inp=inp_base + (skip + g.i0 * dh) * q + g.j0 * dw, inp_row=q, inp_block=p * q,
                          accumulate=int(ci0 > 0 or k > 0))
                     for k, g in enumerate(taps)]
            steps.append(_Step(loads, convs))
            step_index += 1
        outstage = [Requant(out=out_base, acc=acc_base, param=par_addr, blocks=nco, count=nrows * y.w,
                            zero_point=zero_point, act_min=act_min, act_max=act_max, rounding=rounding)]
        stores = [_store_rows(config, y, out_base, co0, nco, oh0, nrows)]
        tiles.append(_Tile(steps, outstage, stores))
    return tiles


def conv2d(config: NPUConfig, x, y: Activation, *, weights: int, params: int, kh: int,
           kw: int, stride, pads: tuple[int, int, int, int], pad_value: int, zero_point: int,
           act_min: int = -128, act_max: int = 127, rounding: Rounding = Rounding.FIXED, layer_id: int = 0,
           first: bool = False, name: str = "conv", plan: ConvPlan | None = None, dilation=(1, 1)) -> list[Insn]:
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


# ----------------------------------------------------------------------------------------------
# Pooling, MEAN and element-wise layers
# ----------------------------------------------------------------------------------------------
def _window_counts(size: int, out: int, k: int, stride: int, pad_before: int) -> list[int]:
    """In-bounds taps of each output position's window along one axis (TFLite's filter_x_end -
    filter_x_start)."""
    return [min(k, size - (o * stride - pad_before)) - max(0, pad_before - o * stride) for o in range(out)]


def _runs(values: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(start, length, value) of the runs of equal values in values[lo:hi]."""
    runs = []
    for i in range(lo, hi):
        if runs and values[i] == runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, values[i])
        else:
            runs.append((i, 1, values[i]))
    return runs


def pool2d(config: NPUConfig, x: Activation, y: Activation, *, mode: ConvMode, kh: int, kw: int,
           stride, pads: tuple[int, int, int, int], pad_value: int, divisor: int | None,
           act_min: int = -128, act_max: int = 127, layer_id: int = 0, first: bool = False,
           name: str = "pool") -> list[Insn]:
    """MAX_POOL_2D (mode MAX, divisor 1, pad_value -128) or AVERAGE_POOL_2D (mode SUM).  An average
    with a constant window count passes divisor = kh*kw; divisor=None divides each output by its
    window's count of in-bounds elements (TFLite's SAME average pooling; pad_value must be 0): the
    tile is cut into rectangles of equal count, each narrowed with its own divisor.  `stride`: an
    int or a (vertical, horizontal) pair; kernels larger than 15 run as several window CONVs."""
    b = config.cols
    half = _halves(config)
    sh, sw = _pair(stride)
    nb = x.blocks(b)
    q = pads[2] + x.w + pads[3]
    if divisor is None and pad_value != 0:
        raise LoweringError(f"{name}: counting in-bounds elements needs pad_value 0, got {pad_value}")
    rows_count = _window_counts(x.h, y.h, kh, sh, pads[0]) if divisor is None else [divisor] * y.h
    cols_count = _window_counts(x.w, y.w, kw, sw, pads[2]) if divisor is None else [1] * y.w
    taps = tap_groups(kh, kw)
    best = None
    for cb_t in range(1, nb + 1):
        th = min(y.h, half["acc"] // (cb_t * y.w), half["out"] // (cb_t * y.w))
        while th >= 1 and cb_t * _band_rows(th, sh, kh, pads) * q > half["inp"]:
            th -= 1
        if th >= 1:
            tiles = -(-nb // cb_t) * -(-y.h // th)
            if best is None or tiles < best[0]:
                best = (tiles, cb_t, th)
    if best is None:
        raise LoweringError(f"{name}: a {kh}-row window of {q} entries does not fit half the input "
                            f"scratchpad ({half['inp']} entries)")
    _, cb_t, th = best
    col_runs = _runs(cols_count, 0, y.w)
    tiles = []
    for cb0 in range(0, nb, cb_t):
        ncb = min(cb_t, nb - cb0)
        for oh0 in range(0, y.h, th):
            nrows = min(th, y.h - oh0)
            o = len(tiles)
            inp_base, acc_base, out_base = ((o % 2) * half[k] for k in ("inp", "acc", "out"))
            first_row, nin, ptop, pbot, skip = _input_rows(x, oh0, nrows, sh, kh, pads[0])
            p = ptop + nin + pbot
            src = x.addr + cb0 * x.plane(b) + first_row * x.w * b
            load = Load(buffer=Buffer.INP, sram=inp_base, dram=src,
                        blocks=ncb, rows=nin, cols=x.w, row_stride=x.w * b, block_stride=x.plane(b),
                        pad_top=ptop, pad_bottom=pbot, pad_left=pads[2], pad_right=pads[3],
                        pad_value=pad_value)
            convs, narrows, stores, at = [], [], [], 0
            # rectangles of outputs whose windows hold the same count (one rectangle if constant)
            for r0, rh, rcount in _runs(rows_count, oh0, oh0 + nrows):
                for c0, cw, ccount in (col_runs if divisor is None else [(0, y.w, 1)]):
                    for k, g in enumerate(taps):
                        convs.append(Conv(mode=mode, out_blocks=1, in_blocks=ncb, kh=g.kh, kw=g.kw, stride_h=sh,
                                          stride_w=sw, out_h=rh, out_w=cw, acc=acc_base + at,
                                          inp=inp_base + (skip + (r0 - oh0) * sh + g.i0) * q + c0 * sw + g.j0,
                                          inp_row=q, inp_block=p * q, accumulate=int(k > 0)))
                    narrows.append(Narrow(out=out_base + at, acc=acc_base + at, blocks=ncb, count=rh * cw,
                                          divisor=rcount * ccount, act_min=act_min, act_max=act_max))
                    stores.append(Store(sram=out_base + at, dram=y.addr + cb0 * y.plane(b) + (r0 * y.w + c0) * b,
                                        blocks=ncb, rows=rh, cols=cw, row_stride=y.w * b,
                                        block_stride=y.plane(b)))
                    at += ncb * rh * cw
            tiles.append(_Tile([_Step([load], convs)], narrows, stores))
    return _finish_layer(_emit(tiles), layer_id, first, config)


def mean(config: NPUConfig, x: Activation, y: Activation, *, params: int, zero_point: int,
         act_min: int = -128, act_max: int = 127, layer_id: int = 0, first: bool = False,
         name: str = "mean") -> list[Insn]:
    """MEAN over H and W: per-lane window sums (split into windows of at most 15x15, and into row
    bands when a plane does not fit half the input scratchpad), then REQUANT with the per-tensor
    (bias=-zp*N, multiplier, shift) at `params` (3 lane-replicated entries)."""
    b = config.cols
    half = _halves(config)
    nb = x.blocks(b)
    if x.w > half["inp"]:
        raise LoweringError(f"{name}: a row of {x.w} entries does not fit half the input scratchpad "
                            f"({half['inp']} entries)")
    band = min(x.h, half["inp"] // x.w)           # rows per step
    cb_t = max(1, min(nb, half["inp"] // (band * x.w), half["acc"], half["out"]))
    tiles = []
    for cb0 in range(0, nb, cb_t):
        ncb = min(cb_t, nb - cb0)
        o = len(tiles)
        acc_base, out_base = ((o % 2) * half[k] for k in ("acc", "out"))
        steps = []
        for h0 in range(0, x.h, band):
            nh = min(band, x.h - h0)
            inp_base = (len(steps) + sum(len(t.steps) for t in tiles)) % 2 * half["inp"]
            loads = [Load(buffer=Buffer.INP, sram=inp_base, dram=x.addr + cb0 * x.plane(b) + h0 * x.w * b,
                          blocks=ncb, rows=nh, cols=x.w, row_stride=x.w * b, block_stride=x.plane(b))]
            if o == 0 and h0 == 0:
                loads.insert(0, Load(buffer=Buffer.PARAM, sram=0, dram=params, blocks=1, rows=1, cols=3))
            computes = []
            for r0 in range(0, nh, TAP_SPAN):
                for c0 in range(0, x.w, TAP_SPAN):
                    computes.append(Conv(mode=ConvMode.SUM, out_blocks=1, in_blocks=ncb,
                                         kh=min(TAP_SPAN, nh - r0), kw=min(TAP_SPAN, x.w - c0), stride_h=1,
                                         stride_w=1, out_h=1, out_w=1, acc=acc_base,
                                         inp=inp_base + r0 * x.w + c0, inp_row=x.w, inp_block=nh * x.w,
                                         accumulate=int(bool(computes) or h0 > 0)))
            steps.append(_Step(loads, computes))
        # one param triple serves every block: point each block at the same entries via blocks=1 loops
        outstage = [Requant(out=out_base + j, acc=acc_base + j, param=0, blocks=1, count=1,
                            zero_point=zero_point, act_min=act_min, act_max=act_max) for j in range(ncb)]
        stores = [Store(sram=out_base, dram=y.addr + cb0 * y.plane(b), blocks=ncb, rows=1, cols=1,
                        row_stride=b, block_stride=y.plane(b))]
        tiles.append(_Tile(steps, outstage, stores))
    return _finish_layer(_emit(tiles), layer_id, first, config)


def elementwise(config: NPUConfig, op: type[Add] | type[Mul], a: Activation, y: Activation, *,
                params: int, zero_point: int, b: Activation | None = None, b_const: int | None = None,
                act_min: int = -128, act_max: int = 127, layer_id: int = 0, first: bool = False,
                name: str = "add") -> list[Insn]:
    """ADD or MUL of two activations (b) or of an activation and a per-channel constant vector
    (b_const: DRAM address of one lane-vector entry per channel block).  `params` holds the
    op's lane-replicated parameters (Add.PARAMS / Mul.PARAMS order)."""
    bw = config.cols
    half = _halves(config)
    nb, plane_entries = a.blocks(bw), a.h * a.w
    n_params = len(op.PARAMS)
    per_block_inp = plane_entries * (2 if b is not None else 1)
    rows_t = a.h
    while rows_t >= 1 and (rows_t * a.w * (2 if b is not None else 1) > half["inp"]
                           or rows_t * a.w > half["out"]):
        rows_t -= 1
    if rows_t < 1:
        raise LoweringError(f"{name}: one row of {a.w} entries does not fit the scratchpads")
    cb_t = max(1, min(nb, half["inp"] // (rows_t * a.w * (2 if b is not None else 1)),
                      half["out"] // (rows_t * a.w)))
    if rows_t < a.h:
        cb_t = 1
    del per_block_inp
    const_half = config.param_depth // 2
    if b_const is not None and (const_half + nb > config.param_depth or n_params > const_half):
        raise LoweringError(f"{name}: {nb} constant blocks do not fit the parameter scratchpad")
    tiles = []
    for cb0 in range(0, nb, cb_t):
        ncb = min(cb_t, nb - cb0)
        for r0 in range(0, a.h, rows_t):
            nrows = min(rows_t, a.h - r0)
            o = len(tiles)
            inp_base, out_base = (o % 2) * half["inp"], (o % 2) * half["out"]
            count = nrows * a.w
            loads = []
            if o == 0:
                loads.append(Load(buffer=Buffer.PARAM, sram=0, dram=params, blocks=1, rows=1, cols=n_params))
                if b_const is not None:
                    loads.append(Load(buffer=Buffer.PARAM, sram=const_half, dram=b_const, blocks=1, rows=1,
                                      cols=nb))
            src = a.addr + cb0 * a.plane(bw) + r0 * a.w * bw
            loads.append(Load(buffer=Buffer.INP, sram=inp_base, dram=src,
                              blocks=ncb, rows=nrows, cols=a.w, row_stride=a.w * bw,
                              block_stride=a.plane(bw)))
            if b is not None:
                loads.append(Load(buffer=Buffer.INP, sram=inp_base + ncb * count,
                                  dram=b.addr + cb0 * b.plane(bw) + r0 * b.w * bw, blocks=ncb, rows=nrows,
                                  cols=b.w, row_stride=b.w * bw, block_stride=b.plane(bw)))
                compute = op(out=out_base, a=inp_base, b=inp_base + ncb * count, param=0, blocks=ncb,
                             count=count, zero_point=zero_point, act_min=act_min, act_max=act_max)
            else:
                compute = op(out=out_base, a=inp_base, b=const_half + cb0, b_param=1, param=0, blocks=ncb,
                             count=count, zero_point=zero_point, act_min=act_min, act_max=act_max)
            # the vector op is both the step's compute and the tile's output stage
            tiles.append(_Tile([_Step(loads, [compute])], [compute],
                               [_store_rows(config, y, out_base, cb0, ncb, r0, nrows)]))
    return _finish_layer(_emit_fused(tiles), layer_id, first, config)


def _emit_fused(tiles: list[_Tile]) -> list[Insn]:
    """_emit for layers whose single vector op reads the input and writes the output."""
    n = len(tiles)
    program: list[Insn] = []
    for o, tile in enumerate(tiles):
        step = tile.steps[0]
        _flag(step.loads[0], pop_next=o >= 2)
        _flag(step.loads[-1], push_next=True)
        op = step.computes[0]
        _flag(op, pop_prev=True, pop_next=o >= 2, push_next=True, push_prev=o + 2 < n)
        _flag(tile.stores[0], pop_prev=True)
        _flag(tile.stores[-1], push_prev=o + 2 < n)
        program += step.loads + [op] + tile.stores
    return program
