"""The promotion policy on its own: gates, decisions and what is written down (no registry)."""

from types import SimpleNamespace

from tasks.lib.promotion import decide, decision_markdown, decision_tags, gate, gate_line, gates

P = SimpleNamespace(min_accuracy=0.6, min_macro_f1=0.55, min_improvement=0.0, max_recall_drop=0.05, split="test")


def score(acc, f1, recall):
    return {"version": "2", "accuracy": acc, "macro_f1": f1, "recall": recall}


def test_a_gate_passes_at_its_threshold_and_fails_below_it():
    assert gate("min_accuracy", 0.6, 0.6, ">=")["passed"]
    assert not gate("min_accuracy", 0.5999, 0.6, ">=")["passed"]
    assert gate("max_recall_drop", 0.05, 0.05, "<=")["passed"]
    assert not gate("max_recall_drop", 0.0501, 0.05, "<=")["passed"]
    failed = gate("min_macro_f1", 0.3333, 0.9, ">=")
    assert gate_line(failed) == "min_macro_f1: 0.3333 >= 0.9 -> FAIL, short by 0.5667"


def test_the_first_champion_needs_only_the_absolute_gates():
    assert [g["gate"] for g in gates(score(0.7, 0.6, {"a": 0.5}), None, P)] == ["min_accuracy", "min_macro_f1"]


def test_relative_gates_compare_with_the_champion_and_name_the_worst_class():
    ours = score(0.8, 0.70, {"a": 0.9, "b": 0.5})
    theirs = score(0.8, 0.69, {"a": 0.9, "b": 0.6})
    by_name = {g["gate"]: g for g in gates(ours, theirs, P)}
    assert by_name["min_improvement"]["passed"] and by_name["min_improvement"]["value"] == 0.01
    drop = by_name["max_recall_drop"]
    assert not drop["passed"] and drop["where"] == "class 'b'" and drop["value"] == 0.1


def test_decide_promotes_only_when_every_gate_passes():
    good = decide("2", "1", score(0.8, 0.7, {"a": 0.8}), score(0.7, 0.6, {"a": 0.8}), P, 100, "md5")
    assert good["decision"] == "promoted" and good["reason"] == "every gate passed"
    worse = decide("2", "1", score(0.8, 0.5, {"a": 0.8}), score(0.7, 0.6, {"a": 0.8}), P, 100, "md5")
    assert worse["decision"] == "rejected"
    assert "min_macro_f1" in worse["reason"] and "min_improvement" in worse["reason"]


def test_a_version_that_cannot_be_loaded_is_rejected_with_the_reason():
    broken = decide("2", None, {"version": "2", "error": "OSError: weights missing"}, None, P, 100, "md5")
    assert broken["decision"] == "rejected" and "cannot be loaded: OSError: weights missing" in broken["reason"]
    champion_broken = decide("2", "1", score(0.9, 0.9, {"a": 1.0}), {"version": "1", "error": "x"}, P, 1, "md5")
    assert champion_broken["decision"] == "rejected" and "--rollback" in champion_broken["reason"]


def test_the_decision_is_recorded_as_tags_and_markdown():
    d = decide("2", None, score(0.5, 0.5, {"a": 0.5}), None, P, 1234, "abc.dir")
    tags = decision_tags(d)
    assert tags["promotion.decision"] == "rejected" and tags["promotion.champion_at_evaluation"] == "none"
    assert tags["promotion.data_hash"] == "abc.dir"
    md = decision_markdown("text-classifier", d)
    assert "**rejected**" in md and "1,234 rows" in md and "| min_accuracy" in md
