"""A pytest plugin (loaded by tests/conftest.py) that makes sure the test process always ends.

Nothing a test starts may outlive it. Two things keep a Python process alive after pytest's
summary: a non-daemon thread (an aiosqlite connection that was never closed is one) and a child
process. So:

- per test (an autouse fixture): threads and child processes that appeared during the test and
  are still there after its teardown (plus a short grace) fail that test by name; leaked children
  are killed so the next test starts clean;
- at the end of the session: any non-daemon thread or child process still alive is reported by
  name and the run fails (exit status 1 if it would have passed); children are killed, output is
  flushed, and the process ends with ``os._exit`` so nothing can keep it alive; a daemon watchdog
  also ends it if interpreter shutdown itself hangs;
- SIGUSR1 dumps every thread's stack to stderr and then ends the process (the default action):
  ``./pulse.sh test`` sends it when the whole suite overruns its time limit.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GRACE_S = 5.0
"""How long a thread or child may take to finish after its test's teardown (closing an aiosqlite
connection returns just before its thread ends)."""

WATCHDOG_S = 60.0
"""After pytest is done, how long interpreter shutdown may take before the process is ended anyway."""

_report_key = pytest.StashKey[list[str]]()
_stderr_key = pytest.StashKey[int]()
_session_key = pytest.StashKey[pytest.Session]()


@dataclass(frozen=True, slots=True)
class Child:
    pid: int
    name: str
    state: str

    def __str__(self) -> str:
        return f"process {self.pid} ({self.name})"


def children(root: int | None = None) -> list[Child]:
    """Every live descendant of ``root`` (this process by default), from /proc; zombies (exited,
    not yet reaped) are left out: they keep nothing alive."""
    root = os.getpid() if root is None else root
    parent: dict[int, int] = {}
    info: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        pid = int(entry.name)
        parent[pid] = int(ppid)
        info[pid] = (state, (cmdline or comm)[:160])
    found: list[Child] = []
    frontier = [root]
    while frontier:
        current = frontier.pop()
        for pid, ppid in parent.items():
            if ppid == current:
                frontier.append(pid)
                state, name = info[pid]
                if state != "Z":
                    found.append(Child(pid, name, state))
    return sorted(found, key=lambda c: c.pid)


def live_threads() -> list[threading.Thread]:
    """Non-daemon threads other than the main one: each would keep the process alive."""
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]


def _describe(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    where = f", running {getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)!s}" if target else ""
    return f"thread {thread.name!r}{where}"


def leftovers(threads_before: set[int], children_before: set[int], grace_s: float = GRACE_S) -> tuple[list[threading.Thread], list[Child]]:
    """Non-daemon threads and child processes that were not there before and are still alive after
    ``grace_s`` (each gets the time that remains to end)."""
    deadline = time.monotonic() + grace_s
    while True:
        threads = [t for t in live_threads() if t.ident not in threads_before]
        procs = [c for c in children() if c.pid not in children_before]
        if (not threads and not procs) or time.monotonic() >= deadline:
            return threads, procs
        if threads:
            threads[0].join(min(0.1, max(0.0, deadline - time.monotonic())))
        else:
            time.sleep(0.05)


def kill(procs: list[Child]) -> None:
    """SIGKILL, deepest first, and reap what is ours."""
    for child in sorted(procs, key=lambda c: -c.pid):
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for child in procs:
        try:
            os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # a grandchild: its own parent (or init) reaps it
            pass


# ---- per test ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _nothing_outlives_the_test() -> Iterator[None]:
    """Fail the test that leaves a thread or child process behind (checked after its teardown)."""
    threads_before = {t.ident for t in threading.enumerate() if t.ident is not None}
    children_before = {c.pid for c in children()}
    yield
    threads, procs = leftovers(threads_before, children_before)
    if procs:
        kill(procs)
    if threads or procs:
        names = "; ".join([*(_describe(t) for t in threads), *(str(c) + " (killed)" for c in procs)])
        pytest.fail(f"this test left behind: {names}", pytrace=False)


# ---- end of session ----------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # A copy of the real stderr (capturing is suspended while plugins are configured).
    fd = os.dup(2)
    config.stash[_stderr_key] = fd
    faulthandler.register(signal.SIGUSR1, file=fd, all_threads=True, chain=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    threads, procs = leftovers(set(), set())
    lines = [_describe(t) for t in threads] + [str(c) for c in procs]
    session.config.stash[_report_key] = lines
    if lines and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_report_key, [])
    if lines:
        terminalreporter.section("left behind after the session (the run fails)", sep="!", red=True, bold=True)
        for line in lines:
            terminalreporter.line(line, red=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.unregister(signal.SIGUSR1)
    session = config.stash.get(_session_key, None)
    if session is None:  # no session ran (--help, a usage error)
        return
    lines = config.stash.get(_report_key, [])
    procs = children()
    if procs:
        kill(procs)
    if lines or procs or live_threads():
        if config.pluginmanager.get_plugin("terminalreporter") is None:
            sys.stderr.write("left behind after the session (the run fails): " + "; ".join(lines or map(str, procs)) + "\n")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(int(session.exitstatus) or 1)
    _watchdog(config.stash[_stderr_key])


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_session_key] = session


def _watchdog(fd: int) -> None:
    """Interpreter shutdown (atexit handlers, threads started after the check) gets WATCHDOG_S;
    then every stack is dumped and the process ends."""

    def watch() -> None:
        time.sleep(WATCHDOG_S)
        os.write(fd, f"\n!!! the test process did not end {WATCHDOG_S:.0f} s after pytest finished; stacks:\n".encode())
        faulthandler.dump_traceback(file=fd, all_threads=True)
        os._exit(1)

    threading.Thread(target=watch, name="pulse-exit-watchdog", daemon=True).start()
