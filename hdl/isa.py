"""The softnpu instruction set: the one contract shared by the HDL, the compiler, the ISS and the
disassembler.  docs/isa.md is generated from this module (`nox -s docs`).

Machine model
-------------
A decoupled access/execute machine.  *Fetch* reads `INSN_COUNT` instructions of `INSN_BITS` bits
from DRAM at `INSN_ADDR` and dispatches each, in program order, to one of three queues:

* **load**: `LOAD` (DRAM -> input, weight or parameter scratchpad);
* **compute**: `CONV`, `REQUANT`, `NARROW`, `ADD`, `MUL`, `MARKER`, `FINISH`;
* **store**: `STORE` (output scratchpad -> DRAM).

The three units run concurrently and are ordered only by *dependency tokens*: every instruction
carries four flags.  `pop_prev`/`pop_next` wait for (and consume) a token sent by the previous or
next unit in the chain load -> compute -> store; `push_prev`/`push_next` send one when the
instruction has completed.  A load has no previous unit and a store no next unit: those flags are
illegal there.  The compiler uses load->compute tokens for "data ready", compute->load for "buffer
free", compute->store for "result ready" and store->compute for "output buffer free".

Scratchpads (entries; their sizes come from `hdl/config.py`):

| buffer | one entry holds | written by / read by |
|---|---|---|
| inp | `cols` int8 (one pixel's channel block) | LOAD / CONV, ADD, MUL |
| wgt | `rows x cols` int8 (W[out_lane][in_lane]) | LOAD / CONV |
| param | `rows` int32 (one value per lane) | LOAD / REQUANT, ADD, MUL |
| acc | `rows` int32 | CONV / REQUANT, NARROW |
| out | `rows` int8 | REQUANT, NARROW, ADD, MUL / STORE |

DRAM activations are channel-blocked: tensor[H][W][C] is stored as [C/cols][H][W][cols] int8, so
one row of one channel block is contiguous and a 2-D DMA moves a tile of it.  Writing a layer's
output at the byte offset of channel block k of a wider tensor is a store with a channel offset:
DenseNet's concatenation is built in place.

Encoding: every instruction is `INSN_BITS` bits, stored little-endian in `INSN_BYTES` bytes.
Bits [3:0] hold the opcode, bits [7:4] the token flags (pop_prev, pop_next, push_prev,
push_next), and the instruction's fields follow from bit 8 upward in the order listed, each
LSB-first; unused high bits are zero.  Opcode 0 is illegal so that zeroed memory traps.

DMA DRAM addresses and strides, and INSN_ADDR, must be multiples of the bus width
(`dram_bus_bytes`); every scratchpad entry is a whole number of bus beats.

Parameter lanes that hold a shift are clamped to [-31, 30], TFLite's range.  The NPU raises `done`
when FINISH retires, or when the last of `INSN_COUNT` instructions has completed.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from softnpu.hdl.faults import ErrorCode  # the fault codes are declared in hdl/faults.py

__all__ = [
    "INSN_BITS", "INSN_BYTES", "ADD_LEFT_SHIFT", "Queue", "Buffer", "ConvMode", "Rounding", "ErrorCode",
    "Field", "Insn", "Load", "Store", "Conv", "Requant", "Narrow", "Add", "Mul", "Marker", "Finish",
    "INSTRUCTIONS", "BY_OPCODE", "BY_MNEMONIC", "TOKEN_FLAGS", "decode", "encode_program",
    "decode_program", "acc_footprint", "inp_window", "load_footprint", "IllegalInstruction", "CSR",
    "COUNTERS", "TRACE_ENTRY_WORDS",
]

INSN_BITS = 256
INSN_BYTES = INSN_BITS // 8
OPCODE_BITS = 4
HEADER_BITS = 8
TOKEN_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")
# TFLite's int8 ADD scales both inputs up by 2**20 before rescaling them (kernels/add.cc).
ADD_LEFT_SHIFT = 20


class Queue(enum.IntEnum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


class Buffer(enum.IntEnum):
    """Target scratchpad of a LOAD."""
    INP = 0
    WGT = 1
    PARAM = 2


class ConvMode(enum.IntEnum):
    """What CONV does at every window tap."""
    MAC = 0   # acc[out_lane] += sum_in_lane W[out_lane][in_lane] * x[in_lane]   (CONV_2D, FULLY_CONNECTED)
    SUM = 1   # acc[lane] += x[lane]        (AVERAGE_POOL_2D, MEAN)
    MAX = 2   # acc[lane] = max(acc, x)     (MAX_POOL_2D)


class Rounding(enum.IntEnum):
    """How REQUANT scales accumulators."""
    FIXED = 0    # MultiplyByQuantizedMultiplier (CONV_2D, MEAN): int32 multiplier and shift
    DOUBLE = 1   # round(double(acc) * multiplier) (reference FULLY_CONNECTED): an IEEE double


class IllegalInstruction(ValueError):
    """A field value that no hardware would accept; carries the ErrorCode to report."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.ILLEGAL_FIELD):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Field:
    name: str
    width: int
    doc: str
    signed: bool = False
    enum: type[enum.IntEnum] | None = None
    min: int | None = None      # smallest legal value (decode accepts anything that fits)

    @functools.cached_property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @functools.cached_property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @functools.cached_property
    def enum_values(self) -> frozenset[int]:
        """The enum's legal values (empty for a plain integer field)."""
        return frozenset(int(m) for m in self.enum) if self.enum is not None else frozenset()


def _f(name, width, doc, **kw) -> Field:
    return Field(name, width, doc, **kw)


class Insn:
    """Base of all instructions: token flags plus the fields listed in `FIELDS`."""

    MNEMONIC: str = ""
    OPCODE: int = 0
    QUEUE: Queue = Queue.COMPUTE
    FIELDS: tuple[Field, ...] = ()
    _FIELD_NAMES: frozenset[str] = frozenset()
    _SLICES: tuple = ()         # (field, bit offset, mask, sign bit or 0) in encoding order
    _CHECKED: tuple = ()        # fields with an enum or a minimum (illegal_reason)
    _END: int = HEADER_BITS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._FIELD_NAMES = frozenset(f.name for f in cls.FIELDS)
        slices, offset = [], HEADER_BITS
        for f in cls.FIELDS:
            slices.append((f, offset, (1 << f.width) - 1, 1 << (f.width - 1) if f.signed else 0))
            offset += f.width
        cls._SLICES = tuple(slices)
        cls._END = offset           # bits above this are zero in a legal encoding
        cls._CHECKED = tuple(f for f in cls.FIELDS if f.enum is not None or f.min is not None)

    def __init__(self, *, pop_prev=False, pop_next=False, push_prev=False, push_next=False,
                 **values):
        self.pop_prev, self.pop_next = bool(pop_prev), bool(pop_next)
        self.push_prev, self.push_next = bool(push_prev), bool(push_next)
        unknown = values.keys() - self._FIELD_NAMES
        if unknown:
            raise TypeError(f"{self.MNEMONIC}: unknown field(s) {sorted(unknown)}; "
                            f"fields are {[f.name for f in self.FIELDS]}")
        for f in self.FIELDS:
            value = values.get(f.name, 0)
            if f.enum is not None and not isinstance(value, f.enum):
                try:
                    value = f.enum(value)
                except ValueError:
                    raise ValueError(f"{self.MNEMONIC}.{f.name}: {value!r} is not one of "
                                     f"{[m.name.lower() for m in f.enum]}") from None
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{self.MNEMONIC}.{f.name} must be an int, got {value!r}")
            if not f.lo <= value <= f.hi:
                raise ValueError(f"{self.MNEMONIC}.{f.name}={value} does not fit in "
                                 f"{'signed ' if f.signed else ''}{f.width} bits "
                                 f"[{f.lo}, {f.hi}]")
            setattr(self, f.name, value)

    # -- tokens -----------------------------------------------------------------------------
    @property
    def flags(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in TOKEN_FLAGS}

    # -- legality (configuration-independent rules; ranges against a config live in the ISS) --
    def illegal_reason(self) -> str | None:
        """Why the hardware would reject this instruction (ILLEGAL_FIELD), or None."""
        if self.QUEUE == Queue.LOAD and (self.pop_prev or self.push_prev):
            return "a load has no previous unit: pop_prev/push_prev are illegal"
        if self.QUEUE == Queue.STORE and (self.pop_next or self.push_next):
            return "a store has no next unit: pop_next/push_next are illegal"
        for f in self._CHECKED:
            value = getattr(self, f.name)
            if f.enum is not None and value not in f.enum_values:
                return f"{f.name}={value} is not a valid {f.enum.__name__}"
            if f.min is not None and value < f.min:
                return f"{f.name}={value} is below its minimum {f.min}"
        return self._extra_illegal_reason()

    def _extra_illegal_reason(self) -> str | None:
        return None

    # -- encoding ---------------------------------------------------------------------------
    def encode_int(self) -> int:
        word = self.OPCODE
        for bit, name in enumerate(TOKEN_FLAGS):
            word |= int(getattr(self, name)) << (OPCODE_BITS + bit)
        offset = HEADER_BITS
        for f in self.FIELDS:
            word |= (int(getattr(self, f.name)) & ((1 << f.width) - 1)) << offset
            offset += f.width
        return word

    def encode(self) -> bytes:
        return self.encode_int().to_bytes(INSN_BYTES, "little")

    @classmethod
    def decode_fields(cls, word: int) -> Insn:
        values = {name: bool((word >> (OPCODE_BITS + i)) & 1) for i, name in enumerate(TOKEN_FLAGS)}
        for f, offset, mask, sign in cls._SLICES:
            raw = (word >> offset) & mask
            if raw & sign:
                raw -= sign << 1
            values[f.name] = f.enum(raw) if raw in f.enum_values else raw
        if word >> cls._END:
            raise IllegalInstruction(f"{cls.MNEMONIC}: bits above {cls._END} are not zero")
        insn = cls.__new__(cls)
        insn.__dict__.update(values)
        return insn

    # -- comparison and text ------------------------------------------------------------------
    def as_tuple(self) -> tuple:
        return (self.OPCODE, *(getattr(self, n) for n in TOKEN_FLAGS),
                *(int(getattr(self, f.name)) for f in self.FIELDS))

    def __eq__(self, other):
        return isinstance(other, Insn) and self.as_tuple() == other.as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def __repr__(self):
        from softnpu.hdl.asm import format_insn
        return f"<{format_insn(self)}>"


def _instruction(cls):
    used = HEADER_BITS + sum(f.width for f in cls.FIELDS)
    assert used <= INSN_BITS, f"{cls.MNEMONIC} needs {used} bits"
    return cls


# ----------------------------------------------------------------------------------------------
# The instructions
# ----------------------------------------------------------------------------------------------
_EXTENT = dict(min=1)


@_instruction
class Load(Insn):
    """2-D strided DMA from DRAM into a scratchpad, with pad fill.

    Reads `blocks` planes of `rows` x `cols` entries; entry (b, y, x) comes from DRAM byte
    `dram + b*block_stride + y*row_stride + x*E` (E = entry bytes of the target buffer).  In the
    scratchpad the tile is stored padded: P = pad_top+rows+pad_bottom rows of
    Q = pad_left+cols+pad_right entries per plane; entry (b, y, x) goes to
    `sram + (b*P + pad_top + y)*Q + pad_left + x` and every pad entry is filled with `pad_value` in
    all lanes (the input zero point for a convolution, so padding contributes exactly zero).
    Padding is only legal into the input scratchpad.
    """
    MNEMONIC, OPCODE, QUEUE = "load", 1, Queue.LOAD
    FIELDS = (
        _f("buffer", 2, "target scratchpad", enum=Buffer),
        _f("sram", 16, "first scratchpad entry of the padded tile"),
        _f("dram", 32, "DRAM byte address of entry (0, 0, 0)"),
        _f("blocks", 16, "planes (channel blocks) to read", **_EXTENT),
        _f("rows", 16, "rows per plane read from DRAM", **_EXTENT),
        _f("cols", 16, "entries per row read from DRAM", **_EXTENT),
        _f("row_stride", 32, "DRAM bytes from one row to the next"),
        _f("block_stride", 32, "DRAM bytes from one plane to the next"),
        _f("pad_top", 4, "pad rows written above each plane"),
        _f("pad_bottom", 4, "pad rows written below each plane"),
        _f("pad_left", 4, "pad entries written left of each row"),
        _f("pad_right", 4, "pad entries written right of each row"),
        _f("pad_value", 8, "int8 written to every lane of a pad entry", signed=True),
    )

    def _extra_illegal_reason(self):
        pads = self.pad_top or self.pad_bottom or self.pad_left or self.pad_right
        if self.buffer != Buffer.INP and (pads or self.pad_value):
            return "padding is only legal into the input scratchpad"
        return None

    @property
    def padded_rows(self) -> int:
        return self.pad_top + self.rows + self.pad_bottom

    @property
    def padded_cols(self) -> int:
        return self.pad_left + self.cols + self.pad_right


@_instruction
class Store(Insn):
    """2-D strided DMA from the output scratchpad to DRAM.

    Entry `sram + (b*rows + y)*cols + x` goes to DRAM byte
    `dram + b*block_stride + y*row_stride + x*rows_of_array`.  Pointing `dram` at channel block k
    of a wider tensor writes a concatenation in place.
    """
    MNEMONIC, OPCODE, QUEUE = "store", 2, Queue.STORE
    FIELDS = (
        _f("sram", 16, "first output-scratchpad entry"),
        _f("dram", 32, "DRAM byte address of entry (0, 0, 0)"),
        _f("blocks", 16, "planes (channel blocks) to write", **_EXTENT),
        _f("rows", 16, "rows per plane", **_EXTENT),
        _f("cols", 16, "entries per row", **_EXTENT),
        _f("row_stride", 32, "DRAM bytes from one row to the next"),
        _f("block_stride", 32, "DRAM bytes from one plane to the next"),
    )


@_instruction
class Conv(Insn):
    """One tile of a convolution, fully-connected layer or pooling window on the MAC array.

    Hardware loops (outermost first): out block co < out_blocks, output row oh < out_h, output
    column ow < out_w, input block ci < in_blocks, kernel row i < kh, kernel column j < kw.
    The input entry of a tap is `inp + ci*inp_block + (oh*stride_h + i)*inp_row + ow*stride_w + j`.

    * mode MAC: acc entry `acc + (co*out_h + oh)*out_w + ow` receives the sum over taps of
      W @ x with W = wgt entry `wgt + ((co*in_blocks + ci)*kh + i)*kw + j`: the array consumes
      one input entry per cycle.
    * modes SUM and MAX (pooling, MEAN): lanes are channels; out_blocks must be 1 and the acc entry
      is `acc + (ci*out_h + oh)*out_w + ow`; each tap adds x or takes max(acc, x).

    With accumulate=0 the accumulator starts from 0 (MAC, SUM) or -2**31 (MAX); with accumulate=1
    it starts from its current contents, so a layer's K dimension or a large window can be split
    across instructions.  Sums wrap at 32 bits.
    """
    MNEMONIC, OPCODE, QUEUE = "conv", 3, Queue.COMPUTE
    FIELDS = (
        _f("mode", 2, "MAC, SUM or MAX", enum=ConvMode),
        _f("accumulate", 1, "1: add to the accumulators' contents; 0: start from identity"),
        _f("out_blocks", 8, "output channel blocks (MAC); 1 in SUM/MAX", **_EXTENT),
        _f("in_blocks", 16, "input channel blocks", **_EXTENT),
        _f("kh", 4, "kernel rows", **_EXTENT),
        _f("kw", 4, "kernel columns", **_EXTENT),
        _f("stride_h", 4, "vertical stride, input rows", **_EXTENT),
        _f("stride_w", 4, "horizontal stride, input entries", **_EXTENT),
        _f("out_h", 16, "output rows of the tile", **_EXTENT),
        _f("out_w", 16, "output columns of the tile", **_EXTENT),
        _f("acc", 16, "first accumulator entry"),
        _f("inp", 16, "input entry of tap (0, 0) of output (0, 0)"),
        _f("wgt", 16, "first weight entry (MAC only)"),
        _f("inp_row", 16, "input entries from one row to the next"),
        _f("inp_block", 16, "input entries from one channel block to the next"),
    )

    def _extra_illegal_reason(self):
        if self.mode != ConvMode.MAC and self.out_blocks != 1:
            return f"mode {ConvMode(self.mode).name} needs out_blocks=1, got {self.out_blocks}"
        return None

    @property
    def taps(self) -> int:
        return self.in_blocks * self.kh * self.kw

    @property
    def array_cycles(self) -> int:
        """Input entries streamed through the array: one per cycle."""
        return self.out_blocks * self.out_h * self.out_w * self.taps


_OUTPUT_STAGE = (
    _f("zero_point", 8, "output zero point added after scaling", signed=True),
    _f("act_min", 8, "clamp low (fused activation)", signed=True),
    _f("act_max", 8, "clamp high (fused activation)", signed=True),
)


class _VectorInsn(Insn):
    """Vector ops walk `blocks` x `count` entries: entry i of block b is at base + b*count + i."""

    def _extra_illegal_reason(self):
        if self.act_min > self.act_max:
            return f"act_min={self.act_min} > act_max={self.act_max}"
        return None


@_instruction
class Requant(_VectorInsn):
    """Per-channel requantization of accumulators (CONV_2D, FULLY_CONNECTED, MEAN).

    Block b reads three lane vectors from param entries `param + 3b`, `+1`, `+2`.
    rounding=fixed: they are bias, mult, shift and out = clamp(MBQM(acc + bias, mult, shift) +
    zero_point, act_min, act_max), MBQM being TFLite's MultiplyByQuantizedMultiplier.
    rounding=double: they are bias and the low and high words of an IEEE double M, and
    out = clamp(int32(round(double(acc + bias) * M)) + zero_point, ...) as TFLite's reference
    FULLY_CONNECTED computes it (round half away from zero; out of int32 range gives -2**31).
    """
    MNEMONIC, OPCODE, QUEUE = "requant", 4, Queue.COMPUTE
    FIELDS = (
        _f("out", 16, "first output entry"),
        _f("acc", 16, "first accumulator entry"),
        _f("param", 16, "first parameter entry (3 per block)"),
        _f("blocks", 16, "channel blocks", **_EXTENT),
        _f("count", 16, "entries per block", **_EXTENT),
        *_OUTPUT_STAGE,
        _f("rounding", 1, "fixed (int32 multiplier and shift) or double", enum=Rounding),
    )


@_instruction
class Narrow(_VectorInsn):
    """Accumulators to int8 for pooling: out = clamp(round(acc / divisor), act_min, act_max).

    Rounds half away from zero as TFLite's AVERAGE_POOL_2D; divisor=1 gives MAX_POOL_2D's output.
    """
    MNEMONIC, OPCODE, QUEUE = "narrow", 5, Queue.COMPUTE
    FIELDS = (
        _f("out", 16, "first output entry"),
        _f("acc", 16, "first accumulator entry"),
        _f("blocks", 16, "channel blocks", **_EXTENT),
        _f("count", 16, "entries per block", **_EXTENT),
        _f("divisor", 16, "window size to divide by", **_EXTENT),
        _f("act_min", 8, "clamp low", signed=True),
        _f("act_max", 8, "clamp high", signed=True),
    )


_BINARY = (
    _f("out", 16, "first output entry"),
    _f("a", 16, "first input entry of operand a"),
    _f("b", 16, "first entry of operand b (input scratchpad, or param when b_param=1)"),
    _f("b_param", 1, "1: operand b is one param entry per block, broadcast over its entries"),
    _f("param", 16, "first parameter entry"),
    _f("blocks", 16, "channel blocks", **_EXTENT),
    _f("count", 16, "entries per block", **_EXTENT),
    *_OUTPUT_STAGE,
)


@_instruction
class Add(_VectorInsn):
    """TFLite int8 ADD (residual connections, folded batch-norm shifts).

    With per-lane parameters at param+0..7 = a_offset, a_mult, a_shift, b_offset, b_mult,
    b_shift, out_mult, out_shift: s = MBQM((a+a_offset) << 20, a_mult, a_shift) +
    MBQM((b+b_offset) << 20, b_mult, b_shift); out = clamp(MBQM(s, out_mult, out_shift) +
    zero_point, act_min, act_max).
    """
    MNEMONIC, OPCODE, QUEUE = "add", 6, Queue.COMPUTE
    FIELDS = _BINARY
    PARAMS = ("a_offset", "a_mult", "a_shift", "b_offset", "b_mult", "b_shift",
              "out_mult", "out_shift")


@_instruction
class Mul(_VectorInsn):
    """TFLite int8 MUL (batch-norm scale folded by the converter).

    With per-lane parameters at param+0..3 = a_offset, b_offset, out_mult, out_shift:
    out = clamp(MBQM((a+a_offset)*(b+b_offset), out_mult, out_shift) + zero_point, ...).
    """
    MNEMONIC, OPCODE, QUEUE = "mul", 7, Queue.COMPUTE
    FIELDS = _BINARY
    PARAMS = ("a_offset", "b_offset", "out_mult", "out_shift")


@_instruction
class Marker(Insn):
    """Snapshot the performance counters into the trace buffer, tagged with `id` (a layer)."""
    MNEMONIC, OPCODE, QUEUE = "marker", 8, Queue.COMPUTE
    FIELDS = (_f("id", 16, "tag stored with the snapshot"),)


@_instruction
class Finish(Insn):
    """Wait until every unit is idle, then set STATUS.done and raise the interrupt."""
    MNEMONIC, OPCODE, QUEUE = "finish", 9, Queue.COMPUTE
    FIELDS = ()


INSTRUCTIONS: tuple[type[Insn], ...] = (Load, Store, Conv, Requant, Narrow, Add, Mul, Marker, Finish)
BY_OPCODE = {cls.OPCODE: cls for cls in INSTRUCTIONS}
BY_MNEMONIC = {cls.MNEMONIC: cls for cls in INSTRUCTIONS}
assert len(BY_OPCODE) == len(INSTRUCTIONS) and 0 not in BY_OPCODE


def decode(data: bytes | int) -> Insn:
    """Decode one instruction; raises IllegalInstruction (ILLEGAL_OPCODE) for unknown opcodes."""
    word = int.from_bytes(data, "little") if isinstance(data, (bytes, bytearray, memoryview)) else data
    opcode = word & ((1 << OPCODE_BITS) - 1)
    cls = BY_OPCODE.get(opcode)
    if cls is None:
        raise IllegalInstruction(f"opcode {opcode} is not defined", ErrorCode.ILLEGAL_OPCODE)
    return cls.decode_fields(word)


def acc_footprint(insn: Insn) -> tuple[int, int] | None:
    """The accumulator entries [first, end) an instruction reads or writes, or None."""
    if isinstance(insn, Conv):
        blocks = insn.out_blocks if insn.mode == ConvMode.MAC else insn.in_blocks
        return insn.acc, insn.acc + blocks * insn.out_h * insn.out_w
    if isinstance(insn, (Requant, Narrow)):
        return insn.acc, insn.acc + insn.blocks * insn.count
    return None


def inp_window(conv: Conv) -> tuple[int, int]:
    """The input entries [first, end) a conv's windows span."""
    last = (conv.inp + (conv.in_blocks - 1) * conv.inp_block
            + ((conv.out_h - 1) * conv.stride_h + conv.kh - 1) * conv.inp_row
            + (conv.out_w - 1) * conv.stride_w + conv.kw - 1)
    return conv.inp, last + 1


def load_footprint(load: Load) -> tuple[int, int]:
    """The scratchpad entries [first, end) a LOAD writes (its padded tiles)."""
    return load.sram, load.sram + load.blocks * load.padded_rows * load.padded_cols


def encode_program(program) -> bytes:
    return b"".join(insn.encode() for insn in program)


def decode_program(data: bytes) -> list[Insn]:
    if len(data) % INSN_BYTES:
        raise ValueError(f"program of {len(data)} bytes is not a whole number of "
                         f"{INSN_BYTES}-byte instructions")
    return [decode(data[i:i + INSN_BYTES]) for i in range(0, len(data), INSN_BYTES)]


# ----------------------------------------------------------------------------------------------
# Programmer's model: the CSR map is declared in hdl/csr_map.py (registers, fields, access)
from softnpu.hdl.csr_map import COUNTERS, CSR, TRACE_ENTRY_WORDS  # noqa: E402
