"""Jobs: stage and abort arithmetic, the step, device outcomes — tables of inputs and expected outputs."""

from __future__ import annotations

import pytest

from pulse.protocol import jobs
from pulse.protocol.errors import Code, JobError
from pulse.protocol.jobs import DeviceRun, JobRun, JobState, Outcome, Rollout

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "rollout", "stages"),
    [
        (0, Rollout(), []),
        (10, Rollout(), [10]),
        (10, Rollout(canary=2), [2, 8]),
        (10, Rollout(canary=2, batch_size=3), [2, 3, 3, 2]),
        (10, Rollout(canary_percent=10, batch_percent=50), [1, 5, 4]),
        (3, Rollout(canary=5), [3]),
        (25, Rollout(canary=5, batch_size=10), [5, 10, 10]),
        (7, Rollout(batch_size=3), [3, 3, 1]),
        (1, Rollout(canary_percent=1), [1]),
        (200, Rollout(canary_percent=0.5, batch_percent=25), [1, 50, 50, 50, 49]),
    ],
)
def test_stages_are_canary_then_batches_and_sum_to_every_device(n: int, rollout: Rollout, stages: list[int]) -> None:
    assert jobs.plan_stages(n, rollout) == stages
    assert sum(stages) == n


def test_stages_never_pass_the_stage_limit() -> None:
    assert len(jobs.plan_stages(100_000, Rollout(batch_size=1))) <= jobs.MAX_STAGES


@pytest.mark.parametrize(
    ("bad", "size", "percent", "aborts"),
    [
        (0, 5, 0, False),
        (1, 5, 0, True),
        (1, 5, 20, False),  # exactly 20 % is not *more than* 20 %
        (2, 5, 20, True),
        (2, 5, 40, False),
        (3, 5, 40, True),
        (5, 5, 100, False),
        (1, 3, 33.3, True),
        (0, 0, 0, False),
    ],
)
def test_abort_is_more_than_n_percent_of_the_stage(bad: int, size: int, percent: float, aborts: bool) -> None:
    assert jobs.over_abort(bad, size, percent) is aborts


def _job(rollout: Rollout, stages: int, **kw: object) -> JobRun:
    base = {"state": JobState.RUNNING, "stage": 0, "stages": stages, "rollout": rollout, "started_ms": 0, "stage_started_ms": 0}
    base.update(kw)
    return JobRun(**base)  # type: ignore[arg-type]


def _devices(rollout: Rollout, n: int) -> list[DeviceRun]:
    return [DeviceRun(d, s) for d, s in jobs.assign_stages([f"d{i}" for i in range(n)], rollout)]


def test_the_first_step_starts_only_the_canary() -> None:
    r = Rollout(canary=2, batch_size=3)
    devices = _devices(r, 8)
    out = jobs.step(_job(r, 3), devices, {}, 1000)
    assert out.start == ("d0", "d1")
    assert out.job.state is JobState.RUNNING and out.job.stage == 0


def test_a_canary_where_two_of_five_fail_stops_the_job_before_the_next_stage() -> None:
    r = Rollout(canary=5, batch_size=10, abort_percent=20)
    devices = _devices(r, 25)
    done = [
        DeviceRun(d.device_id, d.stage, Outcome.FAILED if i < 2 else Outcome.SUCCEEDED, 0, "boom" if i < 2 else None)
        if d.stage == 0 else d
        for i, d in enumerate(devices)
    ]
    out = jobs.step(_job(r, 3), done, {}, 5000)
    assert out.job.state is JobState.ABORTED
    assert "2 of 5" in (out.job.reason or "")
    assert out.start == ()
    assert {o for o, _ in out.finish.values()} == {Outcome.CANCELLED}
    assert len(out.finish) == 20


def test_abort_happens_as_soon_as_the_threshold_is_certainly_passed() -> None:
    r = Rollout(canary=5, abort_percent=20)
    devices = _devices(r, 10)
    devices[0] = DeviceRun("d0", 0, Outcome.FAILED, 0, "x")
    devices[1] = DeviceRun("d1", 0, Outcome.TIMED_OUT, 0, "x")
    devices[2] = DeviceRun("d2", 0, Outcome.IN_PROGRESS, 0)
    assert jobs.step(_job(r, 2), devices, {}, 10).job.state is JobState.ABORTED


def test_a_stage_that_is_done_waits_for_the_pause_then_starts_the_next() -> None:
    r = Rollout(canary=1, batch_size=2, pause_s=60)
    devices = _devices(r, 3)
    devices[0] = DeviceRun("d0", 0, Outcome.SUCCEEDED, 0)
    paused = jobs.step(_job(r, 2), devices, {}, 1_000)
    assert paused.job.state is JobState.PAUSED and paused.start == ()
    assert paused.job.stage_done_ms == 1_000
    still = jobs.step(paused.job, devices, {}, 60_999)
    assert still.job.state is JobState.PAUSED
    nxt = jobs.step(paused.job, devices, {}, 61_000)
    assert nxt.job.state is JobState.RUNNING and nxt.job.stage == 1
    assert nxt.start == ("d1", "d2")


def test_started_devices_time_out_and_offline_ones_are_skipped_at_the_deadline() -> None:
    r = Rollout(device_timeout_s=10, deadline_s=100)
    devices = [DeviceRun("a", 0, Outcome.IN_PROGRESS, 0), DeviceRun("b", 0)]
    early = jobs.step(_job(r, 1), devices, {"b": False}, 9_999)
    assert early.start == () and early.finish == {}
    mid = jobs.step(_job(r, 1), devices, {"b": False}, 10_000)
    assert mid.finish["a"][0] is Outcome.TIMED_OUT and "b" not in mid.finish
    late = jobs.step(_job(r, 1), [DeviceRun("a", 0, Outcome.SUCCEEDED, 0), DeviceRun("b", 0)], {"b": False}, 100_000)
    assert late.finish["b"] == (Outcome.SKIPPED, "offline until the job's deadline")
    assert late.job.state is JobState.COMPLETED


def test_an_offline_device_starts_when_it_comes_back_before_the_deadline() -> None:
    r = Rollout(deadline_s=100)
    out = jobs.step(_job(r, 1), [DeviceRun("b", 0)], {"b": True}, 50_000)
    assert out.start == ("b",)


def test_cancel_stops_devices_not_started_and_refuses_a_finished_job() -> None:
    r = Rollout()
    devices = [DeviceRun("a", 0, Outcome.IN_PROGRESS, 0), DeviceRun("b", 0)]
    out = jobs.cancel(_job(r, 1), devices)
    assert out.job.state is JobState.CANCELLED and out.finish == {"b": (Outcome.CANCELLED, "job cancelled")}
    with pytest.raises(JobError) as err:
        jobs.cancel(out.job, devices)
    assert err.value.code is Code.JOB_ILLEGAL_STATE


def test_a_finished_job_does_nothing() -> None:
    out = jobs.step(_job(Rollout(), 1, state=JobState.COMPLETED), [DeviceRun("a", 0)], {}, 0)
    assert out.start == () and out.finish == {}


@pytest.mark.parametrize(
    ("state", "error", "outcome"),
    [
        ("queued", None, Outcome.IN_PROGRESS),
        ("delivered", None, Outcome.IN_PROGRESS),
        ("sent", None, Outcome.IN_PROGRESS),
        ("succeeded", None, Outcome.SUCCEEDED),
        ("failed", "firmware.hash_mismatch: bad", Outcome.FAILED),
        ("expired", None, Outcome.TIMED_OUT),
    ],
)
def test_a_command_state_gives_the_device_outcome(state: str, error: str | None, outcome: Outcome) -> None:
    got, reason = jobs.command_outcome(state, error)
    assert got is outcome
    if state == "failed":
        assert reason == error


@pytest.mark.parametrize(
    ("patch", "reported", "applied"),
    [
        ({"interval_s": 30}, {"interval_s": 30}, True),
        ({"interval_s": 30}, {"interval_s": 10}, False),
        ({"interval_s": 30}, {}, False),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, True),
        ({"a": {"b": 1}}, {"a": 1}, False),
        ({"gone": None}, {"x": 1}, True),
        ({"gone": None}, {"gone": 1}, False),
    ],
)
def test_desired_is_applied_when_the_device_reports_it(patch: dict, reported: dict, applied: bool) -> None:
    assert jobs.desired_applied(patch, reported) is applied


@pytest.mark.parametrize(
    ("patch", "desired", "undo"),
    [
        ({"interval_s": 30}, {"interval_s": 10, "x": 1}, {"interval_s": 10}),
        ({"interval_s": 30}, {}, {"interval_s": None}),
        ({"a": {"b": 1}}, {"a": {"b": 0, "c": 5}}, {"a": {"b": 0}}),
        ({"a": {"b": 1}}, {"a": 7}, {"a": 7}),
        ({"gone": None}, {"gone": 3}, {"gone": 3}),
    ],
)
def test_rollback_writes_the_previous_values(patch: dict, desired: dict, undo: dict) -> None:
    assert jobs.previous_values(patch, desired) == undo


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"kind": "reboot"}, "action.kind"),
        ({"kind": "command"}, "action.name"),
        ({"kind": "desired", "patch": {}}, "action.patch"),
        ({"kind": "firmware"}, "action.artifact"),
        ({"kind": "command", "name": "x", "expires_in_s": 0}, "expires_in_s"),
    ],
)
def test_a_bad_action_is_refused_with_the_field(obj: dict, fragment: str) -> None:
    with pytest.raises(JobError) as err:
        jobs.action_from_obj(obj)
    assert err.value.code is Code.JOB_INVALID and fragment in err.value.message


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"canary": -1}, "rollout.canary"),
        ({"abort_percent": 101}, "rollout.abort_percent"),
        ({"canary": 1, "canary_percent": 5}, "not both"),
        ({"pause": 5}, "'pause'"),
        ({"device_timeout_s": 0}, "at least 1 second"),
    ],
)
def test_a_bad_rollout_is_refused_with_the_field(obj: dict, fragment: str) -> None:
    with pytest.raises(JobError) as err:
        jobs.rollout_from_obj(obj)
    assert fragment in err.value.message


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"devices": ["bad id"]}, "device ids"),
        ({"states": ["asleep"]}, "target.states"),
        ({"site": 5}, "target.site"),
        ({"model": "x"}, "'model'"),
    ],
)
def test_a_bad_target_is_refused_with_the_field(obj: dict, fragment: str) -> None:
    with pytest.raises(JobError) as err:
        jobs.target_from_obj(obj)
    assert fragment in err.value.message


def test_definitions_round_trip_through_json() -> None:
    t = jobs.target_from_obj({"tags": ["ups"], "site": "s1", "states": ["online"], "firmware": "1.0"})
    assert jobs.target_from_obj(t.to_json()) == t
    r = jobs.rollout_from_obj({"canary": 2, "batch_percent": 25, "pause_s": 30, "abort_percent": 20})
    assert jobs.rollout_from_obj(r.to_json()) == r
    a = jobs.action_from_obj({"kind": "desired", "patch": {"interval_s": 30}})
    assert jobs.action_from_obj(a.to_json()) == a
