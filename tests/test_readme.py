"""README.md matches the CLI: every `softnpu` command in its code blocks exists, and every flag it
shows is accepted by that command's parser (checked through `--help`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[tuple[str, list[str]]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    out, current = [], None
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0]
            match = re.match(r"\s*softnpu (\w+)( \w+(?:\|\w+)+)?", line)
            if match:           # `softnpu models register|list|remove`: the flags go with each action
                actions = match.group(2).split("|")[0].strip() if match.group(2) else ""
                current = (f"{match.group(1)} {actions}".strip(), [])
                out.append(current)
            elif current is None or not line.startswith(" "):
                current = None
                continue
            current[1].extend(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line))
    return out


COMMANDS = _commands()


def test_the_readme_shows_commands():
    assert {name for name, _ in COMMANDS} >= {"compile", "run", "profile", "verify", "serve", "score",
                                              "models register"}


@pytest.mark.parametrize("command,flags", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_readme_command_and_flags_exist(command, flags):
    run = subprocess.run([sys.executable, "-m", "softnpu", *command.split(), "--help"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", run.stdout), \
            f"softnpu {command}: {flag} not in --help"
