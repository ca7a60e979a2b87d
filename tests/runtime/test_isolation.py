"""IsolatedRunner: crashes, stalls and output floods in a child cost one call an error, not the worker."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import isolation_helpers as helpers
import pytest

from veilml._isolation import IsolatedRunner, IsolatedTaskError

pytestmark = pytest.mark.timeout(120)

LOGGER = "veilml.isolation"


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for a foreign reaper)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.fixture
def runner():
    with IsolatedRunner(processes=1, timeout=30) as r:
        yield r


def test_returns_values_and_reraises_exceptions(runner, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert runner.run(helpers.add, 2, 3) == 5
    blob = os.urandom(3 * 1024 * 1024)
    assert runner.run(helpers.echo, {"data": blob, "n": [1, 2]}) == {"data": blob, "n": [1, 2]}

    with pytest.raises(ValueError, match="bad ciphertext") as info:
        runner.run(helpers.fail, "bad ciphertext")
    assert type(info.value) is ValueError
    assert "in the isolated process" in str(info.value.__cause__)

    with pytest.raises(RuntimeError, match=r"TwoArgError: left/right"):
        runner.run(helpers.fail_unpicklable)

    # the same child keeps serving; output of a successful task is dropped without a log record
    pid = runner.run(helpers.getpid)
    assert runner.run(helpers.print_then_succeed) == "done"
    assert runner.run(helpers.getpid) == pid
    assert _records(caplog) == []


def test_unpicklable_function_is_refused_in_the_parent(runner):
    with pytest.raises(TypeError, match="module level"):
        runner.run(lambda: 1)


def test_segfault_and_exit_are_reported_and_the_next_call_succeeds(runner, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    first = runner.run(helpers.getpid)
    with pytest.raises(IsolatedTaskError) as info:
        runner.run(helpers.segfault)
    assert info.value.reason == "crashed"
    assert info.value.exitcode == -11
    assert "SIGSEGV" in str(info.value)
    assert _gone(first)
    # one record, quoting what the child printed before it died
    records = _records(caplog)
    assert len(records) == 1
    assert "about to read address zero" in records[0].getMessage()

    second = runner.run(helpers.getpid)
    assert second != first
    assert runner.run(helpers.add, 1, 1) == 2

    with pytest.raises(IsolatedTaskError, match="exited with code 3") as info:
        runner.run(helpers.exit_hard, 3)
    assert info.value.reason == "crashed"
    assert info.value.exitcode == 3
    assert runner.run(helpers.add, 2, 2) == 4


def test_timeout_kills_the_child_and_the_next_call_succeeds(runner):
    stalled = runner.run(helpers.getpid)
    with pytest.raises(IsolatedTaskError, match="did not finish within 1 s") as info:
        runner.run(helpers.spin, timeout=1)
    assert info.value.reason == "timeout"
    assert info.value.exitcode is None
    assert _gone(stalled)
    assert runner.run(helpers.add, 20, 22) == 42
    assert runner.run(helpers.getpid) != stalled


def test_output_flood_is_bounded(caplog, capfd):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limit = 16 * 1024
    megabytes = 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with IsolatedRunner(max_log_bytes=limit, timeout=90) as runner:
        with pytest.raises(ValueError, match="failed after the flood"):
            runner.run(helpers.flood_then_fail, megabytes)
        assert runner.run(helpers.add, 1, 2) == 3  # the flood did not leak into the next task's record
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    records = _records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert len(message.encode("utf-8")) <= 2048
    assert message.rstrip().endswith("END OF FLOOD")
    assert record.isolation_output_bytes == megabytes * 1024 * 1024 + len(b"END OF FLOOD\n")
    assert 0 < record.isolation_output_kept <= limit
    # the parent never held the flood: its peak memory grew far less than 200 MB
    assert (after - before) * 1024 < 64 * 1024 * 1024
    # and nothing reached the parent's own stdout/stderr
    out, err = capfd.readouterr()
    assert "END OF FLOOD" not in out + err
    assert len(out) + len(err) < 4096


def test_state_persists_between_calls_on_one_child(runner):
    results = [runner.run(helpers.count) for _ in range(3)]
    pids = {pid for pid, _ in results}
    assert len(pids) == 1
    assert [n for _, n in results] == [1, 2, 3]


def test_child_ignores_sigint_and_imports_little(runner):
    assert runner.run(helpers.interrupt_self) == "survived"
    assert runner.run(helpers.heavy_modules) == []


def test_child_outlives_the_thread_that_first_used_it(runner):
    """Linux's parent-death signal follows the starting thread; request threads come and go."""
    pids: list[int] = []
    thread = threading.Thread(target=lambda: pids.append(runner.run(helpers.getpid)))
    thread.start()
    thread.join(60)
    assert len(pids) == 1
    assert runner.run(helpers.getpid) == pids[0]


def test_threads_share_a_bounded_pool():
    with IsolatedRunner(processes=2, timeout=60) as runner:
        runner.warm()
        warm_pids = set(runner.pids())
        assert len(warm_pids) == 2
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda x: runner.run(helpers.square_with_pid, x), range(12)))
        assert [value for value, _ in results] == [x * x for x in range(12)]
        assert {pid for _, pid in results} <= warm_pids


def test_close_stops_the_children_and_refuses_new_work():
    runner = IsolatedRunner(processes=2)
    runner.warm()
    pids = runner.pids()
    assert len(pids) == 2
    runner.close()
    assert all(_gone(pid) for pid in pids)
    assert runner.pids() == []
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(helpers.add, 1, 2)
    runner.close()  # twice is fine


def test_close_ends_a_running_task():
    runner = IsolatedRunner(processes=1, timeout=60)
    pid = runner.run(helpers.getpid)
    errors: list[BaseException] = []

    def stalled() -> None:
        try:
            runner.run(helpers.spin)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=stalled)
    thread.start()
    time.sleep(0.5)  # let the task reach the child (the outcome does not depend on it)
    runner.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert _gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_children_die_with_the_parent():
    """A parent killed while its child is busy (so the child is not waiting on the task pipe)."""
    script = (
        "import isolation_helpers\n"
        "from veilml._isolation import IsolatedRunner\n"
        "r = IsolatedRunner()\n"
        "print(r.run(isolation_helpers.getpid), flush=True)\n"
        "r.run(isolation_helpers.spin, timeout=120)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        time.sleep(0.5)  # let the child start spinning (the outcome does not depend on it)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)
