"""Copied helpers stay identical to their source (house style §4.1.3, like HF's check_copies).

A line ``# Copied from iceseg.<module path>.<Name>`` directly above a top-level class or function marks
a copy; its source text must equal the original's.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^# Copied from iceseg\.([\w.]+)\.(\w+)\s*$")


def _top_level_source(path: Path, name: str) -> str:
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return ast.get_source_segment(text, node)
    raise AssertionError(f"{path.name} has no top-level {name}")


def _copies():
    for path in sorted(ROOT.glob("iceseg/**/*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = MARK.match(line)
            if m:
                name = re.match(r"(?:class|def)\s+(\w+)", lines[i + 1])
                assert name, f"{path.name}:{i + 1}: the marker must sit right above a class or def"
                yield path, name.group(1), m.group(1), m.group(2)


COPIES = list(_copies())


def test_there_are_copies_to_check():
    assert COPIES, "no '# Copied from' markers found: this test would check nothing"


@pytest.mark.parametrize("path,name,module,source_name", COPIES, ids=[f"{p.stem}.{n}" for p, n, _, _ in COPIES])
def test_copy_matches_source(path, name, module, source_name):
    original = _top_level_source(ROOT / "iceseg" / f"{module.replace('.', '/')}.py", source_name)
    copy = _top_level_source(path, name)
    assert copy == original.replace(source_name, name), f"{path.name}:{name} drifted from iceseg.{module}.{source_name}"
