"""Assembler and disassembler: text <-> `hdl.isa` instructions.

One instruction per line: the mnemonic, `field=value` pairs, then the token flags that are set::

    load buffer=inp sram=0 dram=0x1000 blocks=2 rows=8 cols=8 row_stride=64 block_stride=512 push_next
    conv mode=mac out_blocks=1 in_blocks=2 kh=3 kw=3 stride_h=1 stride_w=1 out_h=6 out_w=6 ... pop_prev

Fields left out are 0.  Enum fields take their names (`buffer=wgt`, `mode=max`); numbers may be
decimal or 0x-hex.  `#` starts a comment.
"""

from __future__ import annotations

from softnpu.hdl.isa import BY_MNEMONIC, INSN_BYTES, TOKEN_FLAGS, Insn, decode

__all__ = ["AsmError", "format_insn", "parse_insn", "assemble", "disassemble"]


class AsmError(ValueError):
    """A line the assembler cannot read; says which line and why."""


def format_insn(insn: Insn) -> str:
    parts = [insn.MNEMONIC]
    for f in insn.FIELDS:
        value = getattr(insn, f.name)
        if f.enum is not None and value in {int(m) for m in f.enum}:
            parts.append(f"{f.name}={f.enum(value).name.lower()}")
        elif f.name == "dram":
            parts.append(f"{f.name}={value:#x}")
        else:
            parts.append(f"{f.name}={value}")
    parts.extend(name for name in TOKEN_FLAGS if getattr(insn, name))
    return " ".join(parts)


def parse_insn(line: str) -> Insn:
    words = line.split("#", 1)[0].split()
    if not words:
        raise AsmError("empty line")
    cls = BY_MNEMONIC.get(words[0].lower())
    if cls is None:
        raise AsmError(f"unknown mnemonic {words[0]!r}; known: {sorted(BY_MNEMONIC)}")
    fields = {f.name: f for f in cls.FIELDS}
    values, flags = {}, {}
    for word in words[1:]:
        if "=" not in word:
            if word not in TOKEN_FLAGS:
                raise AsmError(f"{cls.MNEMONIC}: {word!r} is neither field=value nor a token "
                               f"flag {TOKEN_FLAGS}")
            flags[word] = True
            continue
        name, text = word.split("=", 1)
        field = fields.get(name)
        if field is None:
            raise AsmError(f"{cls.MNEMONIC}: unknown field {name!r}; fields are {list(fields)}")
        if name in values:
            raise AsmError(f"{cls.MNEMONIC}: field {name!r} given twice")
        if field.enum is not None and not text.lstrip("-").isdigit():
            try:
                values[name] = field.enum[text.upper()]
            except KeyError:
                raise AsmError(f"{cls.MNEMONIC}.{name}: {text!r} is not one of "
                               f"{[m.name.lower() for m in field.enum]}") from None
            continue
        try:
            values[name] = int(text, 0)
        except ValueError:
            raise AsmError(f"{cls.MNEMONIC}.{name}: {text!r} is not a number") from None
    try:
        return cls(**values, **flags)
    except (TypeError, ValueError) as exc:
        raise AsmError(str(exc)) from None


def assemble(text: str) -> list[Insn]:
    """Parse a program; errors name the line number and the line."""
    program = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.split("#", 1)[0].strip():
            continue
        try:
            program.append(parse_insn(line))
        except AsmError as exc:
            raise AsmError(f"line {number}: {exc}\n    {line.strip()}") from None
    return program


def disassemble(data: bytes, *, addresses: bool = True) -> str:
    """Text of an encoded program, one line per instruction, prefixed by its index."""
    lines = []
    for index in range(0, len(data) // INSN_BYTES):
        chunk = data[index * INSN_BYTES:(index + 1) * INSN_BYTES]
        try:
            text = format_insn(decode(chunk))
        except ValueError as exc:
            text = f".word {int.from_bytes(chunk, 'little'):#066x}  # {exc}"
        lines.append(f"{index:6d}  {text}" if addresses else text)
    return "\n".join(lines) + ("\n" if lines else "")
