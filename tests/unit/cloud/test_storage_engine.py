"""The storage engine decision (cloud/db/engine.py): TimescaleDB only when installed and preloaded;
a notice when Pulse falls back although it is installed; a coded refusal when it was asked for."""

from __future__ import annotations

import pytest

from pulse.cloud.db.engine import Choice, Requested, ServerOffer, StorageEngineError, choose, preload_list
from pulse.protocol.errors import Code

NONE = ServerOffer(available=False, preloaded=False)
INSTALLED = ServerOffer(available=True, preloaded=False)
READY = ServerOffer(available=True, preloaded=True)


@pytest.mark.parametrize(
    ("requested", "server", "engine", "notice"),
    [
        ("auto", READY, "timescaledb", None),
        ("auto", NONE, "native", None),
        ("auto", INSTALLED, "native", "not preloaded"),
        ("native", READY, "native", None),
        ("native", INSTALLED, "native", None),
        ("timescaledb", READY, "timescaledb", None),
    ],
)
def test_choice(requested: Requested, server: ServerOffer, engine: str, notice: str | None) -> None:
    got = choose(requested, server)
    assert got.engine == engine
    if notice is None:
        assert got.notice is None
    else:
        assert got.notice is not None and notice in got.notice and "shared_preload_libraries" in got.notice


@pytest.mark.parametrize(("server", "says"), [(INSTALLED, "not preloaded"), (NONE, "not installed")])
def test_asking_for_timescaledb_where_it_cannot_run_is_refused_with_a_code(server: ServerOffer, says: str) -> None:
    with pytest.raises(StorageEngineError) as refused:
        choose("timescaledb", server)
    assert refused.value.code == Code.STORAGE_TIMESCALEDB_UNAVAILABLE
    assert says in refused.value.message and "PULSE_STORAGE_ENGINE" in refused.value.message


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        ("", []),
        ("timescaledb", ["timescaledb"]),
        ("pg_stat_statements, timescaledb", ["pg_stat_statements", "timescaledb"]),
        ('"timescaledb"', ["timescaledb"]),
        ("$libdir/timescaledb.so,auto_explain", ["timescaledb", "auto_explain"]),
        ("timescaledb_toolkit", ["timescaledb_toolkit"]),
    ],
)
def test_preload_list_reads_the_setting_as_postgresql_writes_it(setting: str, names: list[str]) -> None:
    assert preload_list(setting) == names


def test_a_choice_is_plain_data() -> None:
    assert choose("auto", READY) == Choice("timescaledb")
