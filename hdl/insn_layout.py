"""Instruction words as `amaranth.lib.data` layouts, derived from hdl/isa.py (never hand-sliced),
and the decoder's legality check, which mirrors `Insn.illegal_reason`."""

from __future__ import annotations

from amaranth import Const, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import data

from softnpu.hdl import isa

__all__ = ["layout", "view", "LAYOUTS", "InsnLayout", "illegal"]


def _layout(cls: type[isa.Insn]) -> data.StructLayout:
    fields: dict[str, object] = {"opcode": unsigned(isa.OPCODE_BITS)}
    for name in isa.TOKEN_FLAGS:
        fields[name] = unsigned(1)
    used = isa.HEADER_BITS
    for f in cls.FIELDS:
        fields[f.name] = signed(f.width) if f.signed else unsigned(f.width)
        used += f.width
    if used < isa.INSN_BITS:
        fields["unused"] = unsigned(isa.INSN_BITS - used)
    return data.StructLayout(fields)


LAYOUTS: dict[type[isa.Insn], data.StructLayout] = {cls: _layout(cls) for cls in isa.INSTRUCTIONS}


# One instruction word seen as any instruction (they share the header: opcode, token flags).
InsnLayout = data.UnionLayout({cls.MNEMONIC: LAYOUTS[cls] for cls in isa.INSTRUCTIONS})


def layout(cls: type[isa.Insn]) -> data.StructLayout:
    return LAYOUTS[cls]


def view(cls: type[isa.Insn], word: Value) -> data.View:
    """The fields of `cls` over a 256-bit instruction word."""
    return data.View(LAYOUTS[cls], word)


def illegal(cls: type[isa.Insn], word: Value) -> Value:
    """1 when the word, decoded as `cls`, breaks a rule of `Insn.illegal_reason` (ILLEGAL_FIELD)."""
    v = view(cls, word)
    bad = Const(0, 1)
    if "unused" in LAYOUTS[cls].members:
        bad = bad | (v.unused != 0)
    if cls.QUEUE == isa.Queue.LOAD:
        bad = bad | v.pop_prev | v.push_prev
    if cls.QUEUE == isa.Queue.STORE:
        bad = bad | v.pop_next | v.push_next
    for f in cls.FIELDS:
        value = getattr(v, f.name)
        if f.enum is not None:
            bad = bad | (value > max(int(m) for m in f.enum))
        if f.min is not None:
            bad = bad | (value < f.min)
    if cls is isa.Load:
        pads = v.pad_top | v.pad_bottom | v.pad_left | v.pad_right | v.pad_value.as_unsigned()
        bad = bad | ((v.buffer != isa.Buffer.INP) & (pads != 0))
    if cls is isa.Conv:
        bad = bad | ((v.mode != isa.ConvMode.MAC) & (v.out_blocks != 1))
    if issubclass(cls, isa._VectorInsn):
        bad = bad | (v.act_min > v.act_max)
    return bad
