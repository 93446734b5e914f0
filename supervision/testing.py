"""A pytest plugin for code built on `supervision`.

Opt in from a conftest.py::

    pytest_plugins = ["supervision.testing"]

    def test_restart(manual_clock, actor_cleanup, log_records):
        root = Supervisor.start([ChildSpec("w", Worker)], clock=manual_clock)
        kill(root.proxy().whereis("w").get())
        wait_until(lambda: root.proxy().which_children().get()[0].restarts == 1)
        assert any(r["level"].name == "WARNING" for r in log_records)

Fixtures: `manual_clock` (a fresh `ManualClock`), `actor_cleanup` (stops every actor the
test started, top-level supervisors first, then the rest newest first; fails the test if
one will not stop), `log_records` (loguru records of the test, as dicts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from loguru import logger

from supervision._actor import SupervisedActor, abandoned_actors
from supervision._clock import ManualClock

__all__ = ["actor_cleanup", "log_records", "manual_clock", "wait_until"]

STOP_TIMEOUT = 10.0


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something truthy (returned); `TimeoutError` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh `ManualClock` at 0.0."""
    return ManualClock()


def _is_top_level_supervisor(ref: pykka.ActorRef[Any]) -> bool:
    actor = ref._actor_weakref()
    return bool(getattr(ref.actor_class, "is_supervisor", False)) and (
        not isinstance(actor, SupervisedActor) or actor._supervision_.child_id is None
    )


@pytest.fixture
def actor_cleanup() -> Iterator[None]:
    """Stop every actor started during the test; fail the test if one cannot be stopped."""
    before = {ref.actor_urn for ref in pykka.ActorRegistry.get_all()}
    abandoned_before = {id(actor) for actor in abandoned_actors()}
    yield
    started = [ref for ref in pykka.ActorRegistry.get_all() if ref.actor_urn not in before]
    supervisors = [ref for ref in started if _is_top_level_supervisor(ref)]
    rest = [ref for ref in reversed(started) if ref not in supervisors]
    stuck: list[str] = []
    for ref in [*reversed(supervisors), *rest]:
        if not ref.is_alive():
            continue
        try:
            ref.stop(timeout=STOP_TIMEOUT)
        except pykka.Timeout:
            stuck.append(str(ref))
            continue
        actor = ref._actor_weakref()
        if isinstance(actor, SupervisedActor) and not actor._supervision_.terminated.wait(STOP_TIMEOUT):
            stuck.append(str(ref))
    for actor in abandoned_actors():
        if id(actor) not in abandoned_before:
            logger.warning("incarnation abandoned by its supervisor still runs: {}", actor)
    if stuck:
        pytest.fail(f"actors that would not stop within {STOP_TIMEOUT}s: {', '.join(stuck)}")


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Loguru records emitted during the test (pytest's caplog does not see loguru)."""
    records: list[dict[str, Any]] = []
    def sink(message: Any) -> None:
        records.append(dict(message.record))

    handler_id = logger.add(sink, level="DEBUG", enqueue=False)
    yield records
    logger.remove(handler_id)
