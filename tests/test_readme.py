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
    from actors.demo._demo import run_demo

    assert run_demo(rounds=2) == 0
    out = capsys.readouterr().out
    assert "restarts=2" in out and "demo done" in out


def test_every_test_the_guarantees_name_exists():
    text = README.read_text()
    section = text[text.index("## Guarantees") : text.index("## Layout")]
    tests_dir = README.parent / "tests"
    named = 0
    for row in section.splitlines():
        current = None
        for file_name, test_name in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)", row):
            current = file_name or current
            assert current, f"a test named without its file: {test_name}"
            assert f"def {test_name}(" in (tests_dir / current).read_text(), f"{current}::{test_name} is gone"
            named += 1
        for file_name in re.findall(r"`(test_\w+\.py)` \(whole file\)", row):
            assert (tests_dir / file_name).exists()
    assert named >= 20
