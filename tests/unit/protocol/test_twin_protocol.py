"""Twin conformance: the documented cases of docs/protocol.md ("Device twin"), then properties."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.protocol.errors import Code, TwinError
from pulse.protocol.twin import (
    DEFAULT_LIMITS,
    TwinDocument,
    TwinLimits,
    TwinUpdate,
    apply_update,
    compute_delta,
    delta_message,
    document_message,
    from_json,
    parse_update,
    state_size,
    to_json,
    update_from_obj,
)

pytestmark = pytest.mark.unit

T1, T2, T3 = 1_764_061_200_000, 1_764_061_260_000, 1_764_061_320_000


def ts(ms: int) -> dict[str, int]:
    return {"timestamp": ms}


def run(*steps: tuple[dict[str, Any], int], limits: TwinLimits = DEFAULT_LIMITS) -> TwinDocument:
    doc = TwinDocument()
    for update, now_ms in steps:
        doc, _ = apply_update(doc, update_from_obj(update), now_ms=now_ms, limits=limits)
    return doc


def wire(doc: TwinDocument) -> dict[str, Any]:
    """The stored form plus the delta: what every expectation below is written against."""
    out: dict[str, Any] = json.loads(to_json(doc))
    out["state"]["delta"] = doc.delta
    return out


def desired(d: object) -> dict[str, Any]:
    return {"state": {"desired": d}}


def reported(r: object) -> dict[str, Any]:
    return {"state": {"reported": r}}


# Each case: the updates applied in order (with their time), then the expected document.
CASES: list[tuple[str, list[tuple[dict[str, Any], int]], dict[str, Any]]] = [
    (
        "nested desired on an empty twin: everything is delta, a timestamp per leaf",
        [(desired({"cfg": {"interval_s": 30, "mode": "eco"}}), T1)],
        {
            "version": 1,
            "state": {
                "desired": {"cfg": {"interval_s": 30, "mode": "eco"}},
                "reported": {},
                "delta": {"cfg": {"interval_s": 30, "mode": "eco"}},
            },
            "metadata": {"desired": {"cfg": {"interval_s": ts(T1), "mode": ts(T1)}}, "reported": {}},
        },
    ),
    (
        "nested delta holds only the differing leaves",
        [
            (desired({"cfg": {"interval_s": 30, "mode": "eco"}}), T1),
            (reported({"cfg": {"interval_s": 30, "mode": "normal"}}), T2),
        ],
        {
            "version": 2,
            "state": {
                "desired": {"cfg": {"interval_s": 30, "mode": "eco"}},
                "reported": {"cfg": {"interval_s": 30, "mode": "normal"}},
                "delta": {"cfg": {"mode": "eco"}},
            },
            "metadata": {
                "desired": {"cfg": {"interval_s": ts(T1), "mode": ts(T1)}},
                "reported": {"cfg": {"interval_s": ts(T2), "mode": ts(T2)}},
            },
        },
    ),
    (
        "nested objects merge; metadata keeps the time each leaf was last written",
        [(desired({"cfg": {"a": 1, "b": 2}}), T1), (desired({"cfg": {"b": 3, "c": 4}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"cfg": {"a": 1, "b": 3, "c": 4}}, "reported": {}, "delta": {"cfg": {"a": 1, "b": 3, "c": 4}}},
            "metadata": {"desired": {"cfg": {"a": ts(T1), "b": ts(T2), "c": ts(T2)}}, "reported": {}},
        },
    ),
    (
        "writing the same value again refreshes its timestamp",
        [(reported({"fw": "1.2"}), T1), (reported({"fw": "1.2"}), T2)],
        {
            "version": 2,
            "state": {"desired": {}, "reported": {"fw": "1.2"}, "delta": {}},
            "metadata": {"desired": {}, "reported": {"fw": ts(T2)}},
        },
    ),
    (
        "null deletes a leaf and its metadata",
        [(desired({"cfg": {"a": 1, "b": 2}}), T1), (desired({"cfg": {"a": None}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"cfg": {"b": 2}}, "reported": {}, "delta": {"cfg": {"b": 2}}},
            "metadata": {"desired": {"cfg": {"b": ts(T1)}}, "reported": {}},
        },
    ),
    (
        "null deletes a whole subtree",
        [(desired({"cfg": {"a": 1, "b": {"c": 2}}, "led": True}), T1), (desired({"cfg": None}), T2)],
        {
            "version": 2,
            "state": {"desired": {"led": True}, "reported": {}, "delta": {"led": True}},
            "metadata": {"desired": {"led": ts(T1)}, "reported": {}},
        },
    ),
    (
        "an object whose keys are all deleted goes too",
        [(desired({"cfg": {"a": 1}, "led": True}), T1), (desired({"cfg": {"a": None}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"led": True}, "reported": {}, "delta": {"led": True}},
            "metadata": {"desired": {"led": ts(T1)}, "reported": {}},
        },
    ),
    (
        "deleting a key that is not there changes nothing (the version still moves)",
        [(desired({"led": True}), T1), (desired({"nope": None, "cfg": {"x": None}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"led": True}, "reported": {}, "delta": {"led": True}},
            "metadata": {"desired": {"led": ts(T1)}, "reported": {}},
        },
    ),
    (
        '"desired": null clears the section; reported is untouched',
        [(desired({"led": True, "cfg": {"a": 1}}), T1), (reported({"led": False}), T2), ({"state": {"desired": None}}, T3)],
        {
            "version": 3,
            "state": {"desired": {}, "reported": {"led": False}, "delta": {}},
            "metadata": {"desired": {}, "reported": {"led": ts(T2)}},
        },
    ),
    (
        "arrays replace whole, with one timestamp for the array",
        [(desired({"sched": [1, 2, 3]}), T1), (desired({"sched": [4]}), T2)],
        {
            "version": 2,
            "state": {"desired": {"sched": [4]}, "reported": {}, "delta": {"sched": [4]}},
            "metadata": {"desired": {"sched": ts(T2)}, "reported": {}},
        },
    ),
    (
        "objects inside arrays are not merged, and null inside an array is a value",
        [(desired({"zones": [{"id": 1, "on": True}]}), T1), (desired({"zones": [{"id": 2}, None]}), T2)],
        {
            "version": 2,
            "state": {"desired": {"zones": [{"id": 2}, None]}, "reported": {}, "delta": {"zones": [{"id": 2}, None]}},
            "metadata": {"desired": {"zones": ts(T2)}, "reported": {}},
        },
    ),
    (
        "a scalar becomes an object",
        [(desired({"a": 5}), T1), (desired({"a": {"b": 1}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"a": {"b": 1}}, "reported": {}, "delta": {"a": {"b": 1}}},
            "metadata": {"desired": {"a": {"b": ts(T2)}}, "reported": {}},
        },
    ),
    (
        "an object becomes a scalar, dropping its leaves' metadata",
        [(desired({"a": {"b": 1, "c": 2}}), T1), (desired({"a": 7}), T2)],
        {
            "version": 2,
            "state": {"desired": {"a": 7}, "reported": {}, "delta": {"a": 7}},
            "metadata": {"desired": {"a": ts(T2)}, "reported": {}},
        },
    ),
    (
        "an object that sets nothing creates nothing and replaces nothing",
        [(desired({"a": 5}), T1), (desired({"a": {"b": None}, "e": {}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"a": 5}, "reported": {}, "delta": {"a": 5}},
            "metadata": {"desired": {"a": ts(T1)}, "reported": {}},
        },
    ),
    (
        "keys only in reported never appear in the delta",
        [(reported({"fw": "1.2", "temp_c": 21.5}), T1), (desired({"led": True}), T2)],
        {
            "version": 2,
            "state": {"desired": {"led": True}, "reported": {"fw": "1.2", "temp_c": 21.5}, "delta": {"led": True}},
            "metadata": {"desired": {"led": ts(T2)}, "reported": {"fw": ts(T1), "temp_c": ts(T1)}},
        },
    ),
    (
        "no delta when desired is empty",
        [(reported({"fw": "1.2"}), T1)],
        {
            "version": 1,
            "state": {"desired": {}, "reported": {"fw": "1.2"}, "delta": {}},
            "metadata": {"desired": {}, "reported": {"fw": ts(T1)}},
        },
    ),
    (
        "desired object against a reported scalar: the whole object is delta",
        [(reported({"a": 5}), T1), (desired({"a": {"b": 1}}), T2)],
        {
            "version": 2,
            "state": {"desired": {"a": {"b": 1}}, "reported": {"a": 5}, "delta": {"a": {"b": 1}}},
            "metadata": {"desired": {"a": {"b": ts(T2)}}, "reported": {"a": ts(T1)}},
        },
    ),
    (
        "desired scalar against a reported object: the scalar is delta",
        [(reported({"a": {"b": 1}}), T1), (desired({"a": 5}), T2)],
        {
            "version": 2,
            "state": {"desired": {"a": 5}, "reported": {"a": {"b": 1}}, "delta": {"a": 5}},
            "metadata": {"desired": {"a": ts(T2)}, "reported": {"a": {"b": ts(T1)}}},
        },
    ),
    (
        "true is not 1, but 1 is 1.0; arrays compare whole and in order",
        [
            (
                {
                    "state": {
                        "desired": {"on": True, "x": 1, "s": [1, 2], "t": [1, 2]},
                        "reported": {"on": 1, "x": 1.0, "s": [1, 2], "t": [2, 1]},
                    }
                },
                T1,
            )
        ],
        {
            "version": 1,
            "state": {
                "desired": {"on": True, "x": 1, "s": [1, 2], "t": [1, 2]},
                "reported": {"on": 1, "x": 1.0, "s": [1, 2], "t": [2, 1]},
                "delta": {"on": True, "t": [1, 2]},
            },
            "metadata": {
                "desired": {"on": ts(T1), "x": ts(T1), "s": ts(T1), "t": ts(T1)},
                "reported": {"on": ts(T1), "x": ts(T1), "s": ts(T1), "t": ts(T1)},
            },
        },
    ),
    (
        "the device reports what was desired: the delta empties",
        [(desired({"cfg": {"interval_s": 30}}), T1), (reported({"cfg": {"interval_s": 30}, "fw": "1.2"}), T2)],
        {
            "version": 2,
            "state": {"desired": {"cfg": {"interval_s": 30}}, "reported": {"cfg": {"interval_s": 30}, "fw": "1.2"}, "delta": {}},
            "metadata": {"desired": {"cfg": {"interval_s": ts(T1)}}, "reported": {"cfg": {"interval_s": ts(T2)}, "fw": ts(T2)}},
        },
    ),
]


@pytest.mark.parametrize(("steps", "expected"), [pytest.param(s, e, id=name) for name, s, e in CASES])
def test_conformance_case(steps: list[tuple[dict[str, Any], int]], expected: dict[str, Any]) -> None:
    assert wire(run(*steps)) == expected


# --- versions ----------------------------------------------------------------------------------


def test_every_accepted_update_adds_one_to_the_version() -> None:
    doc = TwinDocument()
    assert doc.version == 0
    for n, update in enumerate([desired({"a": 1}), desired({"a": 1}), desired({"zz": None}), {"state": {"desired": None}}], 1):
        doc, change = apply_update(doc, update_from_obj(update), now_ms=T1)
        assert doc.version == change.version == n


def test_update_with_the_current_version_is_accepted() -> None:
    doc = run((desired({"a": 1}), T1))
    new, _ = apply_update(doc, update_from_obj({"state": {"desired": {"a": 2}}, "version": 1}), now_ms=T2)
    assert (new.version, new.desired) == (2, {"a": 2})


@pytest.mark.parametrize("expected", [0, 2, 7])
def test_update_with_another_version_is_a_conflict_and_changes_nothing(expected: int) -> None:
    doc = run((desired({"a": 1}), T1))
    before = to_json(doc)
    with pytest.raises(TwinError) as err:
        apply_update(doc, update_from_obj({"state": {"desired": {"a": 2}}, "version": expected}), now_ms=T2)
    assert err.value.code is Code.TWIN_VERSION_CONFLICT
    assert err.value.context == {"expected": expected, "current": 1}
    assert to_json(doc) == before


# --- limits ------------------------------------------------------------------------------------


def test_state_over_the_size_limit_is_refused() -> None:
    with pytest.raises(TwinError) as err:
        run((desired({"blob": "x" * 8200}), T1))
    assert err.value.code is Code.TWIN_TOO_LARGE


def test_size_limit_counts_desired_and_reported_together_and_is_configurable() -> None:
    limits = TwinLimits(max_state_bytes=64)
    doc = run((desired({"s": "x" * 10}), T1), limits=limits)
    exact = 64 - state_size(doc.desired, {"r": ""})
    doc, _ = apply_update(doc, update_from_obj(reported({"r": "y" * exact})), now_ms=T2, limits=limits)
    assert state_size(doc.desired, doc.reported) == 64
    with pytest.raises(TwinError) as err:
        apply_update(doc, update_from_obj(reported({"r": "y" * (exact + 1)})), now_ms=T3, limits=limits)
    assert err.value.code is Code.TWIN_TOO_LARGE


def test_a_twin_over_a_lowered_limit_can_still_shrink() -> None:
    doc = run((desired({"a": "x" * 100, "b": "y" * 100}), T1))
    small = TwinLimits(max_state_bytes=150)
    doc, _ = apply_update(doc, update_from_obj(desired({"a": None})), now_ms=T2, limits=small)
    assert doc.desired == {"b": "y" * 100}
    with pytest.raises(TwinError) as err:
        apply_update(doc, update_from_obj(desired({"c": "z" * 100})), now_ms=T3, limits=small)
    assert err.value.code is Code.TWIN_TOO_LARGE


def nest(levels: int, leaf: object = 1) -> dict[str, Any]:
    """A section ``levels`` deep: nest(1) == {"k": 1}, nest(2) == {"k": {"k": 1}}."""
    value: Any = leaf
    for _ in range(levels):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


def test_six_levels_are_accepted_seven_are_too_deep() -> None:
    assert run((desired(nest(6)), T1)).desired == nest(6)
    with pytest.raises(TwinError) as err:
        run((desired(nest(7)), T1))
    assert err.value.code is Code.TWIN_TOO_DEEP


def test_arrays_count_as_levels_and_depth_is_configurable() -> None:
    assert run((desired(nest(5, [1])), T1)).desired == nest(5, [1])
    with pytest.raises(TwinError) as err:
        run((desired(nest(6, [1])), T1))
    assert err.value.code is Code.TWIN_TOO_DEEP
    assert run((desired(nest(2)), T1), limits=TwinLimits(max_depth=2)).desired == nest(2)
    with pytest.raises(TwinError):
        run((desired(nest(3)), T1), limits=TwinLimits(max_depth=2))


@pytest.mark.parametrize("key", ["", "a.b", "$meta", "a b", "naïve", "x" * 65, "a/b"])
def test_bad_key_names_are_refused(key: str) -> None:
    with pytest.raises(TwinError) as err:
        run((desired({"cfg": {key: 1}}), T1))
    assert err.value.code is Code.TWIN_BAD_KEY


@pytest.mark.parametrize("key", ["a", "interval_s", "Zone-2", "0", "x" * 64])
def test_good_key_names_are_accepted(key: str) -> None:
    assert run((desired({key: 1}), T1)).desired == {key: 1}


@pytest.mark.parametrize("value", [2**60, -(2**54), float("nan"), float("inf"), {1, 2}, b"raw"])
def test_values_that_are_not_portable_json_are_refused(value: object) -> None:
    with pytest.raises(TwinError) as err:
        apply_update(TwinDocument(), TwinUpdate(desired={"v": value}), now_ms=T1)
    assert err.value.code is Code.TWIN_BAD_VALUE


# --- the update at the boundary ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        b'{"desired": {"a": 1}}',
        b'{"state": {}}',
        b'{"state": {"delta": {"a": 1}}}',
        b'{"state": {"desired": "on"}}',
        b'{"state": {"desired": {"a": 1}}, "version": "3"}',
        b'{"state": {"desired": {"a": 1}}, "version": -1}',
        b'{"state": {"desired": {"a": 1}}, "version": true}',
        b'{"state": {"desired": {"a": NaN}}}',
        b'{"state": {"desired": {"a": 1}}, "clientToken": "x"}',
        b"\xff\xfe",
    ],
)
def test_malformed_updates_are_refused_with_bad_update(raw: bytes) -> None:
    with pytest.raises(TwinError) as err:
        parse_update(raw)
    assert err.value.code is Code.TWIN_BAD_UPDATE


def test_oversized_raw_update_is_refused_before_decoding() -> None:
    with pytest.raises(TwinError) as err:
        parse_update(b'{"state": {"desired": {"a": "' + b"x" * 20_000 + b'"}}}')
    assert err.value.code is Code.TWIN_TOO_LARGE


def test_update_round_trips_through_its_wire_form() -> None:
    for update in [TwinUpdate(desired={"a": {"b": None}}, version=3), TwinUpdate(clear_desired=True, reported={"x": [1]})]:
        assert parse_update(update.to_json()) == update


def test_an_update_cannot_both_clear_and_merge_a_section() -> None:
    with pytest.raises(TwinError) as err:
        TwinUpdate(desired={"a": 1}, clear_desired=True)
    assert err.value.code is Code.TWIN_BAD_UPDATE


# --- the change, for the audit trail -----------------------------------------------------------


def test_change_lists_leaves_set_and_paths_removed_per_section() -> None:
    doc = run((desired({"cfg": {"a": 1, "b": 2}, "led": True}), T1), (reported({"led": True}), T1))
    update = {"state": {"desired": {"cfg": {"a": None, "c": {"d": [1]}}, "gone": None}, "reported": {"fw": "1.3"}}}
    _, change = apply_update(doc, update_from_obj(update), now_ms=T2)
    assert change.to_json() == {
        "version": 3,
        "desired": {"set": {"cfg.c.d": [1]}, "removed": ["cfg.a"]},
        "reported": {"set": {"fw": "1.3"}, "removed": []},
    }
    assert change.delta_changed


def test_clearing_a_section_lists_its_top_level_keys_as_removed() -> None:
    doc = run((desired({"cfg": {"a": 1}, "led": True}), T1))
    _, change = apply_update(doc, update_from_obj({"state": {"desired": None}}), now_ms=T2)
    assert change.to_json() == {"version": 2, "desired": {"set": {}, "removed": ["cfg", "led"]}}
    assert change.delta_changed


def test_reported_changes_that_leave_the_delta_alone_say_so() -> None:
    doc = run((desired({"led": True}), T1))
    _, change = apply_update(doc, update_from_obj(reported({"temp_c": 21.5})), now_ms=T2)
    assert not change.delta_changed
    _, change = apply_update(doc, update_from_obj(reported({"led": True})), now_ms=T2)
    assert change.delta_changed


# --- the document codec and what devices receive -----------------------------------------------


def test_document_round_trips_through_json() -> None:
    doc = run((desired({"cfg": {"a": 1, "l": [{"x": None}]}, "led": True}), T1), (reported({"cfg": {"a": 2}}), T2))
    assert from_json(to_json(doc)) == doc
    assert from_json(document_message(doc, now_ms=T3)) == doc


def test_delta_message_carries_the_delta_and_its_desired_timestamps() -> None:
    doc = run(
        (desired({"cfg": {"interval_s": 30, "mode": "eco"}, "led": True}), T1),
        (reported({"cfg": {"interval_s": 30}, "led": True}), T2),
    )
    assert json.loads(delta_message(doc, now_ms=T3) or b"") == {
        "version": 2,
        "timestamp": T3,
        "state": {"cfg": {"mode": "eco"}},
        "metadata": {"cfg": {"mode": ts(T1)}},
    }


def test_no_delta_message_when_there_is_no_delta() -> None:
    assert delta_message(run((reported({"led": True}), T1)), now_ms=T2) is None
    assert delta_message(TwinDocument(), now_ms=T2) is None


def test_document_message_is_the_whole_twin_with_its_delta() -> None:
    doc = run((desired({"led": True}), T1), (reported({"fw": "1.2"}), T2))
    assert json.loads(document_message(doc, now_ms=T3)) == {
        "version": 2,
        "timestamp": T3,
        "state": {"desired": {"led": True}, "reported": {"fw": "1.2"}, "delta": {"led": True}},
        "metadata": {"desired": {"led": ts(T1)}, "reported": {"fw": ts(T2)}},
    }
    no_delta = json.loads(document_message(run((reported({"fw": "1.2"}), T1)), now_ms=T3))
    assert "delta" not in no_delta["state"]


@pytest.mark.parametrize(
    "stored",
    [
        {"state": {}, "metadata": {}},
        {"version": -1},
        {"version": 1, "state": {"desired": {"a": 1}}, "metadata": {"desired": {}}},
        {"version": 1, "state": {"desired": {"a": 1}}, "metadata": {"desired": {"a": {"timestamp": "soon"}}}},
        {"version": 1, "state": {"desired": {"a": 1}}, "metadata": {"desired": {"a": 5}}},
        {"version": 1, "state": {"desired": {"a": {"b": 1}}}, "metadata": {"desired": {"a": ts(T1)}}},
        {"version": 1, "state": {"desired": {"a": None}}, "metadata": {"desired": {"a": ts(T1)}}},
        {"version": 1, "state": {"desired": {"a": {}}}, "metadata": {"desired": {"a": {}}}},
        {"version": 1, "state": {"desired": {"a.b": 1}}, "metadata": {"desired": {"a.b": ts(T1)}}},
        {"version": 1, "state": {"reported": []}},
        {"version": 1, "extra": True},
    ],
)
def test_malformed_stored_documents_are_refused(stored: dict[str, Any]) -> None:
    with pytest.raises(TwinError) as err:
        from_json(json.dumps(stored))
    assert err.value.code is Code.TWIN_BAD_DOCUMENT


# --- properties --------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "mode", "interval_s"])
SCALARS = (
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(-1e6, 1e6, allow_nan=False) | st.text("xyz", max_size=3)
)
LEAVES = SCALARS.filter(lambda v: v is not None) | st.lists(SCALARS, max_size=2)


def objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        st.dictionaries(KEYS, values, max_size=3), lambda inner: st.dictionaries(KEYS, values | inner, max_size=3), max_leaves=6
    )


SECTIONS = objects(LEAVES)
PATCHES = objects(LEAVES | st.none())
UPDATES = st.one_of(
    st.builds(lambda d: TwinUpdate(desired=d), PATCHES),
    st.builds(lambda r: TwinUpdate(reported=r), PATCHES),
    st.builds(lambda d, r: TwinUpdate(desired=d, reported=r), PATCHES, PATCHES),
)
BIG = TwinLimits(max_state_bytes=1 << 20, max_depth=32)


def twins() -> st.SearchStrategy[TwinDocument]:
    return st.lists(UPDATES, max_size=3).map(lambda updates: _apply_all(updates))


def _apply_all(updates: list[TwinUpdate]) -> TwinDocument:
    doc = TwinDocument()
    for i, update in enumerate(updates):
        doc, _ = apply_update(doc, update, now_ms=T1 + i, limits=BIG)
    return doc


def paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in obj.items():
        out.add((*prefix, key))
        if isinstance(value, dict):
            out |= paths(value, (*prefix, key))
    return out


def mirrors(values: dict[str, Any], meta: dict[str, Any]) -> bool:
    return values.keys() == meta.keys() and all(
        mirrors(v, meta[k]) if isinstance(v, dict) else isinstance(meta[k], int) for k, v in values.items()
    )


@given(twins())
def test_delta_is_empty_right_after_reported_takes_desired(doc: TwinDocument) -> None:
    if not doc.desired:
        assert doc.delta == {}
        return
    after, _ = apply_update(doc, TwinUpdate(reported=doc.desired), now_ms=T3, limits=BIG)
    assert after.delta == {}


@given(twins(), UPDATES)
def test_applying_an_update_twice_equals_applying_it_once_but_for_version_and_time(doc: TwinDocument, update: TwinUpdate) -> None:
    once, _ = apply_update(doc, update, now_ms=T2, limits=BIG)
    twice, _ = apply_update(once, update, now_ms=T3, limits=BIG)
    assert (twice.desired, twice.reported) == (once.desired, once.reported)
    assert twice.version == once.version + 1 == doc.version + 2


@given(twins())
def test_delta_paths_are_desired_paths_with_desired_values(doc: TwinDocument) -> None:
    delta = doc.delta
    assert paths(delta) <= paths(doc.desired)
    for path in paths(delta):
        node: Any = delta
        want: Any = doc.desired
        for key in path:
            node, want = node[key], want[key]
        if not isinstance(node, dict):
            assert node == want


@given(SECTIONS, SECTIONS)
def test_keys_only_in_reported_never_reach_the_delta(want: dict[str, Any], have: dict[str, Any]) -> None:
    assert paths(compute_delta(want, have)) <= paths(want)


@given(twins(), UPDATES)
def test_metadata_mirrors_state_after_any_update_and_inputs_are_untouched(doc: TwinDocument, update: TwinUpdate) -> None:
    doc_before, update_before = copy.deepcopy(doc), copy.deepcopy(update)
    new, _ = apply_update(doc, update, now_ms=T2, limits=BIG)
    assert (doc, update) == (doc_before, update_before)
    assert mirrors(new.desired, new.desired_meta) and mirrors(new.reported, new.reported_meta)
    assert from_json(to_json(new)) == new
