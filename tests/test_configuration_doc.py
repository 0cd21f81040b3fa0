"""docs/CONFIGURATION.md lists every flag of the daemons, and no flag they
do not have."""

import os
import re

from blockmirror.cli import build_parser

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "CONFIGURATION.md")


def _flags(command: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(a.option_strings[-1] for a in sub.choices[command]._actions
                  if a.option_strings and a.dest != "help")


def _documented(text: str, command: str) -> list[str]:
    start = text.index(f"## `blockmirror {command} DIR`")
    end = text.find("\n## ", start + 3)
    return sorted(re.findall(r"^\| `(--[\w-]+)`", text[start:end], flags=re.M))


def test_every_daemon_flag_is_documented():
    text = open(DOC).read()
    for command in ("primary", "secondary"):
        assert _documented(text, command) == _flags(command), command
