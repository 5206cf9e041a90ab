"""Tests for lr_scheduler.py: hand-computed schedule values, validation, and the Paddle scheduler's
state round trip."""
import logging

import pytest

from lr_scheduler import build_lr_scheduler, lr_at, warmup_steps_from_proportion

# warm-up 0.1 -> 1.0 over 10 steps, then linear decay to 0 at step 110.
SCHEDULE = dict(base_lr=1.0, warmup_start_lr=0.1, warmup_steps=10, total_steps=110)


@pytest.mark.parametrize("step, expected", [
    (0, 0.1),            # start of warm-up
    (5, 0.55),           # 0.1 + 0.9 * 5/10
    (10, 1.0),           # end of warm-up: the peak
    (35, 0.75),          # 1 - 25/100
    (60, 0.5),           # half-way through the decay
    (110, 0.0),          # total_steps
    (500, 0.0),          # beyond total: held at end_lr
])
def test_linear_schedule_hand_values(step, expected):
    assert lr_at(step, **SCHEDULE) == pytest.approx(expected, abs=1e-12)


def test_power_and_end_lr():
    assert lr_at(60, **SCHEDULE, power=2.0) == pytest.approx(0.25)
    assert lr_at(60, **SCHEDULE, end_lr=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, **SCHEDULE, end_lr=0.1) == pytest.approx(0.1)
    assert lr_at(10_000, **SCHEDULE, end_lr=0.1) == pytest.approx(0.1)


def test_no_warmup_starts_at_base_and_full_warmup_never_decays():
    assert lr_at(0, base_lr=2e-3, warmup_start_lr=0.0, warmup_steps=0, total_steps=4) == 2e-3
    assert lr_at(2, base_lr=2e-3, warmup_start_lr=0.0, warmup_steps=0, total_steps=4) == \
        pytest.approx(1e-3)
    full = dict(base_lr=1.0, warmup_start_lr=0.0, warmup_steps=4, total_steps=4)
    assert [lr_at(s, **full) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 0.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(SCHEDULE, warmup_steps=111), r"warmup_steps \(111\) must not exceed total_steps \(110\)"),
    (dict(SCHEDULE, total_steps=0, warmup_steps=0), "total_steps must be >= 1"),
    (dict(SCHEDULE, base_lr=-1.0), "base_lr must be a finite number >= 0"),
    (dict(SCHEDULE, power=0.0), "power must be > 0"),
    (dict(SCHEDULE, warmup_steps=2.5), "warmup_steps must be a non-negative integer"),
])
def test_invalid_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_at(0, **kwargs)


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        lr_at(-1, **SCHEDULE)


@pytest.mark.parametrize("total, proportion, expected", [
    (1000, 0.01, 10), (100, 0.29, 29), (7, 0.5, 3), (10, 0.0, 0), (10, 1.0, 10), (7038, 0.2843, 2000)])
def test_warmup_steps_from_proportion(total, proportion, expected):
    assert warmup_steps_from_proportion(total, proportion) == expected


@pytest.mark.parametrize("total, proportion", [(0, 0.1), (10, 1.5), (10, -0.1)])
def test_warmup_proportion_errors(total, proportion):
    with pytest.raises(ValueError):
        warmup_steps_from_proportion(total, proportion)


def test_scheduler_follows_lr_at_one_value_per_update():
    sched = build_lr_scheduler(**SCHEDULE)
    seen = []
    for _ in range(120):
        seen.append(sched())
        sched.step()
    assert seen == [lr_at(s, **SCHEDULE) for s in range(120)]


def test_state_dict_round_trip_is_exact():
    first = build_lr_scheduler(**SCHEDULE)
    for _ in range(37):
        first.step()
    state = first.state_dict()
    assert state == {"last_epoch": 37, "last_lr": lr_at(37, **SCHEDULE)}
    second = build_lr_scheduler(**SCHEDULE)
    second.set_state_dict(state)
    assert second.state_dict() == state
    for _ in range(5):
        first.step()
        second.step()
        assert second() == first()


def test_last_step_and_changed_schedule_warning(caplog):
    assert build_lr_scheduler(**SCHEDULE, last_step=60)() == pytest.approx(0.5)
    other = build_lr_scheduler(**dict(SCHEDULE, total_steps=210))
    with caplog.at_level(logging.WARNING, logger="lr_scheduler"):
        other.set_state_dict({"last_epoch": 60, "last_lr": 0.5})
    assert "LR schedule changed" in caplog.text
    assert other() == pytest.approx(lr_at(60, **dict(SCHEDULE, total_steps=210)))


def test_bad_state_rejected():
    with pytest.raises(ValueError, match="last_epoch"):
        build_lr_scheduler(**SCHEDULE).set_state_dict({"last_lr": 0.1})
