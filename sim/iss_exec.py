"""Functional semantics of every NPU instruction on the device state, vectorised in numpy.

`Machine` holds device memory and the scratchpads.  `prepare(insn)` checks one instruction against
the machine (every range an instruction touches is fixed by its fields, never by data) and returns
an `Op`: a callable that performs it exactly as hdl/isa.py specifies, on numpy views of memory and
scratchpads computed once, with hdl/numerics doing the arithmetic.  `execute(insn)` is
`prepare(insn)()`; sim/iss.py prepares a program once and replays its ops on every run.  Range
violations raise `NPUFault` (hdl/faults.py) with the ErrorCode and address the hardware reports;
the scheduler places it at the instruction's index and disassembly.  No Python loop runs per MAC,
pixel or entry: a CONV in MAC mode, all its hardware loops included, is one im2col copy and one
matrix product.

A Machine has two sets of ops with the same semantics.  The reference (`fast=False`): numpy on whole
tiles, numerics' functions on them, the conv's product in float32 (`numerics.int_matmul_f32`,
exact).  The fast path (default): the compiled kernels of sim/iss_kernels.py, which restate
numerics element by element and are tested against it, and an exact int8 GEMM.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from softnpu.hdl import numerics
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NPUFault, dma_align_address, dma_last_byte
from softnpu.hdl.isa import (
    Add,
    Buffer,
    Conv,
    ConvMode,
    ErrorCode,
    Finish,
    Insn,
    Load,
    Marker,
    Mul,
    Narrow,
    Requant,
    Rounding,
    Store,
    inp_window,
)
from softnpu.sim import iss_kernels

__all__ = ["Machine", "Op", "SHIFT_MIN", "SHIFT_MAX", "WeightWatch", "dram_extent", "merge_ranges"]

# What prepare() returns: runs one prepared instruction on the machine it was prepared for.
Op = Callable[[], None]

# Parameter lanes holding a shift are clamped to this range by the vector unit (TFLite's legal
# range for MultiplyByQuantizedMultiplier); anything outside is not a TFLite value.
SHIFT_MIN, SHIFT_MAX = -31, 30


class Machine:
    """Device memory plus the five scratchpads of an NPUConfig.

    `fast` (the default) performs LOAD, STORE, CONV, REQUANT (fixed-point rounding), NARROW, ADD
    and MUL with the compiled kernels of sim/iss_kernels.py; `fast=False` is the reference: numpy on
    whole tiles with hdl/numerics doing the arithmetic.  Both give the same bits
    (tests/sim/test_iss_kernels.py runs random programs on both)."""

    def __init__(self, config: NPUConfig, dram: np.ndarray | None = None, fast: bool = True):
        self.config = config
        self.fast = fast
        if dram is None:
            dram = np.zeros(config.dram_bytes, dtype=np.uint8)   # calloc'd: pages appear on use
        if dram.dtype != np.uint8 or dram.ndim != 1:
            raise ValueError("device memory must be a 1-D uint8 array")
        self.dram = dram
        r, c = config.rows, config.cols
        self.inp = np.zeros((config.inp_depth, c), np.int8)
        self.wgt = np.zeros((config.wgt_depth, r, c), np.int8)
        self.param = np.zeros((config.param_depth, r), np.int32)
        self.acc = np.zeros((config.acc_depth, r), np.int32)
        self.out = np.zeros((config.out_depth, r), np.int8)
        self._work: dict[tuple[int, type], np.ndarray] = {}
        self._dma_memories: tuple[np.ndarray, ...] | None = None     # dram and scratchpads as bytes
        self._binary_tables = None            # ADD/MUL tables by their parameters (iss_kernels.add)
        self._weight_watches: weakref.WeakSet[WeightWatch] = weakref.WeakSet()

    def clear_scratchpads(self):
        for buf in (self.inp, self.wgt, self.param, self.acc, self.out):
            buf.fill(0)

    # -- device memory written from outside a plan -------------------------------------------
    def write_dram(self, addr: int, data: np.ndarray) -> None:
        """Device memory bytes [addr, addr + data.size) = data (uint8): how the host writes it, so
        that the conv ops' weight caches learn of it (WeightWatch).  Writing `dram` directly
        bypasses them: a conv would keep weights packed from the old bytes."""
        self.dram[addr:addr + data.size] = data
        self.dram_written(np.array([addr]), np.array([addr + data.size]))

    def dram_written(self, starts: np.ndarray, ends: np.ndarray, by: WeightWatch | None = None) -> None:
        """Device memory [starts[i], ends[i]) may hold new bytes: the weight watches over any of them
        (but `by`, the watch of the plan that wrote them) are no longer clean."""
        for watch in list(self._weight_watches):
            if watch is not by and watch.clean[0] and watch.overlaps(starts, ends):
                watch.clean[0] = False

    def watch_weights(self, starts: np.ndarray, ends: np.ndarray) -> WeightWatch:
        """A WeightWatch over device memory [starts[i], ends[i]), told of every later write."""
        watch = WeightWatch(starts, ends)
        self._weight_watches.add(watch)
        return watch

    # -- helpers ----------------------------------------------------------------------------
    def _check_sram(self, name: str, first: int, count: int, what: str):
        depth = self.config.depth(name)
        if first + count > depth:
            raise NPUFault.unplaced(ErrorCode.SRAM_RANGE,
                                    f"{what}: {name} entries [{first}, {first + count}) exceed its depth "
                                    f"{depth}")

    def _dram_view(self, insn, entry_bytes: int, writeable: bool) -> np.ndarray:
        self._check_dram(insn, entry_bytes)
        return as_strided(self.dram[insn.dram:], shape=(insn.blocks, insn.rows, insn.cols, entry_bytes),
                          strides=(insn.block_stride, insn.row_stride, entry_bytes, 1), writeable=writeable)

    def _check_dram(self, insn, entry_bytes: int) -> None:
        """The alignment and range faults of a DMA."""
        bus = self.config.dram_bus_bytes
        misaligned = dma_align_address(insn, bus)
        if misaligned is not None:
            name = next(n for n in ("dram", "row_stride", "block_stride") if getattr(insn, n) % bus)
            raise NPUFault.unplaced(ErrorCode.DRAM_ALIGN, f"{name}={getattr(insn, name):#x} is not a "
                                                          f"multiple of the {bus}-byte bus", misaligned)
        last = dma_last_byte(insn, entry_bytes)
        if last >= self.dram.size:
            raise NPUFault.unplaced(ErrorCode.DRAM_RANGE,
                                    f"DMA touches DRAM bytes up to {last:#x}, beyond the device memory "
                                    f"of {self.dram.size:#x} bytes (from dram={insn.dram:#x})", last)

    def _workspace(self, slot: int, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """A scratch array of the conv engine, taken when an op is prepared and shared by the ops of
        this machine (they run one at a time).  It grows by doubling; ops prepared earlier keep the
        smaller buffer they hold, so at most a few buffers per slot exist."""
        size = math.prod(shape)
        key = (slot, np.dtype(dtype).type)
        buf = self._work.get(key)
        if buf is None or buf.size < size:
            buf = self._work[key] = np.empty(max(size, 2 * buf.size if buf is not None else 0), dtype)
        return buf[:size].reshape(shape)

    # -- instructions -----------------------------------------------------------------------
    def execute(self, insn: Insn) -> None:
        """Perform one instruction now (raises NPUFault if it touches anything out of range)."""
        self.prepare(insn)()
        if isinstance(insn, Store):
            self.dram_written(*dram_extent([insn], self.config.rows))

    def prepare(self, insn: Insn) -> Op:
        """Check `insn` against this machine and return the Op that performs it.

        The Op holds views of device memory and scratchpads, so it stays valid for the life of the
        machine and may run any number of times; it reads the data only when it runs."""
        handler = _HANDLERS.get(type(insn))
        if handler is None:
            raise NPUFault.unplaced(ErrorCode.ILLEGAL_OPCODE, f"no semantics for {type(insn).__name__}")
        return handler(self, insn)

    def _load(self, insn: Load) -> Op:
        name = {Buffer.INP: "inp", Buffer.WGT: "wgt", Buffer.PARAM: "param"}[Buffer(insn.buffer)]
        buf = getattr(self, name)
        entry = self.config.entry_bytes(name)
        p, q = insn.padded_rows, insn.padded_cols
        self._check_sram(name, insn.sram, insn.blocks * p * q, "load")
        if self.fast:
            self._check_dram(insn, entry)
            return self._dma_op(iss_kernels.DMA_LOAD, ("inp", "wgt", "param").index(name), insn.dram,
                                insn.block_stride, insn.row_stride, insn.sram * entry, insn.blocks, insn.rows,
                                insn.cols, p, q, entry, insn.pad_top, insn.pad_left, insn.pad_value & 0xFF)
        data = self._dram_view(insn, entry, writeable=False)
        tile = buf[insn.sram:insn.sram + insn.blocks * p * q].view(np.uint8).reshape(insn.blocks, p, q, entry)
        inner = tile[:, insn.pad_top:insn.pad_top + insn.rows, insn.pad_left:insn.pad_left + insn.cols]
        pad = np.uint8(insn.pad_value & 0xFF)
        # the border around the data: whole padded rows above and below, then the columns beside
        borders = [tile[:, :insn.pad_top], tile[:, insn.pad_top + insn.rows:],
                   tile[:, insn.pad_top:insn.pad_top + insn.rows, :insn.pad_left],
                   tile[:, insn.pad_top:insn.pad_top + insn.rows, insn.pad_left + insn.cols:]]
        borders = [b for b in borders if b.size]

        def load():
            for border in borders:
                border.fill(pad)
            np.copyto(inner, data)
        return load

    def _store(self, insn: Store) -> Op:
        n = insn.blocks * insn.rows * insn.cols
        self._check_sram("out", insn.sram, n, "store")
        if self.fast:
            self._check_dram(insn, self.config.rows)
            run = insn.cols * self.config.rows
            return self._dma_op(iss_kernels.DMA_STORE, insn.sram * self.config.rows, insn.rows * run, run,
                                insn.dram, insn.block_stride, insn.row_stride, insn.blocks, insn.rows, run)
        view = self._dram_view(insn, self.config.rows, writeable=True)
        tile = self.out[insn.sram:insn.sram + n].view(np.uint8).reshape(view.shape)

        def store():
            np.copyto(view, tile)
        return store

    def _dma_op(self, *fields: int) -> Op:
        """The Op of one LOAD or STORE on the fast path: a row of iss_kernels.dma's table."""
        row = np.zeros((1, iss_kernels.DMA_FIELDS), np.int64)
        row[0, :len(fields)] = fields
        return _DmaOp(self, row)

    def dma_batch(self, table: np.ndarray, skip: np.ndarray | None = None) -> Op:
        """An Op performing the DMA rows of `table` (from _dma_op) in order; while `skip[0]`, not the
        rows marked DMA_SKIPPABLE (sim/iss_plan.py marks them)."""
        if self._dma_memories is None:
            self._dma_memories = (self.dram,) + tuple(buf.view(np.uint8).reshape(-1) for buf in
                                                      (self.inp, self.wgt, self.param, self.out))
        kernel = iss_kernels.bind(iss_kernels.dma, *self._dma_memories, table,
                                  np.zeros(1, np.bool_) if skip is None else skip)
        return _named(kernel, "dma")

    def _conv(self, insn: Conv) -> Op:
        c = self.config.cols
        first, end = inp_window(insn)
        self._check_sram("inp", first, end - first, "conv input window")
        n_acc = insn.out_blocks * insn.out_h * insn.out_w if insn.mode == ConvMode.MAC else \
            insn.in_blocks * insn.out_h * insn.out_w
        self._check_sram("acc", insn.acc, n_acc, "conv accumulators")
        # windows[ci, oh, ow, i, j, lane]: a strided view of the input scratchpad, no copy
        windows = as_strided(self.inp[insn.inp:], shape=(insn.in_blocks, insn.out_h, insn.out_w,
                                                         insn.kh, insn.kw, c),
                             strides=(insn.inp_block * c, insn.stride_h * insn.inp_row * c,
                                      insn.stride_w * c, insn.inp_row * c, c, 1), writeable=False)
        acc = self.acc[insn.acc:insn.acc + n_acc]
        if insn.mode == ConvMode.MAC:
            return self._conv_mac(insn, windows, acc)
        if self.fast and insn.mode in (ConvMode.SUM, ConvMode.MAX):
            args = (self.inp, insn.inp, insn.in_blocks, insn.out_h, insn.out_w, insn.kh, insn.kw,
                    insn.stride_h, insn.stride_w, insn.inp_row, insn.inp_block, acc,
                    insn.mode == ConvMode.MAX, bool(insn.accumulate))
            kernel = iss_kernels.bind(iss_kernels.window_reduce, *args)
            return _named(kernel, f"window_{ConvMode(insn.mode).name.lower()}_kernel")
        if insn.mode == ConvMode.SUM:
            def window_sum():
                result = windows.sum(axis=(3, 4), dtype=np.int64).reshape(n_acc, c)
                if insn.accumulate:
                    result = result + acc
                acc[...] = numerics.wrap_int32(result)
            return window_sum
        if insn.mode == ConvMode.MAX:
            def window_max():
                result = windows.max(axis=(3, 4)).reshape(n_acc, c)
                if insn.accumulate:
                    np.maximum(acc, result, out=acc)
                else:
                    acc[...] = result
            return window_max
        raise NPUFault.unplaced(ErrorCode.ILLEGAL_FIELD, f"conv mode {insn.mode} is not defined")

    def _conv_mac(self, insn: Conv, windows: np.ndarray, acc: np.ndarray) -> Op:
        """All hardware loops of a MAC-mode CONV as one matrix product:
        acc[co, oh, ow, r] (+)= sum over (ci, i, j, lane) of x[oh, ow, ci, i, j, lane] * W."""
        r, c = self.config.rows, self.config.cols
        co, ci, kh, kw = insn.out_blocks, insn.in_blocks, insn.kh, insn.kw
        n_wgt = co * ci * kh * kw
        self._check_sram("wgt", insn.wgt, n_wgt, "conv weights")
        m, k, n = insn.out_h * insn.out_w, ci * kh * kw * c, co * r
        if self.fast and k <= iss_kernels.MAX_GEMM_K and iss_kernels.int8_gemm() is not None:
            return self._conv_mac_int8(insn, acc.reshape(co, m, r))
        # im2col rows, (oh, ow) x (ci, i, j, lane); and W as (ci, i, j, lane) x (co, r)
        x_src = windows.transpose(1, 2, 0, 3, 4, 5)
        w_src = self.wgt[insn.wgt:insn.wgt + n_wgt].reshape(co, ci, kh, kw, r, c).transpose(1, 2, 3, 5, 0, 4)
        acc_dst = acc.reshape(co, m, r).transpose(1, 0, 2)          # (oh, ow) x co x r

        x, w, product = self._workspace(0, (m, k)), self._workspace(1, (k, n)), self._workspace(2, (m, n))
        x_fill, w_fill = x.reshape(x_src.shape), w.reshape(w_src.shape)
        accumulate = bool(insn.accumulate)

        def conv_mac():
            np.copyto(x_fill, x_src)                                  # int8 -> float32, exact
            np.copyto(w_fill, w_src)
            numerics.int_matmul_f32(x, w, out=acc_dst, accumulate=accumulate, scratch=product)
        return conv_mac

    def _conv_mac_int8(self, insn: Conv, acc: np.ndarray) -> Op:
        """The fast MAC conv: im2col rows shifted to uint8, the weight matrix packed, one int8 GEMM
        into int32 (exact), then the accumulators set or added to (see sim/iss_kernels.py).  The op
        is built when first run; a plan builds it, or its accumulation chain, from its `conv`
        attribute instead (`int8_conv_chain`)."""
        built: list[Op] = []

        def conv_mac_int8_once():
            if not built:
                built.extend(self.int8_conv_chain([(insn, acc)]))
            built[0]()
        conv_mac_int8_once.conv = (insn, acc)
        return conv_mac_int8_once

    def int8_conv_chain(self, convs: list[tuple[Conv, np.ndarray]], x: np.ndarray | None = None,
                        unchanged: list[np.ndarray | None] | None = None,
                        fresh: list[bool] | None = None) -> list[Op]:
        """The ops of MAC convs into the same accumulators (`acc`, (out_blocks, m, rows)), all but the
        first accumulating: acc (+)= X1 W1 + X2 W2 + ... = [X1 X2 ...] [W1; W2; ...], one GEMM.
        Each conv's op copies its im2col rows and packed weights into its columns of x and rows of
        the chain's weights, where the conv runs; the last one multiplies and adds, once.  Exact:
        int32 sums wrap the same in any order.  x (m, sum of K) uint8 defaults to a workspace.
        `unchanged[i]`, where given, is the `clean` flag of a WeightWatch that vouches for conv i's
        weight entries (iss_kernels.pack_weights then neither compares nor packs them); conv i writes
        its im2col rows unless `fresh[i]` is False: x holds them already when it runs (the plan
        knows, sim/iss_plan.py)."""
        first, acc = convs[0]
        c, r = self.config.cols, self.config.rows
        m, n = first.out_h * first.out_w, first.out_blocks * r
        ks = [insn.in_blocks * insn.kh * insn.kw * c for insn, _ in convs]
        gemm = iss_kernels.int8_gemm()(m, sum(ks), n)
        x = self._workspace(0, (m, sum(ks)), np.uint8) if x is None else x
        # one output block, not accumulated: acc[0] is the product's (m, rows) matrix, written in place
        direct = first.out_blocks == 1 and not first.accumulate
        y = acc.reshape(m, n) if direct else self._workspace(2, (m, n), np.int32)
        # the packed weights, and the entries each conv packed them from: kept from run to run
        w = np.empty((sum(ks), n), np.int8)
        inp = iss_kernels.words(self.inp, c)
        x_words = iss_kernels.words(x, c)
        flip = x_words.dtype.type(int("80" * x_words.itemsize, 16))
        segments = []
        k0 = 0
        unchanged = unchanged or [None] * len(convs)
        fresh = fresh or [True] * len(convs)
        for (insn, _), k, known, rows in zip(convs, ks, unchanged, fresh, strict=True):
            im2col = (inp, inp.size // self.inp.shape[0], insn.inp, insn.in_blocks, insn.out_h, insn.out_w,
                      insn.kh, insn.kw, insn.stride_h, insn.stride_w, insn.inp_row, insn.inp_block, x_words,
                      x_words.size // m, k0 // x_words.itemsize, flip) if rows else None
            taps = insn.in_blocks * insn.kh * insn.kw
            entries = self.wgt[insn.wgt:insn.wgt + insn.out_blocks * taps]
            current = iss_kernels.words(entries, entries[0].size)
            pack = (self.wgt, insn.wgt, insn.out_blocks, taps, current, np.empty_like(current),
                    np.zeros(1, np.bool_), w[k0:k0 + k], np.zeros(1, np.bool_) if known is None else known)
            segments.append((im2col and iss_kernels.bind(iss_kernels.im2col_u8, *im2col),
                             iss_kernels.bind(iss_kernels.pack_weights, *pack), pack[-1]))
            k0 += k
        # one output pixel: a matrix-vector product, not MLAS (iss_kernels.gemv_u8s8)
        product = gemm.bind(x, w, y) if m > 1 else iss_kernels.bind(iss_kernels.gemv_u8s8, x, w, y)
        scatter_acc = iss_kernels.bind(iss_kernels.scatter_acc, y, acc, bool(first.accumulate))

        # a watched conv whose weights are clean was packed by the last run: not even a kernel call
        # (a numba call costs half a microsecond; pack_weights checks the same flags)
        def segment(im2col, pack_weights, clean):
            def conv_mac_int8_part():
                if im2col is not None:
                    im2col()
                if not clean[0]:
                    pack_weights()
            return conv_mac_int8_part

        parts = [segment(*s) for s in segments]
        last_part = parts[-1]
        if direct:
            def conv_mac_int8_direct():
                last_part()
                product()
            last = conv_mac_int8_direct
        else:
            def conv_mac_int8():
                last_part()
                product()
                scatter_acc()
            last = conv_mac_int8
        return parts[:-1] + [last]

    def _vector_operands(self, insn, src_name: str, src: int):
        """Operand and output of a vector op as (blocks, lines, line) views, the entries per line
        `k`, and the slices of lines that the op computes at a time.

        Parameters are per lane, the same for every entry of a block; numpy broadcasts a 16-lane
        vector over a tile slowly (its inner loop is one entry), so the tile is viewed as lines of
        `k` entries and the parameters are tiled `k` times (`_tile`), which changes nothing else.
        A large tile is computed a slice of lines at a time so that numpy's int64 temporaries stay
        small (cache-resident, and below the size where malloc maps fresh pages for each one)."""
        n = insn.blocks * insn.count
        self._check_sram("out", insn.out, n, f"{insn.MNEMONIC} output")
        self._check_sram(src_name, src, n, f"{insn.MNEMONIC} operand")
        k = _entries_per_line(insn.count)
        lines = insn.count // k
        shape = (insn.blocks, lines, -1)
        source = getattr(self, src_name)[src:src + n].reshape(shape)
        step = max(1, _CHUNK_ELEMENTS // (insn.blocks * k * self.config.rows))
        slices = [slice(start, start + step) for start in range(0, lines, step)]
        return source, self.out[insn.out:insn.out + n].reshape(shape), k, slices

    def _params(self, insn, count: int) -> np.ndarray:
        """The parameter entries an instruction reads (a view: read them when the Op runs)."""
        self._check_sram("param", insn.param, count, f"{insn.MNEMONIC} parameters")
        return self.param[insn.param:insn.param + count]

    def _requant(self, insn: Requant) -> Op:
        acc, out, k, slices = self._vector_operands(insn, "acc", insn.acc)
        if self.fast and insn.rounding != Rounding.DOUBLE:
            r = self.config.rows
            args = (acc.reshape(insn.blocks, insn.count, r),
                    self._params(insn, 3 * insn.blocks).reshape(insn.blocks, 3, r),
                    out.reshape(insn.blocks, insn.count, r), insn.zero_point, insn.act_min, insn.act_max)
            kernel = iss_kernels.bind(iss_kernels.requantize, *args)
            return _named(kernel, "requant_kernel")
        chunks = [(acc[:, rows], out[:, rows]) for rows in slices]
        params = self._params(insn, 3 * insn.blocks).reshape(insn.blocks, 3, 1, -1)
        zero_point, act_min, act_max = insn.zero_point, insn.act_min, insn.act_max
        if insn.rounding == Rounding.DOUBLE:
            def requant_double():
                p = params.astype(np.int64)
                words = (p[:, 1] & 0xFFFFFFFF) | ((p[:, 2] & 0xFFFFFFFF) << 32)
                bias, multiplier = _tile(p[:, 0], k), _tile(words.astype(np.uint64).view(np.float64), k)
                for a, o in chunks:
                    o[...] = numerics.requantize_double(a, bias, multiplier, zero_point, act_min, act_max)
            return requant_double

        def requant():
            p = _tile(params, k)
            bias, multiplier, shift = p[:, 0], p[:, 1], np.clip(p[:, 2], SHIFT_MIN, SHIFT_MAX)
            for a, o in chunks:
                o[...] = numerics.requantize(a, bias, multiplier, shift, zero_point, act_min, act_max)
        return requant

    def _narrow(self, insn: Narrow) -> Op:
        acc, out, _, slices = self._vector_operands(insn, "acc", insn.acc)
        if self.fast and insn.divisor > 0:
            r = self.config.rows
            args = (acc.reshape(-1, r), insn.divisor, out.reshape(-1, r), insn.act_min, insn.act_max)
            kernel = iss_kernels.bind(iss_kernels.narrow, *args)
            return _named(kernel, "narrow_kernel")
        chunks = [(acc[:, rows], out[:, rows]) for rows in slices]

        def narrow():
            for a, o in chunks:
                o[...] = numerics.pool_output(a, insn.divisor, insn.act_min, insn.act_max)
        return narrow

    def _binary(self, insn, function) -> Op:
        """ADD and MUL: out = function(a, b, parameters) lane-wise; b from the input scratchpad like
        a, or one parameter entry per block."""
        a, out, k, slices = self._vector_operands(insn, "inp", insn.a)
        if insn.b_param:
            self._check_sram("param", insn.b, insn.blocks, f"{insn.MNEMONIC} operand b")
            b_entries = self.param[insn.b:insn.b + insn.blocks][:, None, :]
            b_chunks = None
        else:
            n = insn.blocks * insn.count
            self._check_sram("inp", insn.b, n, f"{insn.MNEMONIC} operand b")
            b = self.inp[insn.b:insn.b + n].reshape(a.shape)
            b_chunks = [b[:, rows] for rows in slices]
        chunks = [(a[:, rows], out[:, rows]) for rows in slices]
        params = self._params(insn, len(insn.PARAMS))
        fixed = dict(zero_point=insn.zero_point, act_min=insn.act_min, act_max=insn.act_max)
        if self.fast:
            r = self.config.rows
            tile = (insn.blocks, insn.count, r)
            b_operand = b_entries if insn.b_param else b.reshape(tile)
            if self._binary_tables is None:
                self._binary_tables = iss_kernels.binary_tables()
            args = (a.reshape(tile), b_operand, bool(insn.b_param), params, out.reshape(tile),
                    insn.zero_point, insn.act_min, insn.act_max, self._binary_tables)
            kernel = iss_kernels.bind(iss_kernels.add if function is numerics.add else iss_kernels.mul, *args)
            return _named(kernel, f"{insn.MNEMONIC}_kernel")
        if insn.b_param and insn.count > _TABLE_ENTRIES:
            return self._binary_by_table(insn, function, a, out, k, b_entries, params, fixed)

        def binary():
            p = _named_params(insn.PARAMS, _tile(params, k))
            bs = b_chunks or [_tile(b_entries, k)] * len(chunks)
            for (x, o), y in zip(chunks, bs, strict=True):
                o[...] = function(x, y, **p, **fixed)
        binary.__name__ = insn.MNEMONIC
        return binary

    def _binary_by_table(self, insn, function, a, out, k, b_entries, params, fixed) -> Op:
        """ADD or MUL of a tile and one constant entry per block: in each block and lane the output is
        a function of one int8 value, so `function` runs once on the 256 int8 values (a table per
        block and lane) and every entry of the tile looks its value up."""
        r = self.config.rows
        values = np.arange(256, dtype=np.uint8).view(np.int8).reshape(256, 1, 1, 1)    # by bits
        # offset of (block, lane)'s table in the flattened (block, lane, 256) tables, per line slot
        base = (np.arange(insn.blocks)[:, None, None] * r + np.arange(k * r) % r) * 256
        a_bits = a.view(np.uint8)

        def binary_table():
            p = _named_params(insn.PARAMS, params)
            tables = function(values, b_entries, **p, **fixed)        # (256, blocks, 1, r)
            tables = np.ascontiguousarray(tables.reshape(256, -1).T)   # (blocks * r, 256)
            np.take(tables.reshape(-1), a_bits + base, out=out)
        binary_table.__name__ = f"{insn.MNEMONIC}_table"
        return binary_table

    def _add(self, insn: Add) -> Op:
        return self._binary(insn, numerics.add)

    def _mul(self, insn: Mul) -> Op:
        return self._binary(insn, numerics.mul)

    def _nothing(self, insn) -> Op:
        return _no_op


def _no_op():
    pass


class _DmaOp:
    """One fast-path LOAD or STORE: its row of iss_kernels.dma's table (`dma`), which a plan joins
    with the rows of the DMAs beside it into one call (Machine.dma_batch, sim/iss_plan.py); run on
    its own, it makes its call the first time.  A program prepares tens of thousands of them, and
    most are only ever run joined."""
    __slots__ = ("machine", "dma", "call")

    def __init__(self, machine: Machine, row: np.ndarray):
        self.machine, self.dma, self.call = machine, row, None

    def __call__(self) -> None:
        if self.call is None:
            self.call = self.machine.dma_batch(self.dma)
        self.call()


def _named(call, name: str) -> Op:
    """A kernel call (iss_kernels.bind) as an Op named `name`: no Python function around it."""
    call.__name__ = name
    return call


class WeightWatch:
    """Device memory ranges that conv weights are LOADed from, and whether they are `clean`: not
    written since the plan that owns the watch last ran to its end.

    A conv whose weight entries were all written by LOADs earlier in the same run computes with
    weights that are a function of the bytes those LOADs read; while those bytes stay the same, so
    do its packed weights, and it need not even compare them (iss_kernels.pack_weights).  The plan
    sets `clean` when a run ends; the machine clears it on a host write (Machine.write_dram) or
    another plan's STOREs (Machine.dram_written) over the ranges.  A plan whose own STOREs reach
    the ranges watches nothing (sim/iss_plan.py)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray):
        self.starts, self.ends = merge_ranges(starts, ends)
        self.clean = np.zeros(1, np.bool_)

    def overlaps(self, starts: np.ndarray, ends: np.ndarray) -> bool:
        """Whether any of [starts[i], ends[i]) meets a watched range."""
        # the last watched range starting before each end: it meets [start, end) if it ends after start
        i = np.searchsorted(self.starts, ends, side="left") - 1
        return bool(((i >= 0) & (self.ends[np.maximum(i, 0)] > starts)).any()) if self.starts.size else False


def merge_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of the ranges [starts[i], ends[i]) as sorted disjoint ranges."""
    order = np.argsort(starts, kind="stable")
    starts, ends = np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order]
    opens = np.ones(starts.size, bool)          # a range starting beyond every earlier end opens one
    opens[1:] = starts[1:] > np.maximum.accumulate(ends)[:-1]
    first = np.flatnonzero(opens)
    return starts[first], (np.maximum.reduceat(ends, first) if first.size else ends)


def dram_extent(insns: list[Insn], entry_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The device memory [start, end) of each LOAD or STORE of `insns` (entries of `entry_bytes`):
    from its first byte to its last (dma_last_byte), the rows between included."""
    starts = np.array([insn.dram for insn in insns], np.int64)
    ends = np.array([dma_last_byte(insn, entry_bytes) + 1 for insn in insns], np.int64)
    return starts, ends


# entries of a vector op's line (see Machine._vector_operands): long enough that numpy's inner loop
# is long, short enough that tiling the parameters costs nothing
_LINE_ENTRIES = 64
# entries per block above which ADD/MUL with a constant operand look their results up (see
# Machine._binary_by_table): the 256-entry tables then cost less than the tile
_TABLE_ENTRIES = 256
# elements a vector op computes at a time: int64 temporaries of 128 KiB
_CHUNK_ELEMENTS = 16384


def _entries_per_line(count: int) -> int:
    """The largest divisor of `count` up to _LINE_ENTRIES."""
    return max(k for k in range(1, min(count, _LINE_ENTRIES) + 1) if count % k == 0)


def _tile(lanes: np.ndarray, k: int) -> np.ndarray:
    """Per-lane values repeated for `k` entries along the last axis."""
    return np.tile(lanes, k) if k > 1 else lanes


def _named_params(names: tuple[str, ...], params: np.ndarray) -> dict[str, np.ndarray]:
    """Parameter entries by name, as int64 lanes; shifts clamped to the vector unit's range."""
    p = dict(zip(names, params.astype(np.int64), strict=True))
    for name in names:
        if name.endswith("_shift"):
            p[name] = np.clip(p[name], SHIFT_MIN, SHIFT_MAX)
    return p


_HANDLERS = {Load: Machine._load, Store: Machine._store, Conv: Machine._conv,
             Requant: Machine._requant, Narrow: Machine._narrow, Add: Machine._add, Mul: Machine._mul,
             Marker: Machine._nothing, Finish: Machine._nothing}
