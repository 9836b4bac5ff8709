"""hdl/isa.py: encodings round-trip, text round-trips, legality rules, docs/isa.md is current."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softnpu.hdl import isa, isa_doc
from softnpu.hdl.asm import AsmError, assemble, disassemble, format_insn, parse_insn


def _instructions(cls):
    fields = {f.name: st.sampled_from(list(f.enum)) if f.enum else st.integers(f.lo, f.hi)
              for f in cls.FIELDS}
    flags = {name: st.booleans() for name in isa.TOKEN_FLAGS}
    return st.builds(lambda **kw: cls(**kw), **fields, **flags)


ANY_INSN = st.one_of(*(_instructions(cls) for cls in isa.INSTRUCTIONS))


@given(ANY_INSN)
def test_encode_decode_round_trip(insn):
    word = insn.encode()
    assert len(word) == isa.INSN_BYTES
    back = isa.decode(word)
    assert type(back) is type(insn)
    assert back == insn
    assert back.encode() == word


@given(ANY_INSN)
def test_assembly_text_round_trip(insn):
    assert parse_insn(format_insn(insn)) == insn


@given(st.lists(ANY_INSN, max_size=8))
def test_program_round_trip(program):
    data = isa.encode_program(program)
    assert isa.decode_program(data) == program
    text = disassemble(data, addresses=False)
    assert assemble(text) == program


def test_every_instruction_fits_its_word():
    for cls in isa.INSTRUCTIONS:
        assert isa.HEADER_BITS + sum(f.width for f in cls.FIELDS) <= isa.INSN_BITS


def test_field_placement_is_lsb_first_after_header():
    insn = isa.Marker(id=0xABCD, push_next=True)
    word = int.from_bytes(insn.encode(), "little")
    assert word & 0xF == isa.Marker.OPCODE
    assert (word >> 7) & 1 == 1                  # push_next is header bit 7
    assert (word >> 8) & 0xFFFF == 0xABCD


def test_signed_fields_sign_extend():
    insn = isa.Requant(blocks=1, count=1, zero_point=-5, act_min=-128, act_max=-1)
    back = isa.decode(insn.encode())
    assert (back.zero_point, back.act_min, back.act_max) == (-5, -128, -1)


def test_opcode_zero_and_unknown_opcodes_are_illegal():
    with pytest.raises(isa.IllegalInstruction) as info:
        isa.decode(bytes(isa.INSN_BYTES))
    assert info.value.code == isa.ErrorCode.ILLEGAL_OPCODE
    with pytest.raises(isa.IllegalInstruction):
        isa.decode(15)


def test_nonzero_unused_bits_are_illegal():
    word = isa.Finish().encode_int() | (1 << 200)
    with pytest.raises(isa.IllegalInstruction) as info:
        isa.decode(word)
    assert info.value.code == isa.ErrorCode.ILLEGAL_FIELD


def test_field_values_outside_width_are_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        isa.Load(blocks=1 << 16)
    with pytest.raises(ValueError, match="pad_value"):
        isa.Load(pad_value=128)


@pytest.mark.parametrize("insn, reason", [
    (isa.Load(buffer=isa.Buffer.INP, blocks=1, rows=1, cols=1, pop_prev=True), "no previous unit"),
    (isa.Store(blocks=1, rows=1, cols=1, push_next=True), "no next unit"),
    (isa.Load(buffer=isa.Buffer.WGT, blocks=1, rows=1, cols=1, pad_left=1), "only legal into the input"),
    (isa.Conv(mode=isa.ConvMode.MAX, out_blocks=2, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
              out_h=1, out_w=1), "out_blocks=1"),
    (isa.Conv(mode=isa.ConvMode.MAC, out_blocks=1, in_blocks=1, kh=0, kw=1, stride_h=1, stride_w=1,
              out_h=1, out_w=1), "kh=0"),
    (isa.Requant(blocks=1, count=1, act_min=5, act_max=4), "act_min"),
])
def test_illegal_field_combinations_are_named(insn, reason):
    assert reason in insn.illegal_reason()


def test_decoded_bad_enum_is_illegal_not_a_crash():
    word = isa.Conv(out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1, out_h=1,
                    out_w=1).encode_int() | (3 << isa.HEADER_BITS)   # mode=3 is undefined
    insn = isa.decode(word)
    assert "ConvMode" in insn.illegal_reason()


def test_assembler_errors_name_the_line():
    with pytest.raises(AsmError, match="line 2.*unknown mnemonic"):
        assemble("finish\nfrobnicate x=1\n")
    with pytest.raises(AsmError, match="unknown field"):
        assemble("load bogus=3")
    with pytest.raises(AsmError, match="not one of"):
        assemble("load buffer=acc")


def test_assembler_accepts_comments_hex_and_enum_names():
    program = assemble("# a comment\nload buffer=wgt dram=0x40 blocks=1 rows=1 cols=2  # tail\n")
    assert program == [isa.Load(buffer=isa.Buffer.WGT, dram=0x40, blocks=1, rows=1, cols=2)]


def test_isa_doc_is_current():
    """docs/isa.md is generated from hdl/isa.py: run `nox -s docs` after changing the ISA."""
    assert isa_doc.DOC_PATH.read_text() == isa_doc.render(), "docs/isa.md is stale: run `nox -s docs`"
