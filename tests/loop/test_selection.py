"""Goals, Pareto fronts, selection and planning on hand-made measurements (pure logic)."""

from __future__ import annotations

import pytest

from controller.loop.goals import GoalError, parse_goals
from controller.loop.planner import CandidateRequest, Ladders, plan_next_round
from controller.loop.selection import Measurement, choose, pareto_front


def m(version: str, acc: float, fps: float, cls: str = "cpu-1t", precision: str = "fp32", p90: float = 5.0):
    return Measurement(cls, version, "onnxruntime", precision, acc, fps, p90)


def test_goals_refuse_unknown_key_naming_allowed() -> None:
    with pytest.raises(GoalError, match=r"classes\.cpu\.min_fsp.*allowed: .*min_fps"):
        parse_goals({"classes": {"cpu": {"min_fsp": 3}}})


def test_goals_need_a_speed_target_and_apply_defaults() -> None:
    with pytest.raises(GoalError, match="min_fps, min_speedup, max_p90_latency_ms or min_streams"):
        parse_goals({"classes": {"cpu": {"max_accuracy_drop": 1}}})
    goals = parse_goals({"defaults": {"max_accuracy_drop": 0.5}, "classes": {"a": {"min_fps": 10}}})
    assert goals["a"].max_accuracy_drop == 0.5 and goals["a"].min_fps == 10


def test_pareto_front_drops_dominated_points() -> None:
    pts = [m("a", 90, 100), m("b", 89, 300), m("c", 85, 200), m("d", 80, 400)]
    assert [p.model_version for p in pareto_front(pts)] == ["a", "b", "d"]


def test_choose_most_accurate_meeting_goal() -> None:
    goals = parse_goals({"classes": {"cpu-1t": {"min_fps": 250, "max_accuracy_drop": 1.0}}})
    pts = [m("base", 90, 100), m("p50", 89.5, 260), m("p70", 89.2, 500), m("tiny", 80, 900)]
    c = choose("cpu-1t", pts, goals["cpu-1t"], "base")
    assert c.meets_goal and c.chosen.model_version == "p50"
    assert c.speedup == pytest.approx(2.6)
    assert c.accuracy_drop == pytest.approx(0.5)


def test_choose_flags_closest_when_nothing_meets() -> None:
    goals = parse_goals({"classes": {"cpu-1t": {"min_fps": 1000}}})
    pts = [m("base", 90, 100), m("p50", 89.5, 260), m("tiny", 89.4, 600)]
    c = choose("cpu-1t", pts, goals["cpu-1t"], "base")
    assert not c.meets_goal and c.chosen.model_version == "tiny"
    assert "fps 600.0 < 1000.0" in c.reason


def test_faster_class_keeps_more_accurate_model() -> None:
    goals = parse_goals({"classes": {"slow": {"min_fps": 300}, "fast": {"min_fps": 300}}})
    pts = [
        m("base", 90, 100, "slow"), m("small", 89.3, 350, "slow"),
        m("base", 90, 400, "fast"), m("small", 89.3, 1400, "fast"),
    ]  # fmt: skip
    assert choose("slow", pts, goals["slow"], "base").chosen.model_version == "small"
    assert choose("fast", pts, goals["fast"], "base").chosen.model_version == "base"


def test_planner_walks_ladders_and_stops_when_goals_met() -> None:
    goals = parse_goals({"classes": {"cpu-1t": {"min_fps": 1000}}})
    c = {"cpu-1t": choose("cpu-1t", [m("base", 90, 100)], goals["cpu-1t"], "base")}
    ladders = Ladders(prune_ratios=[0.3, 0.5], students=["resnet18"], per_round=3)
    first = plan_next_round(c, "base", set(), ladders)
    assert CandidateRequest("distill", "base", student_backbone="resnet18") in first
    assert CandidateRequest("prune", "base", prune_ratio=0.3) in first
    second = plan_next_round(c, "base", set(first), ladders, students_made={"resnet18": "s1"})
    assert CandidateRequest("prune", "base", prune_ratio=0.5) in second
    assert CandidateRequest("prune", "s1", prune_ratio=0.3) in second
    met = {"cpu-1t": choose("cpu-1t", [m("base", 90, 2000)], goals["cpu-1t"], "base")}
    assert plan_next_round(met, "base", set(), ladders) == []


def test_min_speedup_is_judged_against_the_class_baseline() -> None:
    goals = parse_goals({"classes": {"slow": {"min_speedup": 4.0, "max_accuracy_drop": 1.0}}})
    pts = [
        m("base", 60.0, 100, "slow"),
        m("p50", 59.5, 390, "slow"),  # 3.9x: too slow
        m("p50", 59.2, 420, "slow", precision="int8"),  # 4.2x, 0.8 pt drop: meets
        m("tiny", 50.0, 900, "slow"),  # fast but 10 pt drop
    ]
    c = choose("slow", pts, goals["slow"], "base")
    assert c.meets_goal and (c.chosen.model_version, c.chosen.precision) == ("p50", "int8")
    slower = choose("slow", pts[:2], goals["slow"], "base")
    assert not slower.meets_goal and "fps speedup 3.90x < 4.00x" in slower.reason


def test_planner_explores_when_asked_although_goals_are_met() -> None:
    goals = parse_goals({"classes": {"cpu-1t": {"min_fps": 10}}})
    met = {"cpu-1t": choose("cpu-1t", [m("base", 90, 2000)], goals["cpu-1t"], "base")}
    ladders = Ladders(prune_ratios=[0.5], students=["resnet18"], per_round=2)
    assert plan_next_round(met, "base", set(), ladders) == []
    explored = plan_next_round(met, "base", set(), ladders, explore=True)
    assert {r.kind for r in explored} == {"distill", "prune"}


def sm(version: str, acc: float, streams: int | None, stream_fps: float = 15.0, fps: float = 500.0):
    """A measurement with the stream scenario's result (None: the scenario did not run)."""
    return Measurement("jetson", version, "tensorrt", "int8", acc, fps, 2.0, stream_capacity=streams,
                       stream_fps=stream_fps if streams is not None else 0.0)  # fmt: skip


def test_stream_goals_are_typed_and_refused_naming_the_key() -> None:
    goals = parse_goals({"classes": {"jetson": {"min_streams": 4, "stream_fps": 15}}})
    assert goals["jetson"].min_streams == 4 and goals["jetson"].stream_fps == 15.0
    assert goals["jetson"].min_fps is None  # streams alone are a speed goal
    with pytest.raises(
        GoalError, match=r"goals\.classes\.jetson\.min_stream: unknown key; allowed: .*min_streams"
    ):
        parse_goals({"classes": {"jetson": {"min_stream": 4, "stream_fps": 15}}})
    with pytest.raises(GoalError, match=r"goals\.classes\.jetson: min_streams needs stream_fps"):
        parse_goals({"classes": {"jetson": {"min_streams": 4}}})
    with pytest.raises(GoalError, match=r"goals\.classes\.jetson: stream_fps needs min_streams"):
        parse_goals({"classes": {"jetson": {"stream_fps": 15, "min_fps": 10}}})
    with pytest.raises(GoalError, match=r"goals\.classes\.jetson\.min_streams: .*integer"):
        parse_goals({"classes": {"jetson": {"min_streams": "four", "stream_fps": 15}}})
    with pytest.raises(GoalError, match=r"goals\.classes\.jetson\.min_streams: .*greater than or equal to 1"):
        parse_goals({"classes": {"jetson": {"min_streams": 0, "stream_fps": 15}}})
    with pytest.raises(GoalError, match=r"goals\.defaults\.stream_fsp: unknown key"):
        parse_goals({"defaults": {"stream_fsp": 15}, "classes": {"jetson": {"min_fps": 1}}})


def test_choose_the_most_accurate_model_whose_stream_capacity_meets_the_goal() -> None:
    goal = parse_goals({"classes": {"jetson": {"min_streams": 4, "stream_fps": 15, "max_accuracy_drop": 5}}})[
        "jetson"
    ]
    pts = [sm("base", 90, 2), sm("p50", 89, 4), sm("p70", 88, 8), sm("tiny", 80, 16)]
    c = choose("jetson", pts, goal, "base")
    assert c.meets_goal and c.chosen.model_version == "p50" and c.chosen.stream_capacity == 4
    # a model measured at another rate, or not measured, does not count however many streams it kept
    pts = [
        sm("base", 90, 2),
        sm("other-rate", 89.9, 8, stream_fps=30),
        sm("unmeasured", 89.8, None),
        sm("p70", 88, 4),
    ]
    assert choose("jetson", pts, goal, "base").chosen.model_version == "p70"


def test_no_model_meets_the_stream_goal_and_the_reason_says_why() -> None:
    goal = parse_goals({"classes": {"jetson": {"min_streams": 8, "stream_fps": 15, "max_accuracy_drop": 5}}})[
        "jetson"
    ]
    c = choose("jetson", [sm("base", 90, 2), sm("p50", 89, 4), sm("other", 88, None)], goal, "base")
    assert not c.meets_goal and c.chosen.model_version == "p50"  # the closest: most streams
    assert "no candidate meets the goal" in c.reason and "streams 4 < 8 at 15 FPS" in c.reason
    c = choose("jetson", [sm("base", 90, 8, stream_fps=30)], goal, "base")
    assert "stream capacity measured at 30 FPS, the goal is at 15 FPS" in c.reason
    c = choose("jetson", [sm("base", 90, None)], goal, "base")
    assert "stream capacity not measured" in c.reason
