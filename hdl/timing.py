"""The cycle model of the NPU: modelled cycles per instruction, shared by the ISS (which schedules
them under the dependency tokens) and the compiler (which estimates and tiles with them).
Tightened against the RTL's performance counters."""

from __future__ import annotations

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import (
    INSN_BYTES,
    Add,
    Buffer,
    Conv,
    Finish,
    Insn,
    Load,
    Marker,
    Mul,
    Narrow,
    Requant,
    Rounding,
    Store,
    acc_footprint,
)

__all__ = ["ComputeIssue", "dma_cycles", "fetch_cycles", "insn_cycles", "dram_bytes", "overlaps_conv"]

_LOAD_BUFFER = {Buffer.INP: "inp", Buffer.WGT: "wgt", Buffer.PARAM: "param"}


# Fixed costs measured on the RTL (hdl/*.py FSMs), in cycles:
ISSUE = 2            # take the head instruction, decode/check it
RETIRE = 1           # push tokens, back to idle
READ_BURST = 0       # arbitration and address handshake of a read burst (under ISSUE)
WRITE_BURST = 1      # address handshake of a write burst
READ_SLOT = 2        # a read burst's place in flight beyond latency and beats: the next address waits
WRITE_SLOT = 1       # the same for a write burst
DMA = 1              # starting the burst engine
FETCH = 7            # fetch per instruction: next, arbitration, handshake, decode, dispatch
PARAM = 1            # the vector unit's parameter fetch, per block
RQD_LATENCY = 9      # REQUANT rounding=double: a lane's result lands this long after it enters
TOKEN = 1            # a token pushed at a unit's retire cycle is seen by its peer one cycle later
QUEUE = 2            # an instruction written into a queue reaches the unit two cycles later
RECIPROCAL = 32      # NARROW's floor(2**31 / divisor), one bit per cycle


def _stream_cycles(config: NPUConfig, rows: int, row_bytes: int, write: bool) -> tuple[int, int]:
    """(first, rest) of a 2-D DMA of `rows` runs of `row_bytes`: the cycles from its first
    address to its first data beat, and from there to the end of its data (for a write, to its
    last response).  The burst engine (hdl/burst.py) keeps up to dram_outstanding bursts of at
    most dram_max_burst beats in flight, across rows; a burst holds its place from its address to
    its last beat (a write: to its response, dram_latency after the last beat), and beats move one
    per cycle.  When dram_outstanding bursts cover the latency the data streams at one beat per
    cycle; otherwise every dram_outstanding bursts wait out one burst's time in flight."""
    bus, n_out, latency = config.dram_bus_bytes, config.dram_outstanding, config.dram_latency
    beats = rows * -(-row_bytes // bus)
    bursts = rows * -(-row_bytes // (bus * config.dram_max_burst))
    if not beats:
        return 0, 0
    first = latency + (WRITE_BURST if write else READ_BURST)
    in_flight = first + beats / bursts + (WRITE_SLOT if write else READ_SLOT)   # one burst's place
    windows, tail = divmod(bursts - 1, n_out)
    rest = max(beats, windows * in_flight + (tail + 1) * beats / bursts)
    if write:      # the last response comes dram_latency after the last beat
        return WRITE_BURST, -(-int(rest * 16) // 16) + latency
    return first, -(-int(rest * 16) // 16)


def dma_cycles(config: NPUConfig, rows: int, row_bytes: int, write: bool = False) -> int:
    """Cycles of a DMA of `rows` contiguous runs of `row_bytes` (one LOAD or STORE's data
    movement, without pad entries): one latency, then the data as the bursts in flight allow
    (see `_stream_cycles`)."""
    first, rest = _stream_cycles(config, rows, row_bytes, write)
    return DMA + first + rest


def fetch_cycles(config: NPUConfig) -> int:
    """Cycles to fetch, check and dispatch one instruction (one burst)."""
    return FETCH + config.dram_latency + -(-INSN_BYTES // config.dram_bus_bytes)


def insn_cycles(config: NPUConfig, insn: Insn) -> int:
    """Modelled execution cycles of one instruction, excluding token waits."""
    if isinstance(insn, Load):
        entry = config.entry_bytes(_LOAD_BUFFER[insn.buffer])
        pads = insn.blocks * (insn.padded_rows * insn.padded_cols - insn.rows * insn.cols)
        # pad entries are written one per cycle by the data side while bursts are in flight: those
        # before the first data entry under the latency, those between rows under the data's
        # waits if any, those after the last data entry at the end
        lead = insn.pad_top * insn.padded_cols + insn.pad_left
        trail = insn.pad_right + insn.pad_bottom * insn.padded_cols
        first, rest = _stream_cycles(config, insn.blocks * insn.rows, insn.cols * entry, write=False)
        beats = insn.blocks * insn.rows * -(-insn.cols * entry // config.dram_bus_bytes)
        if pads:       # a cycle per data row to go from pads to beats
            pads += insn.blocks * insn.rows
        return ISSUE + RETIRE + DMA + max(lead, first) + max(rest, beats + pads - lead - trail) + trail
    if isinstance(insn, Store):
        return ISSUE + RETIRE + 1 + dma_cycles(config, insn.blocks * insn.rows, insn.cols * config.rows,
                                               write=True)
    if isinstance(insn, Conv):
        # one tap per cycle, then the last tap's write (config.mac_latency) before done
        return ISSUE + insn.array_cycles + config.mac_latency
    if isinstance(insn, Marker):
        return ISSUE
    if isinstance(insn, Finish):
        return ISSUE + RETIRE
    if isinstance(insn, Requant) and insn.rounding == Rounding.DOUBLE:
        # one shared pipelined lane: each entry is read, latched, fed one lane per cycle, then
        # written when its last lane comes out
        return ISSUE + insn.blocks * (PARAM + 3 + insn.count * (config.rows + 2 + RQD_LATENCY))
    # one entry per cycle, then the pipeline drains (config.vector_latency) before the next
    # block's parameters are fetched, and before the instruction retires
    per_block = insn.count + PARAM + config.vector_latency
    if isinstance(insn, Narrow):
        return ISSUE + RECIPROCAL + insn.blocks * per_block
    if isinstance(insn, Requant):
        params = 3 * insn.blocks
    elif isinstance(insn, (Add, Mul)):
        params = len(insn.PARAMS) + insn.b_param * insn.blocks
    else:
        params = 0
    return ISSUE + insn.blocks * per_block + params


def dram_bytes(config: NPUConfig, insn: Insn) -> tuple[int, int]:
    """(bytes read, bytes written) in device memory by one instruction's execution."""
    if isinstance(insn, Load):
        entry = config.entry_bytes(_LOAD_BUFFER[insn.buffer])
        return insn.blocks * insn.rows * insn.cols * entry, 0
    if isinstance(insn, Store):
        return 0, insn.blocks * insn.rows * insn.cols * config.rows
    return 0, 0


def overlaps_conv(vector: Insn | None, conv: Conv) -> bool:
    """Whether the compute unit starts `conv` while the vector op `vector` still runs
    (hdl/compute_unit.py): `vector` reads only accumulators (REQUANT, NARROW; ADD and MUL read the
    input scratchpad's port the conv engine uses) and none of those the CONV reads or writes."""
    if not isinstance(vector, (Requant, Narrow)):
        return False
    lo, hi = acc_footprint(vector)
    c_lo, c_hi = acc_footprint(conv)
    return c_hi <= lo or c_lo >= hi


class ComputeIssue:
    """The compute unit's timing (hdl/compute_unit.py), one instruction at a time in program order.

    The unit issues its head instruction, decodes it (ISSUE cycles) and hands it to an engine.  A
    vector op runs on the vector unit while the unit goes on issuing: the next instruction may
    issue in the cycle the vector op ends (its `done`), or, if it is a CONV that `overlaps_conv`
    the running vector op, right away; a CONV that does not waits in decode for the vector op's
    `done` and starts then.  Token pushes stay in program order: a CONV that pushes a token and
    ends while a vector op still runs retires the cycle after that op's `done`.

    `earliest(insn)` is when the unit can issue `insn` as far as its own engines go (tokens and
    the queue aside); `run(insn, start)` takes it at `start` and returns the cycle its tokens are
    pushed by + 1 (`end`, as `insn_cycles` counts: start + cost when nothing waits)."""

    def __init__(self, config: NPUConfig):
        self.config = config
        self.fsm_free = 0           # the cycle the unit's issue logic is idle again
        self.vector_end = 0         # the running vector op's done cycle + 1
        self.vector: Insn | None = None

    def earliest(self, insn: Insn) -> int:
        if isinstance(insn, Conv):
            return self.fsm_free
        return max(self.fsm_free, self.vector_end - 1)

    def run(self, insn: Insn, start: int) -> int:
        cost = insn_cycles(self.config, insn)
        if isinstance(insn, (Requant, Narrow, Add, Mul)):
            self.vector, self.vector_end = insn, start + cost
            self.fsm_free = start + ISSUE
            return start + cost
        if isinstance(insn, Conv):
            begin = start
            if self.vector_end - 1 > start + 1 and not overlaps_conv(self.vector, insn):
                begin = self.vector_end - 2          # held in decode until the vector op's done
            end = begin + cost
            if (insn.push_prev or insn.push_next) and self.vector_end >= end:
                end = self.vector_end + 1            # retired after the vector op's push
            self.fsm_free = end
            return end
        self.fsm_free = start + cost
        return start + cost

