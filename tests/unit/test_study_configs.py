"""apps.study builds each stage's typed config itself: the study's settings, plus the user's extra flags."""

from __future__ import annotations

import pytest

from apps.study import stage_configs
from training import backdoor, safety
from training.errors import UserError

BACKDOOR = [backdoor.ModelArgs, backdoor.BackdoorArgs, backdoor.TrainArgs, backdoor.RunArgs]
SAFETY = [safety.SafetyModelArgs, safety.SafetyBackdoorArgs, safety.SafetyArgs, safety.SafetyRunArgs]


def test_study_settings_and_user_flags_meet_in_typed_configs():
    m, b, t, r = stage_configs(BACKDOOR, "--steps 7 --seed 3", "training.backdoor", "--backdoor_args",
                               preset="tiny", backdoor="code_vuln", out="runs/x", overwrite=True)
    assert (m.preset, b.backdoor, r.out, r.overwrite) == ("tiny", "code_vuln", "runs/x", True)
    assert (t.steps, t.seed) == (7, 3)  # the user's extra flags reached the stage
    assert b.variant == backdoor.BackdoorArgs().variant  # anything else keeps the stage's default
    *_, s, _ = stage_configs(SAFETY, "", "training.safety", "--safety_args", method="rl", steps=20)
    assert (s.method, s.steps) == ("rl", 20)


def test_a_flag_the_study_sets_itself_is_one_clear_error():
    with pytest.raises(UserError, match="--safety_args sets --method"):
        stage_configs(SAFETY, "--method sft", "training.safety", "--safety_args", method="rl")


def test_flags_the_stage_does_not_know_are_one_clear_error(capsys):
    with pytest.raises(UserError, match="--backdoor_args: flags '--no_such_flag 1' are not valid"):
        stage_configs(BACKDOOR, "--no_such_flag 1", "training.backdoor", "--backdoor_args", preset="tiny")
    assert "no_such_flag" in capsys.readouterr().err
