"""A long phase logs its start, a line every interval while it lasts, and its duration; a short one only its start."""

import logging
import time

from vheat_jax import heartbeat


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_long_phase_beats_until_it_ends(caplog):
    with caplog.at_level(logging.INFO):
        with heartbeat.phase("compiling", every_s=0.05):
            time.sleep(0.3)
        time.sleep(0.15)  # no beat after the phase
    lines = messages(caplog)
    assert lines[0] == "compiling..." and lines[-1].startswith("compiling: done in")
    beats = [line for line in lines if line.startswith("still compiling (")]
    assert 3 <= len(beats) <= 6, lines


def test_first_call_wraps_only_the_first_call_and_a_disabled_phase_is_silent(caplog):
    calls = []
    step = heartbeat.first_call(lambda x: calls.append(x) or x, "compiling the step")
    with caplog.at_level(logging.INFO):
        assert [step(1), step(2)] == [1, 2]
        with heartbeat.phase("quiet", enabled=False):
            pass
    lines = messages(caplog)
    assert calls == [1, 2] and lines[0] == "compiling the step..."
    assert lines[1].startswith("compiling the step: done in")
    assert len(lines) == 2
