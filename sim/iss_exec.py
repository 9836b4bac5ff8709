"""Functional semantics of every NPU instruction on the device state, vectorised in numpy.

`Machine` holds device memory and the scratchpads; `execute(insn)` performs one instruction
exactly as hdl/isa.py specifies it, with hdl/numerics doing the arithmetic.  Range violations raise
`Fault` with the ErrorCode the hardware reports; the scheduler in sim/iss.py adds the instruction
index and disassembly.  No Python loop runs per MAC, pixel or entry.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from softnpu.hdl import numerics
from softnpu.hdl.config import NPUConfig
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
)

__all__ = ["Fault", "Machine", "SHIFT_MIN", "SHIFT_MAX"]

# Parameter lanes holding a shift are clamped to this range by the vector unit (TFLite's legal
# range for MultiplyByQuantizedMultiplier); anything outside is not a TFLite value.
SHIFT_MIN, SHIFT_MAX = -31, 30


class Fault(Exception):
    """An error the hardware detects; `code` is the value of the ERROR CSR."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)


class Machine:
    """Device memory plus the five scratchpads of an NPUConfig."""

    def __init__(self, config: NPUConfig, dram: np.ndarray | None = None):
        self.config = config
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

    def clear_scratchpads(self):
        for buf in (self.inp, self.wgt, self.param, self.acc, self.out):
            buf.fill(0)

    # -- helpers ----------------------------------------------------------------------------
    def _check_sram(self, name: str, first: int, count: int, what: str):
        depth = self.config.depth(name)
        if first + count > depth:
            raise Fault(ErrorCode.SRAM_RANGE,
                        f"{what}: {name} entries [{first}, {first + count}) exceed its depth {depth}")

    def _dram_view(self, insn, entry_bytes: int, writeable: bool) -> np.ndarray:
        bus = self.config.dram_bus_bytes
        for name in ("dram", "row_stride", "block_stride"):
            if getattr(insn, name) % bus:
                raise Fault(ErrorCode.DRAM_ALIGN, f"{name}={getattr(insn, name):#x} is not a multiple of "
                                                  f"the {bus}-byte bus")
        last = (insn.dram + (insn.blocks - 1) * insn.block_stride + (insn.rows - 1) * insn.row_stride
                + insn.cols * entry_bytes)
        if last > self.dram.size:
            raise Fault(ErrorCode.DRAM_RANGE,
                        f"DMA touches DRAM bytes up to {last - 1:#x}, beyond the device memory "
                        f"of {self.dram.size:#x} bytes (from dram={insn.dram:#x})")
        base = self.dram[insn.dram:]
        return as_strided(base, shape=(insn.blocks, insn.rows, insn.cols * entry_bytes),
                          strides=(insn.block_stride, insn.row_stride, 1), writeable=writeable)

    # -- instructions -----------------------------------------------------------------------
    def execute(self, insn: Insn) -> None:
        handler = _HANDLERS.get(type(insn))
        if handler is None:
            raise Fault(ErrorCode.ILLEGAL_OPCODE, f"no semantics for {type(insn).__name__}")
        handler(self, insn)

    def _load(self, insn: Load):
        name = {Buffer.INP: "inp", Buffer.WGT: "wgt", Buffer.PARAM: "param"}[Buffer(insn.buffer)]
        buf = getattr(self, name)
        entry = self.config.entry_bytes(name)
        p, q = insn.padded_rows, insn.padded_cols
        self._check_sram(name, insn.sram, insn.blocks * p * q, "load")
        data = self._dram_view(insn, entry, writeable=False)
        tile = buf[insn.sram:insn.sram + insn.blocks * p * q].view(np.uint8).reshape(insn.blocks, p, q, entry)
        if p != insn.rows or q != insn.cols:
            tile[...] = np.uint8(insn.pad_value & 0xFF)
        tile[:, insn.pad_top:insn.pad_top + insn.rows, insn.pad_left:insn.pad_left + insn.cols] = \
            data.reshape(insn.blocks, insn.rows, insn.cols, entry)

    def _store(self, insn: Store):
        n = insn.blocks * insn.rows * insn.cols
        self._check_sram("out", insn.sram, n, "store")
        view = self._dram_view(insn, self.config.rows, writeable=True)
        view[...] = self.out[insn.sram:insn.sram + n].view(np.uint8).reshape(view.shape)

    def _conv(self, insn: Conv):
        c = self.config.cols
        last = (insn.inp + (insn.in_blocks - 1) * insn.inp_block
                + ((insn.out_h - 1) * insn.stride_h + insn.kh - 1) * insn.inp_row
                + (insn.out_w - 1) * insn.stride_w + insn.kw - 1)
        self._check_sram("inp", insn.inp, last - insn.inp + 1, "conv input window")
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
            n_wgt = insn.out_blocks * insn.in_blocks * insn.kh * insn.kw
            self._check_sram("wgt", insn.wgt, n_wgt, "conv weights")
            r = self.config.rows
            w = self.wgt[insn.wgt:insn.wgt + n_wgt].reshape(insn.out_blocks, insn.in_blocks, insn.kh,
                                                             insn.kw, r, c)
            w = w.transpose(1, 2, 3, 5, 0, 4).reshape(-1, insn.out_blocks * r)
            x = windows.transpose(1, 2, 0, 3, 4, 5).reshape(insn.out_h * insn.out_w, -1)
            result = numerics.int_matmul(x, w).reshape(insn.out_h, insn.out_w, insn.out_blocks, r)
            result = result.transpose(2, 0, 1, 3).reshape(n_acc, r)
            if insn.accumulate:
                acc[...] = numerics.wrap_int32(acc.astype(np.int64) + result)
            else:
                acc[...] = result
        elif insn.mode == ConvMode.SUM:
            result = windows.sum(axis=(3, 4), dtype=np.int64).reshape(n_acc, c)
            if insn.accumulate:
                result = result + acc
            acc[...] = numerics.wrap_int32(result)
        elif insn.mode == ConvMode.MAX:
            result = windows.max(axis=(3, 4)).reshape(n_acc, c).astype(np.int32)
            acc[...] = np.maximum(acc, result) if insn.accumulate else result
        else:
            raise Fault(ErrorCode.ILLEGAL_FIELD, f"conv mode {insn.mode} is not defined")

    def _vector_operands(self, insn, src_name: str, src: int):
        n = insn.blocks * insn.count
        self._check_sram("out", insn.out, n, f"{insn.MNEMONIC} output")
        self._check_sram(src_name, src, n, f"{insn.MNEMONIC} operand")
        source = getattr(self, src_name)[src:src + n].reshape(insn.blocks, insn.count, -1)
        return source, self.out[insn.out:insn.out + n].reshape(insn.blocks, insn.count, -1)

    def _params(self, insn, count: int) -> np.ndarray:
        self._check_sram("param", insn.param, count, f"{insn.MNEMONIC} parameters")
        return self.param[insn.param:insn.param + count].astype(np.int64)

    def _requant(self, insn: Requant):
        acc, out = self._vector_operands(insn, "acc", insn.acc)
        p = self._params(insn, 3 * insn.blocks).reshape(insn.blocks, 3, 1, -1)
        if insn.rounding == Rounding.DOUBLE:
            words = (p[:, 1] & 0xFFFFFFFF) | ((p[:, 2] & 0xFFFFFFFF) << 32)
            multiplier = words.astype(np.uint64).view(np.float64)
            out[...] = numerics.requantize_double(acc, p[:, 0], multiplier, insn.zero_point,
                                                  insn.act_min, insn.act_max)
            return
        shift = np.clip(p[:, 2], SHIFT_MIN, SHIFT_MAX)
        out[...] = numerics.requantize(acc, p[:, 0], p[:, 1], shift, insn.zero_point,
                                       insn.act_min, insn.act_max)

    def _narrow(self, insn: Narrow):
        acc, out = self._vector_operands(insn, "acc", insn.acc)
        out[...] = numerics.pool_output(acc, insn.divisor, insn.act_min, insn.act_max)

    def _binary_b(self, insn) -> np.ndarray:
        if insn.b_param:
            self._check_sram("param", insn.b, insn.blocks, f"{insn.MNEMONIC} operand b")
            return self.param[insn.b:insn.b + insn.blocks].astype(np.int64)[:, None, :]
        n = insn.blocks * insn.count
        self._check_sram("inp", insn.b, n, f"{insn.MNEMONIC} operand b")
        return self.inp[insn.b:insn.b + n].reshape(insn.blocks, insn.count, -1)

    def _add(self, insn: Add):
        a, out = self._vector_operands(insn, "inp", insn.a)
        b = self._binary_b(insn)
        p = dict(zip(Add.PARAMS, self._params(insn, len(Add.PARAMS)), strict=True))
        p["a_shift"] = np.clip(p["a_shift"], SHIFT_MIN, SHIFT_MAX)
        p["b_shift"] = np.clip(p["b_shift"], SHIFT_MIN, SHIFT_MAX)
        p["out_shift"] = np.clip(p["out_shift"], SHIFT_MIN, SHIFT_MAX)
        out[...] = numerics.add(a, b, **p, zero_point=insn.zero_point, act_min=insn.act_min,
                                act_max=insn.act_max)

    def _mul(self, insn: Mul):
        a, out = self._vector_operands(insn, "inp", insn.a)
        b = self._binary_b(insn)
        p = dict(zip(Mul.PARAMS, self._params(insn, len(Mul.PARAMS)), strict=True))
        p["out_shift"] = np.clip(p["out_shift"], SHIFT_MIN, SHIFT_MAX)
        out[...] = numerics.mul(a, b, **p, zero_point=insn.zero_point, act_min=insn.act_min,
                                act_max=insn.act_max)

    def _nothing(self, insn):
        pass


_HANDLERS = {Load: Machine._load, Store: Machine._store, Conv: Machine._conv,
             Requant: Machine._requant, Narrow: Machine._narrow, Add: Machine._add, Mul: Machine._mul,
             Marker: Machine._nothing, Finish: Machine._nothing}
