"""The pytest plugin: `wait_until`, `manual_clock`, `log_records` and `actor_cleanup`.

`actor_cleanup` acts after a test ends, so it is exercised on inner test files run
in-process with `pytester`; the outer test then checks the actor registry and logs.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pykka
import pytest

from supervision import ChildSpec, ManualClock, SupervisedActor, Supervisor, kill
from supervision.testing import wait_until

pytest_plugins = ["pytester"]


class Worker(SupervisedActor):
    def ping(self) -> str:
        return "pong"


def restarts_of(supervisor: pykka.ActorRef[Any], child_id: str) -> int:
    (info,) = [info for info in supervisor.proxy().which_children().get(timeout=5) if info.id == child_id]
    return info.restarts


def restart_worker_7(manual_clock: ManualClock) -> None:
    """A supervised "worker-7" is killed and restarted once."""
    root = Supervisor.start([ChildSpec("worker-7", Worker)], clock=manual_clock)
    kill(root.proxy().whereis("worker-7").get(timeout=5))
    wait_until(lambda: restarts_of(root, "worker-7") == 1)


def run_inner_tests(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    """`source` run as a test file, in-process, with the plugin on: the outcome."""
    pytester.makeconftest('pytest_plugins = ["supervision.testing"]')
    pytester.makepyfile(source)
    return pytester.runpytest("-p", "no:cacheprovider")


# For inner test files: an actor whose `on_stop` blocks until `gate` is set, which its
# fixture does at teardown (after actor_cleanup has given up on it), so the thread ends.
STUBBORN = textwrap.dedent(
    """
    import threading
    import pytest
    from supervision import SupervisedActor

    @pytest.fixture
    def gate():
        event = threading.Event()
        yield event
        event.set()

    class Stubborn(SupervisedActor):
        def __init__(self, gate):
            super().__init__()
            self.gate = gate

        def on_stop(self):
            self.gate.wait(30)
    """
)


# -- wait_until -------------------------------------------------------------------------------


def test_wait_until_returns_the_truthy_value() -> None:
    assert wait_until(lambda: {"ready": True}) == {"ready": True}


def test_wait_until_polls_until_the_predicate_holds() -> None:
    calls: list[int] = []

    def third_time_lucky() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert wait_until(third_time_lucky, timeout=5, interval=0.001) == 3
    assert len(calls) == 3


def test_wait_until_raises_timeout_error() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_until(lambda: 0, timeout=0.05, interval=0.01)
    assert time.monotonic() - started >= 0.05


def test_wait_until_lets_a_predicate_error_through() -> None:
    def broken() -> bool:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        wait_until(broken, timeout=1)


# -- manual_clock ---------------------------------------------------------------------------


def test_manual_clock_fixture_is_a_manual_clock_at_zero(manual_clock: ManualClock) -> None:
    assert isinstance(manual_clock, ManualClock)
    assert manual_clock.monotonic() == 0.0
    assert manual_clock.pending_timers == 0


def test_manual_clock_fixture_is_fresh_in_every_test(pytester: pytest.Pytester) -> None:
    run_inner_tests(
        pytester,
        """
        import pytest
        from supervision import SupervisedActor, send_interval

        @pytest.mark.parametrize("run", [1, 2])
        def test_advance(manual_clock, actor_cleanup, run):
            assert manual_clock.monotonic() == 0.0
            assert manual_clock.pending_timers == 0
            send_interval(SupervisedActor.start(), "tick", 1.0, clock=manual_clock)
            manual_clock.advance(5.0)
        """,
    ).assert_outcomes(passed=2)


# -- log_records ------------------------------------------------------------------------------


def test_log_records_captures_loguru_records(log_records: list[dict[str, Any]]) -> None:
    from loguru import logger

    logger.bind(actor="probe").info("hello {}", "there")
    (record,) = [r for r in log_records if r["extra"].get("actor") == "probe"]
    assert record["message"] == "hello there"
    assert record["level"].name == "INFO"


def test_log_records_captures_debug(log_records: list[dict[str, Any]]) -> None:
    from loguru import logger

    logger.debug("quiet detail")
    assert any(r["message"] == "quiet detail" and r["level"].name == "DEBUG" for r in log_records)


def test_crash_is_logged_at_error_with_the_child_id_bound(
    manual_clock: ManualClock, log_records: list[dict[str, Any]]
) -> None:
    restart_worker_7(manual_clock)
    assert any(r["level"].name == "ERROR" and r["extra"].get("actor") == "worker-7" for r in log_records)


def test_handler_crash_is_logged_at_error_with_its_traceback(log_records: list[dict[str, Any]]) -> None:
    class Fragile(SupervisedActor):
        def explode(self) -> None:
            raise RuntimeError("kaboom")

    ref = Fragile.start()
    with pytest.raises(RuntimeError):
        ref.proxy().explode().get(timeout=5)

    def crash_logged() -> bool:
        return any(
            r["level"].name == "ERROR" and r["exception"] is not None and isinstance(r["exception"].value, RuntimeError)
            for r in list(log_records)
        )

    # The caller gets the error before the dying actor writes its log record.
    assert wait_until(crash_logged)


def test_a_restart_after_a_crash_is_logged_with_the_crash_naming_the_child_id(
    manual_clock: ManualClock, log_records: list[dict[str, Any]]
) -> None:
    restart_worker_7(manual_clock)
    errors = [r for r in log_records if r["level"].name == "ERROR" and "restarted" in r["message"]]
    assert any("worker-7" in r["message"] and r["extra"].get("actor") == "worker-7" for r in errors)


def test_a_restart_after_a_normal_exit_is_logged_at_warning_naming_the_child_id(
    manual_clock: ManualClock, log_records: list[dict[str, Any]]
) -> None:
    root = Supervisor.start([ChildSpec("worker-8", Worker)], clock=manual_clock)
    first = root.proxy().whereis("worker-8").get(timeout=5)
    first.stop()
    wait_until(lambda: any(r["level"].name == "WARNING" and "restarted" in r["message"] for r in log_records))
    warnings = [r for r in log_records if r["level"].name == "WARNING" and "restarted" in r["message"]]
    assert any("worker-8" in r["message"] and r["extra"].get("actor") == "worker-8" for r in warnings)


def test_log_records_stops_capturing_after_the_test(pytester: pytest.Pytester) -> None:
    run_inner_tests(
        pytester,
        """
        from loguru import logger

        kept = []

        def test_first(log_records):
            kept.append(log_records)
            logger.info("during")

        def test_second():
            logger.info("after")
            assert [r["message"] for r in kept[0]] == ["during"]
        """,
    ).assert_outcomes(passed=2)


# -- actor_cleanup ----------------------------------------------------------------------------


def test_actor_cleanup_stops_every_actor_a_test_leaves_running(pytester: pytest.Pytester) -> None:
    urns_file = pytester.path / "urns.json"
    result = run_inner_tests(
        pytester,
        textwrap.dedent(
            f"""
            import json
            import pykka
            from supervision import ChildSpec, SupervisedActor, Supervisor

            class Plain(pykka.ThreadingActor):
                pass

            class Worker(SupervisedActor):
                pass

            def test_leaves_actors_running(actor_cleanup):
                plain = Plain.start()
                root = Supervisor.start([ChildSpec("w", Worker)])
                child = root.proxy().whereis("w").get(timeout=5)
                lone = Worker.start()
                refs = [plain, root, child, lone]
                assert all(ref.is_alive() for ref in refs)
                with open({str(urns_file)!r}, "w") as out:
                    json.dump([ref.actor_urn for ref in refs], out)
            """
        ),
    )
    result.assert_outcomes(passed=1)
    urns = json.loads(urns_file.read_text())
    assert len(urns) == 4
    for urn in urns:
        assert pykka.ActorRegistry.get_by_urn(urn) is None


def test_actor_cleanup_stops_supervisors_first_then_the_rest_newest_first(pytester: pytest.Pytester) -> None:
    order_file = pytester.path / "order.txt"
    run_inner_tests(
        pytester,
        textwrap.dedent(
            f"""
            import pykka
            from supervision import ChildSpec, SupervisedActor, Supervisor

            class Noted(pykka.ThreadingActor):
                def __init__(self, name):
                    super().__init__()
                    self.name = name

                def on_stop(self):
                    with open({str(order_file)!r}, "a") as out:
                        out.write(self.name + "\\n")

            def test_leaves_actors_running(actor_cleanup):
                Noted.start("oldest")
                Supervisor.start([ChildSpec("child", Noted, args=("child",))])
                Noted.start("middle")
                Supervisor.start([ChildSpec("child2", Noted, args=("child2",))])
                Noted.start("newest")
            """
        ),
    ).assert_outcomes(passed=1)
    assert order_file.read_text().split() == ["child2", "child", "newest", "middle", "oldest"]


def test_actor_cleanup_fails_a_test_whose_actor_will_not_stop(pytester: pytest.Pytester) -> None:
    result = run_inner_tests(
        pytester,
        STUBBORN
        + textwrap.dedent(
            """
            import supervision.testing

            def test_stubborn(gate, monkeypatch, actor_cleanup):
                monkeypatch.setattr(supervision.testing, "STOP_TIMEOUT", 0.5)
                Stubborn.start(gate)
            """
        ),
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*would not stop*Stubborn*"])


def test_actor_cleanup_tolerates_an_incarnation_its_supervisor_abandoned(
    pytester: pytest.Pytester, log_records: list[dict[str, Any]]
) -> None:
    run_inner_tests(
        pytester,
        STUBBORN
        + textwrap.dedent(
            """
            from supervision import ChildSpec, Supervisor

            def test_abandoned_child(gate, actor_cleanup):
                Supervisor.start([ChildSpec("stubborn", Stubborn, args=(gate,), shutdown=0.1)])
            """
        ),
    ).assert_outcomes(passed=1)
    warnings = [r["message"] for r in log_records if r["level"].name == "WARNING"]
    assert any("abandoned" in message for message in warnings)
