import json
import pytest

from headsync.core.errors import Cancelled
from headsync.core.progress import Reporter, json_lines_sink


def test_overall_fraction_over_steps():
    evs = []
    r = Reporter(sink=evs.append, min_interval_s=0)
    r.start("single", 4)
    r.advance(1)
    assert "overall" not in evs[-1]  # a one-step job reports only its stage
    r.begin_step(2, 4)
    r.start("masks", 10)
    r.advance(5)
    assert evs[-1]["overall"] == pytest.approx((2 + 0.5) / 4) and (evs[-1]["step"], evs[-1]["steps"]) == (3, 4)


def test_should_stop_raises_cancelled():
    stop = {"v": False}
    r = Reporter(sink=None, should_stop=lambda: stop["v"])
    r.start("train", 10)
    r.advance()
    stop["v"] = True
    with pytest.raises(Cancelled, match="train"):
        r.advance()


def test_json_lines_are_the_design_events(capsys):
    r = Reporter(sink=json_lines_sink(), min_interval_s=0)
    r.start("landmarks", 750)
    r.set(120)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "progress" and lines[-1]["stage"] == "landmarks"
    assert (lines[-1]["done"], lines[-1]["total"]) == (120, 750)


def test_overall_progress_never_falls_back_within_a_job():
    """Issue 11: the bar fell from 99% to 90% when the encoder phase of the last prepare step began."""
    events = []
    r = Reporter(sink=events.append, min_interval_s=0.0)
    r.begin_step(7, 9)
    r.start("pose", 10)
    r.set(10)
    r.begin_step(8, 9, phases=3)
    for name, n in (("mouth crops", 20), ("sync discriminator", 300), ("av encoder", 150)):
        r.start(name, n)
        for _ in range(0, n, 10):
            r.advance(10)
    r.begin_step(8, 9, phases=1)  # a step that starts more stages than it declared: held, never lowered
    r.start("again", 5)
    overall = [e["overall"] for e in events if "overall" in e]
    assert overall == sorted(overall) and overall[-1] == 1.0
    i = next(k for k, e in enumerate(events) if e.get("stage") == "av encoder")
    assert 8 / 9 + 2 / 27 - 1e-3 <= events[i]["overall"] < 8 / 9 + 2.1 / 27
