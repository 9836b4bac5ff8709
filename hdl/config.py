"""NPUConfig: the one description of an NPU instance that the HDL, the compiler and the ISS read.

Units are stated on every field: *entries* are scratchpad words (see `hdl/isa.py` for what one
entry holds in each buffer), *bytes* are bytes, *cycles* are NPU clock cycles.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

__all__ = ["NPUConfig", "PRESETS", "load_config", "preset", "MIN_VECTOR_LATENCY", "MIN_MAC_LATENCY"]

# The vector unit's shortest pipeline (hdl/vector_unit.py): the read, eight stages of arithmetic
# (ADD's two multiply-by-quantized-multiplier in series, at most one 32 x 32-bit multiply or one
# wide add per stage), the output register.  A longer `vector_latency` adds delay registers.
MIN_VECTOR_LATENCY = 10
# The conv engine's shortest pipeline (hdl/conv_engine.py): the reads, the products, the adder
# trees, the fold into the running value, then the write.  A longer `mac_latency` delays the write.
MIN_MAC_LATENCY = 4


SCRATCHPADS = ("inp", "wgt", "acc", "out", "param")


@dataclasses.dataclass(frozen=True)
class NPUConfig:
    """A soft-NPU instance.

    The MAC array is ``rows x cols``: every cycle it multiplies one input vector of ``cols`` int8
    channels (one pixel's channel block) by a ``rows x cols`` int8 weight block and adds the
    ``rows`` int32 dot products into one accumulator entry.  ``cols`` is therefore the channel
    block of the DRAM activation layout and ``rows`` the output-channel block.

    The memory is an AXI4 slave that answers in order: a read burst's first beat comes
    ``dram_latency`` cycles after its address, then one beat of ``dram_bus_bytes`` per cycle.  The
    load and the store unit each keep up to ``dram_outstanding`` bursts of at most
    ``dram_max_burst`` beats in flight, so a DMA streams at the bus's bandwidth once
    ``dram_outstanding * dram_max_burst`` beats cover the latency (hdl/burst.py, hdl/timing.py).
    """

    name: str = "custom"
    rows: int = 16                  # output channels per cycle (accumulator lanes)
    cols: int = 16                  # input channels per cycle (input lanes)
    inp_depth: int = 4096           # input scratchpad, entries of `cols` int8
    wgt_depth: int = 1024           # weight scratchpad, entries of `rows*cols` int8
    acc_depth: int = 4096           # accumulator scratchpad, entries of `rows` int32
    out_depth: int = 4096           # output scratchpad, entries of `rows` int8
    param_depth: int = 512          # parameter scratchpad, entries of `rows` int32
    dram_bytes: int = 1 << 30       # device memory size, bytes
    dram_bus_bytes: int = 16        # AXI data width, bytes per beat (one beat per cycle)
    dram_latency: int = 32          # cycles from a burst's address to its first data beat
    dram_max_burst: int = 16        # beats per AXI burst (AXI4 INCR allows up to 256)
    dram_outstanding: int = 4       # AXI bursts in flight per direction (load: AR/R, store: AW/W/B)
    insn_queue_depth: int = 16      # instructions buffered per unit queue after dispatch
    token_queue_depth: int = 8      # dependency tokens held per direction
    trace_depth: int = 1024         # marker snapshots kept in the trace buffer
    vector_latency: int = MIN_VECTOR_LATENCY  # cycles from an entry's read to its write, vector unit
    mac_latency: int = MIN_MAC_LATENCY  # cycles from a conv tap's reads to its write
    clock_mhz: float = 250.0        # used only to report latencies in seconds

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "name":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"NPUConfig.name must be a non-empty string, got {value!r}")
                continue
            if field.name == "clock_mhz":
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"NPUConfig.clock_mhz must be a positive number, got {value!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"NPUConfig.{field.name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"NPUConfig.{field.name} must be positive, got {value}")
        if self.rows != self.cols:
            raise ValueError(
                f"NPUConfig rows={self.rows} and cols={self.cols} differ: the window modes (SUM, MAX) "
                "and the element-wise ops map input lanes one-to-one onto accumulator lanes, so the "
                "array must be square")
        for name in ("rows", "cols", "dram_bus_bytes"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"NPUConfig.{name} must be a power of two, got {value}")
        for name in ("inp_depth", "wgt_depth", "acc_depth", "out_depth", "param_depth"):
            if getattr(self, name) > 1 << 16:
                raise ValueError(f"NPUConfig.{name}={getattr(self, name)} exceeds the ISA's 16-bit "
                                 "scratchpad addresses (65536 entries)")
        if self.vector_latency < MIN_VECTOR_LATENCY:
            raise ValueError(f"NPUConfig.vector_latency={self.vector_latency} is shorter than the vector "
                             f"unit's pipeline: at least {MIN_VECTOR_LATENCY} cycles")
        if self.mac_latency < MIN_MAC_LATENCY:
            raise ValueError(f"NPUConfig.mac_latency={self.mac_latency} is shorter than the conv engine's "
                             f"pipeline: at least {MIN_MAC_LATENCY} cycles")
        if self.dram_bytes > 1 << 32:
            raise ValueError(f"NPUConfig.dram_bytes={self.dram_bytes} exceeds the ISA's 32-bit DRAM "
                             "addresses (4 GiB)")
        if self.dram_max_burst > 256:
            raise ValueError(f"NPUConfig.dram_max_burst={self.dram_max_burst}: AXI4 bursts are at "
                             "most 256 beats")
        if self.dram_outstanding > 64:
            raise ValueError(f"NPUConfig.dram_outstanding={self.dram_outstanding}: at most 64 bursts in "
                             "flight per direction")
        if self.dram_bus_bytes > self.cols:
            raise ValueError(f"NPUConfig.dram_bus_bytes={self.dram_bus_bytes} exceeds cols={self.cols}: "
                             "every scratchpad entry must be a whole number of bus beats")

    # Derived quantities, in the units of the names.
    @property
    def macs_per_cycle(self) -> int:
        return self.rows * self.cols

    @property
    def block(self) -> int:
        """Channel block of the DRAM activation layout (= cols = rows)."""
        return self.cols

    def entry_bytes(self, buffer: str) -> int:
        """Bytes of one entry of a scratchpad (`inp`, `wgt`, `acc`, `out`, `param`)."""
        if buffer == "inp":
            return self.cols
        if buffer == "wgt":
            return self.rows * self.cols
        if buffer == "acc" or buffer == "param":
            return 4 * self.rows
        if buffer == "out":
            return self.rows
        raise ValueError(f"unknown scratchpad {buffer!r}; expected one of {sorted(SCRATCHPADS)}")

    def depth(self, buffer: str) -> int:
        """Entries of a scratchpad."""
        if buffer not in SCRATCHPADS:
            raise ValueError(f"unknown scratchpad {buffer!r}; expected one of {sorted(SCRATCHPADS)}")
        return getattr(self, f"{buffer}_depth")

    def scratchpad_bytes(self) -> dict[str, int]:
        return {b: self.depth(b) * self.entry_bytes(b) for b in SCRATCHPADS}

    def cycles_to_seconds(self, cycles: int) -> float:
        return cycles / (self.clock_mhz * 1e6)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> NPUConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NPUConfig fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> NPUConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, NPUConfig] = {
    # Small enough that tests tile everything and Verilator builds in seconds.
    "tiny": NPUConfig(name="tiny", rows=4, cols=4, inp_depth=1024, wgt_depth=256, acc_depth=512,
                      out_depth=512, param_depth=128, dram_bytes=1 << 26, dram_bus_bytes=4,
                      dram_latency=8, dram_max_burst=16, insn_queue_depth=4, token_queue_depth=4,
                      trace_depth=64, clock_mhz=100.0),
    # 16x16 int8 MACs: 64 KiB input, 256 KiB weight, 256 KiB accumulator scratchpads.
    "default": NPUConfig(name="default"),
    # 32x32 int8 MACs with a 256-bit memory bus.
    "large": NPUConfig(name="large", rows=32, cols=32, inp_depth=8192, wgt_depth=1024,
                       acc_depth=8192, out_depth=8192, param_depth=1024, dram_bus_bytes=32,
                       dram_latency=40, clock_mhz=300.0),
}


def preset(name: str) -> NPUConfig:
    """The named preset (`tiny`, `default`, `large`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown NPU config {name!r}; presets are {sorted(PRESETS)}") from None


def load_config(spec: str | os.PathLike) -> NPUConfig:
    """A preset name (`tiny`, `default`, `large`) or a JSON file of NPUConfig fields.

    A file may start from a preset (`{"base": "default", "rows": 32, "cols": 32}`); fields it does not
    give keep the base's values (the dataclass defaults without `base`); `name` defaults to the
    file's stem.  Every field is validated as NPUConfig does; errors name the file and the field.
    """
    text = os.fspath(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.suffix == ".json" and not path.exists():
        raise ValueError(f"unknown NPU config {text!r}: not a preset ({', '.join(sorted(PRESETS))}) "
                         "nor a .json file")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"NPU config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"NPU config file {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"NPU config file {path}: expected a JSON object of NPUConfig fields, "
                         f"got {type(data).__name__}")
    base_name = data.pop("base", None)
    if base_name is not None and base_name not in PRESETS:
        raise ValueError(f"NPU config file {path}: base {base_name!r} is not a preset "
                         f"({', '.join(sorted(PRESETS))})")
    fields = PRESETS[base_name].to_dict() if base_name else {}
    fields.update(data)
    if "name" not in data:
        fields["name"] = path.stem
    try:
        return NPUConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"NPU config file {path}: {exc}") from None
