"""Logging (contract §3): the socket's records name the worker; the library adds no sink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import actors
from actors import start_tree

TIMEOUT = 10.0


@pytest.fixture
def served(tmp_path: Path, actor_cleanup: None) -> Iterator[Any]:
    tree = start_tree(tmp_path / "state", serve=True, reap_interval=3600, check_interval=3600, sweep_interval=3600)
    yield tree
    tree.stop()


def socket_records(records: list[dict[str, Any]], pid: int) -> list[dict[str, Any]]:
    return [record for record in records if "over the socket" in record["message"] and record["extra"].get("pid") == pid]


def test_socket_checkouts_checkins_and_locks_are_info_records_bound_to_the_name(
    served: Any, tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    worker = tmp_path / "w1"
    worker.mkdir()
    with actors.connect(served.state_dir, timeout=TIMEOUT) as client:
        name = client.call("names.checkout_name")
        client.call("locks.acquire", str(worker), session_id="s1")
        client.call("locks.release", str(worker))
        client.call("names.checkin_name", name)
        client.call("names.pool_stats")  # reads are not logged at INFO
    records = socket_records(log_records, os.getpid())
    assert [record["level"].name for record in records] == ["INFO"] * 4
    assert [record["extra"]["agent_name"] for record in records] == [name] * 4
    messages = [record["message"] for record in records]
    assert "checked out" in messages[0] and "acquired" in messages[1] and str(worker) in messages[1]
    assert "released" in messages[2] and "checked in" in messages[3]
    assert all(str(os.getpid()) in message for message in messages)


def test_a_worker_process_checkout_over_the_socket_names_it(served: Any, log_records: list[dict[str, Any]]) -> None:
    program = (
        "import sys, actors\n"
        "with actors.connect(sys.argv[1], timeout=10) as client:\n"
        "    print(client.call('names.checkout_name'))\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(served.state_dir)], capture_output=True, text=True,
                            timeout=60, check=True)
    name = result.stdout.strip()
    (record,) = [record for record in log_records if "checked out" in record["message"] and record["extra"].get("agent_name") == name]
    assert record["level"].name == "INFO" and str(record["extra"]["pid"]) in record["message"]


def test_the_library_adds_no_sink(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from loguru import logger\n"
        "logger.remove()\n"
        "import actors\n"
        "with actors.start_tree(sys.argv[1], serve=True) as tree:\n"
        "    with actors.connect(sys.argv[1]) as client:\n"
        "        client.call('names.checkout_name')\n"
        "    assert not logger._core.handlers, logger._core.handlers\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "state")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n" and result.stderr == ""  # no sink: nothing written anywhere


def test_serve_logs_on_stderr_at_the_log_level_without_variable_values(tmp_path: Path) -> None:
    """`serve --log-level` sets its one sink; a record about a worker shows its name."""
    program = (
        "import sys\n"
        "from loguru import logger\n"
        "from actors.__main__ import _configure_logging\n"
        "_configure_logging(sys.argv[1])\n"
        "(handler,) = logger._core.handlers.values()\n"
        "assert handler._exception_formatter._diagnose is False\n"
        "logger.bind(agent_name='furiosa').warning('spent')\n"
        "logger.info('not shown')\n"
        "def fail():\n"
        "    secret = 'hunter2'\n"
        "    return len(secret) / 0\n"
        "try:\n"
        "    fail()\n"
        "except ZeroDivisionError:\n"
        "    logger.exception('failed')\n"
    )
    script = tmp_path / "app.py"  # from a file: with diagnose on, loguru would show `secret`
    script.write_text(program)
    result = subprocess.run([sys.executable, str(script), "WARNING"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "[furiosa] spent" in result.stderr and "not shown" not in result.stderr
    assert "ZeroDivisionError" in result.stderr and "hunter2" not in result.stderr
    assert result.stdout == ""


def test_serve_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "actors", "serve", "--state-dir", str(tmp_path), "--log-level", "LOUD"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("actors: ") and "LOUD" in result.stderr
