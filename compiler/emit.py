"""Tile-level code generation: one layer's NPU instructions, tiled to the scratchpads and double
buffered with dependency tokens (the skeleton and its token protocol: compiler/tiling.py).

This module is the emitters' one entry point: convolutions and fully-connected layers
(compiler/emit_conv.py: `plan_conv`, `conv2d`), and here pooling (`pool2d`), `mean` and the
element-wise ADD/MUL (`elementwise`).
"""

from __future__ import annotations

import itertools

from softnpu.compiler.emit_conv import ConvPlan, _plan_conv, conv2d, plan_conv
from softnpu.compiler.tiling import (
    TAP_SPAN,
    Activation,
    LoweringError,
    TapGroup,
    _band_rows,
    _emit,
    _emit_fused,
    _finish_layer,
    _halves,
    _input_band,
    _input_rows,
    _input_span,
    _pair,
    _Step,
    _store_rows,
    _Tile,
    coalesce,
    layer_marker,
    tap_groups,
)
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Add, Buffer, Conv, ConvMode, Insn, Load, Mul, Narrow, Requant, Store

__all__ = ["Activation", "LoweringError", "ConvPlan", "plan_conv", "conv2d", "pool2d", "mean", "elementwise",
           "layer_marker", "coalesce", "TapGroup", "tap_groups"]
# re-exported: the planner's memo (benchmarks clear it) and the skeleton other emitters build on
_ = (_plan_conv, _input_rows)


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

    def fit(tw: int, q: int):
        best = None
        for cb_t in range(1, nb + 1):
            th = min(y.h, half["acc"] // (cb_t * tw), half["out"] // (cb_t * tw))
            while th >= 1 and cb_t * _band_rows(th, sh, kh, pads) * q > half["inp"]:
                th -= 1
            if th >= 1:
                tiles = -(-nb // cb_t) * -(-y.h // th)
                if best is None or tiles < best[0]:
                    best = (tiles, cb_t, th)
        return best
    tw, best = y.w, fit(y.w, q)
    while best is None and tw > 1:      # width tiling: the widest column range whose band fits
        fits_inp = (half["inp"] // _band_rows(1, sh, kh, pads) - kw) // sw + 1
        tw = min(tw - 1, half["acc"], half["out"], fits_inp)
        best = fit(tw, _band_rows(tw, sw, kw, pads[2:])) if tw >= 1 else None
    if best is None:
        raise LoweringError(f"{name}: a {kh}x{kw} window does not fit half the input scratchpad "
                            f"({half['inp']} entries)")
    _, cb_t, th = best
    tiles = []
    for cb0, oh0, ow0 in itertools.product(range(0, nb, cb_t), range(0, y.h, th), range(0, y.w, tw)):
        ncb, nrows, ncols = min(cb_t, nb - cb0), min(th, y.h - oh0), min(tw, y.w - ow0)
        o = len(tiles)
        inp_base, acc_base, out_base = ((o % 2) * half[k] for k in ("inp", "acc", "out"))
        first_row, nin, ptop, pbot, skip = _input_band(x, oh0, nrows, sh, kh, pads[0])
        if tw < y.w:
            first_col, in_cols, pleft, pright, skip_col = _input_span(x.w, ow0, ncols, sw, kw, pads[2])
        else:
            first_col, in_cols, pleft, pright, skip_col = 0, x.w, pads[2], pads[3], 0
        q = pleft + in_cols + pright
        p = ptop + nin + pbot
        src = x.addr + cb0 * x.plane(b) + (first_row * x.w + first_col) * b
        load = Load(buffer=Buffer.INP, sram=inp_base, dram=src,
                    blocks=ncb, rows=nin, cols=in_cols, row_stride=x.w * b, block_stride=x.plane(b),
                    pad_top=ptop, pad_bottom=pbot, pad_left=pleft, pad_right=pright,
                    pad_value=pad_value)
        convs, narrows, stores, at = [], [], [], 0
        # rectangles of outputs whose windows hold the same count (one rectangle if constant)
        for r0, rh, rcount in _runs(rows_count, oh0, oh0 + nrows):
            for c0, cw, ccount in _runs(cols_count, ow0, ow0 + ncols):
                for k, g in enumerate(taps):
                    convs.append(Conv(mode=mode, out_blocks=1, in_blocks=ncb, kh=g.kh, kw=g.kw,
                                      stride_h=sh, stride_w=sw, out_h=rh, out_w=cw, acc=acc_base + at,
                                      inp=inp_base + (skip + (r0 - oh0) * sh + g.i0) * q + skip_col
                                      + (c0 - ow0) * sw + g.j0,
                                      inp_row=q, inp_block=p * q, accumulate=int(k > 0)))
                narrows.append(Narrow(out=out_base + at, acc=acc_base + at, blocks=ncb, count=rh * cw,
                                      divisor=rcount * ccount, act_min=act_min, act_max=act_max))
                stores.append(Store(sram=out_base + at,
                                    dram=y.addr + cb0 * y.plane(b) + (r0 * y.w + c0) * b, blocks=ncb,
                                    rows=rh, cols=cw, row_stride=y.w * b, block_stride=y.plane(b)))
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
    width = min(x.w, half["inp"])                   # columns per step (a row, or a part of one)
    band = min(x.h, half["inp"] // width)           # rows per step
    cb_t = max(1, min(nb, half["inp"] // (band * width), half["acc"], half["out"]))
    tiles = []
    for cb0 in range(0, nb, cb_t):
        ncb = min(cb_t, nb - cb0)
        o = len(tiles)
        acc_base, out_base = ((o % 2) * half[k] for k in ("acc", "out"))
        steps = []
        for h0, w0 in itertools.product(range(0, x.h, band), range(0, x.w, width)):
            nh, nw = min(band, x.h - h0), min(width, x.w - w0)
            inp_base = (len(steps) + sum(len(t.steps) for t in tiles)) % 2 * half["inp"]
            loads = [Load(buffer=Buffer.INP, sram=inp_base,
                          dram=x.addr + cb0 * x.plane(b) + (h0 * x.w + w0) * b, blocks=ncb, rows=nh, cols=nw,
                          row_stride=x.w * b, block_stride=x.plane(b))]
            if o == 0 and not steps:
                loads.insert(0, Load(buffer=Buffer.PARAM, sram=0, dram=params, blocks=1, rows=1, cols=3))
            computes = []
            for r0, c0 in itertools.product(range(0, nh, TAP_SPAN), range(0, nw, TAP_SPAN)):
                computes.append(Conv(mode=ConvMode.SUM, out_blocks=1, in_blocks=ncb,
                                     kh=min(TAP_SPAN, nh - r0), kw=min(TAP_SPAN, nw - c0), stride_h=1,
                                     stride_w=1, out_h=1, out_w=1, acc=acc_base,
                                     inp=inp_base + r0 * nw + c0, inp_row=nw, inp_block=nh * nw,
                                     accumulate=int(bool(computes) or bool(steps))))
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
    nb = a.blocks(bw)
    n_params = len(op.PARAMS)
    operands = 2 if b is not None else 1
    rows_t, cols_t = a.h, a.w
    while rows_t >= 1 and (rows_t * a.w * operands > half["inp"] or rows_t * a.w > half["out"]):
        rows_t -= 1
    if rows_t < 1:                      # a row does not fit: column ranges of one row
        rows_t, cols_t = 1, min(a.w, half["inp"] // operands, half["out"])
    cb_t = max(1, min(nb, half["inp"] // (rows_t * cols_t * operands), half["out"] // (rows_t * cols_t)))
    if rows_t < a.h or cols_t < a.w:
        cb_t = 1
    const_half = config.param_depth // 2
    if b_const is not None and (const_half + nb > config.param_depth or n_params > const_half):
        raise LoweringError(f"{name}: {nb} constant blocks do not fit the parameter scratchpad")
    tiles = []
    for cb0, r0, c0 in itertools.product(range(0, nb, cb_t), range(0, a.h, rows_t), range(0, a.w, cols_t)):
        ncb, nrows, ncols = min(cb_t, nb - cb0), min(rows_t, a.h - r0), min(cols_t, a.w - c0)
        o = len(tiles)
        inp_base, out_base = (o % 2) * half["inp"], (o % 2) * half["out"]
        count = nrows * ncols
        loads = []
        if o == 0:
            loads.append(Load(buffer=Buffer.PARAM, sram=0, dram=params, blocks=1, rows=1, cols=n_params))
            if b_const is not None:
                loads.append(Load(buffer=Buffer.PARAM, sram=const_half, dram=b_const, blocks=1, rows=1,
                                  cols=nb))
        src = a.addr + cb0 * a.plane(bw) + (r0 * a.w + c0) * bw
        loads.append(Load(buffer=Buffer.INP, sram=inp_base, dram=src,
                          blocks=ncb, rows=nrows, cols=ncols, row_stride=a.w * bw,
                          block_stride=a.plane(bw)))
        if b is not None:
            loads.append(Load(buffer=Buffer.INP, sram=inp_base + ncb * count,
                              dram=b.addr + cb0 * b.plane(bw) + (r0 * b.w + c0) * bw, blocks=ncb,
                              rows=nrows, cols=ncols, row_stride=b.w * bw, block_stride=b.plane(bw)))
            compute = op(out=out_base, a=inp_base, b=inp_base + ncb * count, param=0, blocks=ncb,
                         count=count, zero_point=zero_point, act_min=act_min, act_max=act_max)
        else:
            compute = op(out=out_base, a=inp_base, b=const_half + cb0, b_param=1, param=0, blocks=ncb,
                         count=count, zero_point=zero_point, act_min=act_min, act_max=act_max)
        # the vector op is both the step's compute and the tile's output stage
        tiles.append(_Tile([_Step(loads, [compute])], [compute],
                           [_store_rows(config, y, out_base, cb0, ncb, r0, nrows, c0, ncols)]))
    return _finish_layer(_emit_fused(tiles), layer_id, first, config)


