"""Generates docs/isa.md from hdl/isa.py, hdl/faults.py and hdl/csr_map.py (`nox -s docs`, or
`python -m softnpu.hdl.isa_doc`).

tests/hdl/test_isa.py fails when the checked-in docs/isa.md differs from `render()`.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from softnpu.hdl import csr_map, faults, isa
from softnpu.hdl.config import PRESETS

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "isa.md"

_FAULTS = """
    A fault stops the NPU: every unit, queue and token counter is cleared, STATUS.done and
    STATUS.error rise, and so does the interrupt when IRQ_ENABLE.enable is set.  ERROR holds the
    code, ERROR_PC the faulting instruction's index and ERROR_ADDR/ERROR_ADDR_HI its address for the
    codes that have one.  The first fault wins; in one cycle fetch's wins over load's, compute's,
    store's and a deadlock.  Fetch checks an instruction (ILLEGAL_OPCODE, ILLEGAL_FIELD) when it
    reaches it, so an instruction after FINISH, or after an earlier fault, never faults.  The ISS
    reports the same code, index and address for a program, and every device backend raises
    `NPUFault` with the same message: code, index, the instruction's disassembly (`.word` for one
    that does not decode, `<not fetched>` where fetch could not read it), address and meaning.
"""


def _field_rows(cls) -> list[str]:
    rows = ["| bits | field | width | meaning |", "|---|---|---|---|"]
    rows.append(f"| [{isa.OPCODE_BITS - 1}:0] | opcode | {isa.OPCODE_BITS} | {cls.OPCODE} |")
    for i, name in enumerate(isa.TOKEN_FLAGS):
        rows.append(f"| [{isa.OPCODE_BITS + i}] | {name} | 1 | dependency token flag |")
    offset = isa.HEADER_BITS
    for f in cls.FIELDS:
        kind = f"signed {f.width}" if f.signed else str(f.width)
        meaning = f.doc
        if f.enum is not None:
            meaning += " (" + ", ".join(f"{m.value}={m.name.lower()}" for m in f.enum) + ")"
        if f.min is not None:
            meaning += f"; at least {f.min}"
        rows.append(f"| [{offset + f.width - 1}:{offset}] | {f.name} | {kind} | {meaning} |")
        offset += f.width
    return rows


def render() -> str:
    out = ["# softnpu instruction set", "",
           "<!-- generated from hdl/isa.py by `nox -s docs`; do not edit by hand -->", ""]
    out += [inspect.cleandoc(isa.__doc__), ""]
    out += ["## Instructions", "", "| opcode | mnemonic | queue | summary |", "|---|---|---|---|"]
    for cls in isa.INSTRUCTIONS:
        summary = inspect.cleandoc(cls.__doc__).splitlines()[0]
        out.append(f"| {cls.OPCODE} | `{cls.MNEMONIC}` | {cls.QUEUE.name.lower()} | {summary} |")
    out.append("")
    for cls in isa.INSTRUCTIONS:
        out += [f"### `{cls.MNEMONIC}` (opcode {cls.OPCODE}, {cls.QUEUE.name.lower()} queue)", "",
                inspect.cleandoc(cls.__doc__), ""]
        out += _field_rows(cls) + [""]
    out += ["## Faults (hdl/faults.py)", "", inspect.cleandoc(_FAULTS), "",
            "| code | name | meaning | ERROR_ADDR |", "|---|---|---|---|"]
    for member in faults.ErrorCode:
        out.append(f"| {member.value} | {member.name} | {faults.MEANING[member]} | "
                   f"{faults.ADDRESSED.get(member, '0')} |")
    out += ["", "## CSR map (AXI4-Lite, byte offsets, 32-bit registers; hdl/csr_map.py)", "",
            "| offset | register | access | meaning |", "|---|---|---|---|"]
    for reg in csr_map.REGISTERS:
        words = f" ({reg.count} words)" if reg.count > 1 else ""
        out.append(f"| {reg.offset:#06x} | {reg.name} | {reg.access} | {reg.doc}{words} |")
    out += ["", "Fields:", "", "| register | bits | field | meaning |", "|---|---|---|---|"]
    for reg in csr_map.REGISTERS:
        for f in reg.fields:
            out.append(f"| {reg.name} | {f.bits} | {f.name} | {f.doc} |")
    out += ["", "Counters, in order (64-bit, at `COUNTERS + 8*i`): "
            + ", ".join(f"`{c}`" for c in csr_map.COUNTERS) + ".", ""]
    out += ["## Configurations (hdl/config.py presets)", "",
            "| preset | array | inp | wgt | acc | out | param | bus bytes | DRAM latency | clock MHz |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in PRESETS.items():
        kib = {b: v // 1024 for b, v in c.scratchpad_bytes().items()}
        out.append(f"| {name} | {c.rows}x{c.cols} | {kib['inp']} KiB | {kib['wgt']} KiB | {kib['acc']} KiB "
                   f"| {kib['out']} KiB | {kib['param']} KiB | {c.dram_bus_bytes} | {c.dram_latency} "
                   f"| {c.clock_mhz:g} |")
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render())
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
