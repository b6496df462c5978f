"""The suite always ends (tests/leakcheck.py): a tiny suite run in a real pytest process that
leaks a non-daemon thread or a child process exits, non-zero, naming what it left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]

LEAKY_THREAD = """
import threading

def test_starts_a_thread_and_forgets_it():
    never = threading.Event()
    threading.Thread(target=never.wait, name="forgotten-sqlite-thread").start()

def test_clean():
    assert True
"""

LEAKY_CHILD = """
import subprocess, sys

def test_starts_a_child_and_forgets_it():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # forgotten-child"])
"""

CLEAN = """
import subprocess, sys, threading

def test_joins_its_thread_and_waits_for_its_child():
    t = threading.Thread(target=lambda: None, name="short")
    t.start()
    t.join()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    pytester.makepyfile(test_tiny=source)
    # a hang raises pytest.Pytester.TimeoutExpired: the run must end by itself
    return pytester.runpytest_subprocess("-p", "leakcheck", "-p", "no:cacheprovider", timeout=120)


def test_a_leaked_non_daemon_thread_fails_its_test_and_the_run_which_still_exits(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, LEAKY_THREAD)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_starts_a_thread_and_forgets_it*",
            "*this test left behind: thread 'forgotten-sqlite-thread'*",
            "*left behind after the session (the run fails)*",
            "thread 'forgotten-sqlite-thread'*",
        ]
    )
    result.assert_outcomes(passed=2, errors=1)


def test_a_leaked_child_process_is_named_killed_and_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, LEAKY_CHILD)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*this test left behind: process * (*forgotten-child*) (killed)*"])


def test_a_suite_that_cleans_up_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, CLEAN)
    assert result.ret == 0
    result.assert_outcomes(passed=1)
    assert "left behind" not in result.stdout.str()
