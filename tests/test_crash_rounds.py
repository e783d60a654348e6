"""Tests for chapiteau.supervisor.crash_rounds: the delay grows per failed round."""

from __future__ import annotations

from chapiteau.supervisor.crash_rounds import CrashRounds, backoff

WINDOW = 1.0
NEVER = -1


def crash_round(rounds: CrashRounds, processes: int) -> list[float]:
    """Every process of the current round crashes; the delays answered."""
    spawned_in = rounds.current
    answers = [rounds.exited(spawned_in, 0.01, WINDOW, NEVER) for _ in range(processes)]
    return [answer.delay for answer in answers if answer is not None and answer.new_failure]


def test_the_delay_depends_on_failed_rounds_not_on_crashed_processes() -> None:
    one, eight = CrashRounds(), CrashRounds()
    delays_one = [crash_round(one, 1) for _ in range(5)]
    delays_eight = [crash_round(eight, 8) for _ in range(5)]
    assert delays_one == [[0.0], [0.1], [0.2], [0.4], [0.8]]
    assert delays_eight == delays_one


def test_a_late_crash_of_a_failed_round_waits_the_current_delay() -> None:
    rounds = CrashRounds()
    crash_round(rounds, 1)
    crash_round(rounds, 1)
    late = rounds.exited(0, 0.5, WINDOW, NEVER)
    assert late is not None and not late.new_failure and late.delay == 0.1


def test_a_process_that_lived_the_window_ends_the_streak() -> None:
    rounds = CrashRounds()
    for _ in range(4):
        crash_round(rounds, 3)
    lived = rounds.exited(rounds.current, WINDOW, WINDOW, NEVER)
    assert lived is not None and lived.delay == 0.0
    assert crash_round(rounds, 3) == [0.0]


def test_max_retry_gives_up_after_that_many_backoff_rounds() -> None:
    rounds = CrashRounds()
    answers = [rounds.exited(rounds.current, 0.01, WINDOW, 2) for _ in range(4)]
    assert [a.delay if a else None for a in answers] == [0.0, 0.1, 0.2, None]


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff(20) == 60.0
