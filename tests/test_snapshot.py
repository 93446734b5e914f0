"""SnapshotStore: round trips, quarantine of unusable files, stale temporaries, file
security, and a writer SIGKILLed at random moments never leaving a torn snapshot."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from loguru import logger

from supervision import _snapshot
from supervision._snapshot import SnapshotError, SnapshotStore

WRITER = Path(__file__).resolve().parent / "_snapshot_writer.py"


@pytest.fixture
def log_records() -> Iterator[list[Any]]:
    records: list[Any] = []
    handler_id = logger.add(lambda message: records.append(message.record), level="DEBUG", format="{message}")
    yield records
    logger.remove(handler_id)


def envelope(data: Any, *, version: Any = 1, **extra: Any) -> bytes:
    content: bytes = msgpack.packb({"format": "supervision.snapshot", "version": version, "data": data, **extra}, use_bin_type=True)
    return content


def quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.tmp-*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- round trips ----------------------------------------------------------------------------


def test_round_trip_of_nested_data(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state", version=3)
    data = {
        "names": ["Furiosa", "Nux", "Ünïcode ✓"],
        "owners": {1234: "Furiosa", 5678: None},
        "nested": {"deep": [{"a": 1.5, "b": True, "c": b"\x00\xff"}, [], {}]},
        "big": 2**63,
        "negative": -(2**63),
    }
    store.save(data)
    assert store.load() == data
    assert SnapshotStore(tmp_path / "state", version=3).load() == data


def test_save_replaces_the_previous_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state", version=1)
    store.save({"n": 1})
    store.save({"n": 2})
    assert store.load() == {"n": 2}
    assert temporaries(store.path) == []


@pytest.mark.parametrize("data", [None, 0, "text", [1, 2], b"bytes"])
def test_any_packable_value_round_trips(tmp_path: Path, data: Any) -> None:
    store = SnapshotStore(tmp_path / "state", version=1)
    store.save(data)
    assert store.load() == data


def test_file_holds_the_documented_map(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state", version=4)
    store.save({"a": 1})
    on_disk = msgpack.unpackb((tmp_path / "state").read_bytes(), raw=False)
    assert on_disk == {"format": "supervision.snapshot", "version": 4, "data": {"a": 1}}


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(envelope({"a": 1}, written_by="a newer release", checksum=123))
    assert SnapshotStore(path, version=1).load() == {"a": 1}


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert SnapshotStore(tmp_path / "state", version=1).load() is None


def test_missing_directory_loads_as_none_and_is_not_created(tmp_path: Path) -> None:
    assert SnapshotStore(tmp_path / "no" / "such" / "state", version=1).load() is None
    assert not (tmp_path / "no").exists()


def test_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = SnapshotStore("state", version=2)
    assert store.path == tmp_path / "state"
    assert store.version == 2
    assert "state" in repr(store)


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_version_must_be_an_int(tmp_path: Path, version: Any) -> None:
    with pytest.raises(TypeError, match="version"):
        SnapshotStore(tmp_path / "state", version=version)


# -- unusable files are moved aside ---------------------------------------------------------

CORRUPT_CONTENTS = {
    "other version": envelope({"a": 1}, version=2),
    "version as bool": envelope({"a": 1}, version=True),
    "wrong format": msgpack.packb({"format": "something.else", "version": 1, "data": {}}),
    "no format": msgpack.packb({"version": 1, "data": {}}),
    "no data": msgpack.packb({"format": "supervision.snapshot", "version": 1}),
    "garbage": b"\xc1\xff\x00garbage\x13\x37",
    "truncated": envelope({"names": ["x" * 100] * 10})[:-17],
    "trailing bytes": envelope({"a": 1}) + b"\x00",
    "empty": b"",
    "not a map": msgpack.packb([1, 2, 3]),
    "list as map key": b"\x81\x91\x01\x02",
}


@pytest.mark.parametrize("content", CORRUPT_CONTENTS.values(), ids=CORRUPT_CONTENTS.keys())
def test_unusable_file_is_quarantined_and_loads_as_none(
    tmp_path: Path, log_records: list[Any], content: bytes
) -> None:
    path = tmp_path / "state"
    path.write_bytes(content)
    store = SnapshotStore(path, version=1)

    assert store.load() is None

    assert not path.exists()
    [moved] = quarantined(path)
    assert moved.read_bytes() == content
    [error] = [r for r in log_records if r["level"].name == "ERROR"]
    assert str(path) in error["message"] and str(moved) in error["message"]
    assert error["extra"]["snapshot"] == str(path)
    # The actor carries on: the next save and load work.
    store.save({"fresh": True})
    assert store.load() == {"fresh": True}


def test_quarantine_name_is_the_utc_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"garbage")
    before = datetime.now(timezone.utc)
    SnapshotStore(path, version=1).load()
    after = datetime.now(timezone.utc)

    [moved] = quarantined(path)
    match = re.fullmatch(r"state\.corrupt-(\d{8}T\d{6}\.\d{6}Z)", moved.name)
    assert match, moved.name
    stamp = datetime.strptime(match[1], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - timedelta(microseconds=1) <= stamp <= after


def test_taken_quarantine_names_get_a_counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_snapshot, "_utc_timestamp", lambda: "20240101T000000.000000Z")
    path = tmp_path / "state"
    store = SnapshotStore(path, version=1)
    for content in (b"first", b"second", b"third"):
        path.write_bytes(content)
        assert store.load() is None

    base = tmp_path / "state.corrupt-20240101T000000.000000Z"
    assert quarantined(path) == [base, Path(f"{base}-1"), Path(f"{base}-2")]
    assert [p.read_bytes() for p in (base, Path(f"{base}-1"), Path(f"{base}-2"))] == [b"first", b"second", b"third"]


# -- stale temporaries ----------------------------------------------------------------------


def plant_stale_temporary(path: Path, suffix: str = "4242-deadbeef") -> Path:
    stale = path.parent / f"{path.name}.tmp-{suffix}"
    stale.write_bytes(b"half a snapsh")
    return stale


def test_stale_temporaries_are_removed_on_load(tmp_path: Path, log_records: list[Any]) -> None:
    path = tmp_path / "state"
    stale = [plant_stale_temporary(path, "1-a"), plant_stale_temporary(path, "2-b")]
    assert SnapshotStore(path, version=1).load() is None
    assert not any(p.exists() for p in stale)
    assert any(str(stale[0]) in r["message"] for r in log_records)


def test_stale_temporaries_are_removed_on_save(tmp_path: Path) -> None:
    path = tmp_path / "state"
    store = SnapshotStore(path, version=1)
    store.save({"n": 1})
    stale = plant_stale_temporary(path)
    store.save({"n": 2})
    assert not stale.exists()
    assert temporaries(path) == []
    assert store.load() == {"n": 2}


def test_cleanup_spares_a_live_writer_and_other_files(tmp_path: Path) -> None:
    path = tmp_path / "state"
    live = plant_stale_temporary(path, "live")
    others = [tmp_path / "other.tmp-1", tmp_path / "state.tmpx", tmp_path / "state.corrupt-x", tmp_path / "xstate.tmp-1"]
    for other in others:
        other.write_bytes(b"not ours")
    # A writer in progress holds a lock on its temporary file (as another store would).
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        store = SnapshotStore(path, version=1)
        store.load()
        store.save({"n": 1})
        assert live.exists()
    store.load()
    assert not live.exists()
    assert all(other.exists() for other in others)


def test_save_survives_a_cleanup_racing_its_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another store's cleanup may remove our temporary between its creation and its lock."""
    path = tmp_path / "state"
    real_flock = fcntl.flock
    raced: list[str] = []

    def flock_after_a_racing_cleanup(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not raced:
            [temporary] = temporaries(path)
            temporary.unlink()
            raced.append(temporary.name)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_racing_cleanup)
    store = SnapshotStore(path, version=1)
    store.save({"n": 1})
    assert raced
    assert store.load() == {"n": 1}
    assert temporaries(path) == []


# -- failures leave the old snapshot intact -------------------------------------------------


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"x": object()}, "cannot pack"),
        ({"x": 2**64}, "cannot pack"),
        ({(1, 2): "tuple key"}, "would not load back"),
    ],
    ids=["object", "huge int", "tuple key"],
)
def test_unpackable_data_raises_type_error_and_keeps_the_old_snapshot(tmp_path: Path, bad: Any, reason: str) -> None:
    path = tmp_path / "state"
    store = SnapshotStore(path, version=1)
    store.save({"good": 1})
    before = path.read_bytes()

    with pytest.raises(TypeError, match=reason) as raised:
        store.save(bad)

    assert str(path) in str(raised.value)
    assert path.read_bytes() == before
    assert store.load() == {"good": 1}
    assert temporaries(path) == []


def test_a_failed_write_keeps_the_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state"
    store = SnapshotStore(path, version=1)
    store.save({"good": 1})

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.save({"new": 2})
    monkeypatch.undo()

    assert store.load() == {"good": 1}
    assert temporaries(path) == []


def test_two_stores_on_one_path_interleave_safely(tmp_path: Path) -> None:
    path = tmp_path / "state"
    first, second = SnapshotStore(path, version=1), SnapshotStore(path, version=1)
    for n in range(20):
        (first if n % 2 else second).save({"n": n})
    assert first.load() == second.load() == {"n": 19}
    assert temporaries(path) == []


# -- file security --------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o277], ids=["usual umask", "umask without owner write"])
def test_created_files_are_owner_only(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "a" / "b" / "state"
    previous = os.umask(umask)
    try:
        SnapshotStore(path, version=1).save({"n": 1})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700
    assert mode(path) == 0o600


def test_existing_directory_is_left_alone_and_a_loose_file_is_replaced_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    path = directory / "state"
    path.write_bytes(envelope({"n": 1}))
    os.chmod(path, 0o644)

    SnapshotStore(path, version=1).save({"n": 2})

    assert mode(directory) == 0o755
    assert mode(path) == 0o600


def test_symlink_at_path_is_refused_and_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(envelope({"secret": 1}))
    path = tmp_path / "state"
    path.symlink_to(target)
    store = SnapshotStore(path, version=1)

    with pytest.raises(SnapshotError, match="symlink") as saving:
        store.save({"n": 1})
    with pytest.raises(SnapshotError, match="symlink") as loading:
        store.load()

    assert isinstance(saving.value, OSError) and saving.value.filename == str(path)
    assert isinstance(loading.value, OSError)
    assert path.is_symlink() and os.readlink(path) == str(target)
    assert target.read_bytes() == envelope({"secret": 1})
    assert quarantined(path) == [] and temporaries(path) == []


def test_dangling_symlink_at_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "would-be-created"
    path = tmp_path / "state"
    path.symlink_to(target)
    with pytest.raises(SnapshotError):
        SnapshotStore(path, version=1).save({"n": 1})
    with pytest.raises(SnapshotError):
        SnapshotStore(path, version=1).load()
    assert not target.exists()


def test_directory_at_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()
    with pytest.raises(SnapshotError, match="regular file"):
        SnapshotStore(path, version=1).load()
    with pytest.raises(SnapshotError, match="regular file"):
        SnapshotStore(path, version=1).save({"n": 1})
    assert path.is_dir()


# -- a writer killed at random moments ------------------------------------------------------


def check_snapshot(data: Any) -> int:
    """The snapshot's sequence number, after checking it is whole."""
    assert isinstance(data, dict), f"expected a snapshot, loaded {data!r:.200}"
    assert hashlib.sha256(data["payload"]).hexdigest() == data["check"], f"torn snapshot {data['seq']}"
    return int(data["seq"])


@pytest.mark.slow
def test_writer_killed_at_random_moments_never_leaves_a_torn_snapshot(tmp_path: Path, log_records: list[Any]) -> None:
    kills = 120
    path = tmp_path / "state"
    store = SnapshotStore(path, version=7)  # the writer's version
    rng = random.Random(20240131)
    sequence = 0
    started = time.monotonic()

    for kill in range(kills):
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(rng.randrange(2**32))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Wait until this writer has saved twice, so the kill can land anywhere in a
            # save that replaces an existing snapshot. Reading meanwhile also runs the
            # stale-temporary cleanup against a live writer.
            deadline = time.monotonic() + 10.0
            while True:
                data = store.load()
                if data is not None and check_snapshot(data) >= sequence + 2:
                    break
                assert writer.poll() is None, writer.stderr.read().decode() if writer.stderr else ""
                assert time.monotonic() < deadline, f"kill {kill}: writer made no progress"
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.01))  # real time only picks the moment of the kill
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            if writer.stderr:
                writer.stderr.close()

        loaded = check_snapshot(store.load())
        assert loaded >= sequence + 2, f"kill {kill}: sequence went back from {sequence + 2} to {loaded}"
        sequence = loaded

    # Some kills must have landed mid-save (typically about half do), or this proved nothing.
    assert any("stale temporary" in r["message"] for r in log_records)
    assert temporaries(path) == []  # the last load removed what the last kill left
    assert quarantined(path) == []
    assert [r for r in log_records if r["level"].no >= logger.level("ERROR").no] == []
    assert time.monotonic() - started < 60
