"""Steps, tiles and tokens: the double-buffered skeleton every layer emitter (compiler/emit.py,
compiler/emit_conv.py) fills in, and the geometry they share (input bands, tap groups).

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

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Buffer, Insn, Load, Marker, Store

__all__ = ["Activation", "LoweringError", "layer_marker", "coalesce", "TAP_SPAN", "TapGroup", "tap_groups"]


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


def _store_rows(config, y: Activation, sram: int, cb0: int, nblocks: int, r0: int, rows: int,
                c0: int = 0, cols: int | None = None) -> Store:
    """Output rows [r0, r0+rows) (columns [c0, c0+cols), default all) of channel blocks from cb0."""
    b = config.cols
    return Store(sram=sram, dram=y.addr + cb0 * y.plane(b) + (r0 * y.w + c0) * b, blocks=nblocks, rows=rows,
                 cols=y.w if cols is None else cols, row_stride=y.w * b, block_stride=y.plane(b))


def _input_rows(x: Activation, oh0: int, th: int, stride: int, kh: int, pad_top: int):
    """DRAM rows [first, first+count) feeding output rows [oh0, oh0+th), and the pads they need.
    (count is 0 for a band wholly inside the padding: emitters that may meet one use _input_band.)"""
    lo = oh0 * stride - pad_top
    hi = (oh0 + th - 1) * stride - pad_top + kh - 1
    first, last = max(lo, 0), min(hi, x.h - 1)
    return first, last - first + 1, first - lo, hi - last


def _input_band(x: Activation, oh0: int, th: int, stride: int, kh: int, pad_top: int):
    """_input_rows plus the loaded rows before the band's first (`kh` is the kernel's extent in
    input rows: (kh - 1) * dilation + 1).  A band wholly inside the padding (an explicit PAD wider
    than the kernel) still loads one real row, which no tap reads: one row more than the band."""
    return _input_span(x.h, oh0, th, stride, kh, pad_top)


def _input_span(size: int, o0: int, n: int, stride: int, k: int, pad_before: int):
    """_input_rows along one axis of `size` input entries (rows, or columns of a column tile)."""
    lo = o0 * stride - pad_before
    hi = (o0 + n - 1) * stride - pad_before + k - 1
    first, last = max(lo, 0), min(hi, size - 1)
    if last < first:
        if hi < 0:                  # before the input: the band, then entry 0
            return 0, 1, hi - lo + 1, 0, 0
        return size - 1, 1, 0, hi - lo + 1, 1       # after: the last entry, then the band
    return first, last - first + 1, first - lo, hi - last, 0


def _band_rows(th: int, stride: int, kh: int, pads) -> int:
    """Rows of the input scratchpad a band for `th` output rows may take (see _input_band)."""
    return (th - 1) * stride + kh + (1 if max(pads[0], pads[1]) >= kh else 0)



def widest_column_range(out_w: int, strides: tuple[int, int], kernel: tuple[int, int], pads, half) -> int:
    """Width tiling: the most output columns (fewer than `out_w`) whose one-row input band fits half
    the input scratchpad and whose results fit half the accumulator and output scratchpads; 0 if
    not even one column does.  kernel: the (dilated) extent; pads: (top, bottom, left, right)."""
    rows = _band_rows(1, strides[0], kernel[0], pads)
    tw = min(out_w - 1, half["acc"], half["out"])
    while tw >= 1 and rows * _band_rows(tw, strides[1], kernel[1], pads[2:]) > half["inp"]:
        tw -= 1
    return max(tw, 0)

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
        if d > 1:
            return [(a, 1) for a in range(k)]
        return [(a, min(TAP_SPAN, k - a)) for a in range(0, k, TAP_SPAN)]
    return tuple(TapGroup(i0, j0, gh, gw) for i0, gh in spans(kh, dh) for j0, gw in spans(kw, dw))




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

