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
)

__all__ = ["dma_cycles", "fetch_cycles", "insn_cycles", "dram_bytes"]

_LOAD_BUFFER = {Buffer.INP: "inp", Buffer.WGT: "wgt", Buffer.PARAM: "param"}


# Fixed costs measured on the RTL (hdl/*.py FSMs), in cycles:
ISSUE = 2            # take the head instruction, decode/check it
RETIRE = 1           # push tokens, back to idle
READ_BURST = 3       # arbitration and address handshake of a read burst
WRITE_BURST = 3      # address handshake and response of a write burst
ROW = 1              # a DMA row's address computation
FETCH = 7            # fetch per instruction: next, arbitration, handshake, decode, dispatch
PARAM = 1            # the vector unit's parameter fetch, per block
RQD_LATENCY = 9      # REQUANT rounding=double: a lane's result lands this long after it enters
TOKEN = 1            # a token pushed at a unit's retire cycle is seen by its peer one cycle later
QUEUE = 2            # an instruction written into a queue reaches the unit two cycles later
RECIPROCAL = 32      # NARROW's floor(2**31 / divisor), one bit per cycle


def dma_cycles(config: NPUConfig, rows: int, row_bytes: int, write: bool = False) -> int:
    """`rows` contiguous runs of `row_bytes`: each run is split into bursts of at most
    dram_max_burst beats, and each burst pays dram_latency and a handshake before its beats
    (one per cycle)."""
    burst_bytes = config.dram_bus_bytes * config.dram_max_burst
    beats = -(-row_bytes // config.dram_bus_bytes)
    bursts = -(-row_bytes // burst_bytes)
    per_burst = config.dram_latency + (WRITE_BURST if write else READ_BURST)
    return rows * (ROW + bursts * per_burst + beats)


def fetch_cycles(config: NPUConfig) -> int:
    """Cycles to fetch, check and dispatch one instruction (one burst)."""
    return FETCH + config.dram_latency + -(-INSN_BYTES // config.dram_bus_bytes)


def insn_cycles(config: NPUConfig, insn: Insn) -> int:
    """Modelled execution cycles of one instruction, excluding token waits."""
    if isinstance(insn, Load):
        entry = config.entry_bytes(_LOAD_BUFFER[insn.buffer])
        pads = insn.blocks * (insn.padded_rows * insn.padded_cols - insn.rows * insn.cols)
        return ISSUE + RETIRE + dma_cycles(config, insn.blocks * insn.rows, insn.cols * entry) + pads
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
