"""Reading what `_worker_child.py` processes recorded (shared by the worker test files).

    argv = child_argv(record_file, "w1", "--exit", "3")
    starts = records(record_file, "start", label="w1")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CHILD = str(Path(__file__).with_name("_worker_child.py"))


def child_argv(record: Path, label: str, *options: str) -> list[str]:
    return [sys.executable, CHILD, str(record), label, *options]


def records(path: Path, event: str | None = None, label: str | None = None) -> list[dict[str, Any]]:
    """The complete lines recorded so far, of `event` and `label` when given."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [json.loads(line) for line in text.split("\n")[:-1]]  # complete lines only
    return [
        line
        for line in lines
        if (event is None or line["event"] == event) and (label is None or line["label"] == label)
    ]
