"""README examples are executed, so they never rot."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "bash scripts/run.sh" in text and "bash scripts/test.sh" in text


def test_readme_python_examples_run():
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


def test_demo_runs_and_shows_restarts(capsys):
    from actors._demo import run_demo

    assert run_demo(rounds=2) == 0
    out = capsys.readouterr().out
    assert "restarts=2" in out and "demo done" in out
