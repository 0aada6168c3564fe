"""train.py's two recipes of the toy world (--recipe classroom | demo), the demo's branchable schedule and
--stop-at.

The demo recipe's transformer holds its peak lr until the last fifth of its steps and then cools down in a
straight line; so a run of N steps is, up to its cool-down, the same run as one of any longer N. These tests
check the schedule by hand, and that a long run stopped (--stop-at) before a shorter budget's cool-down,
copied and resumed with that budget's --steps, ends bit for bit where the shorter run trained from the
start ends, even when killed once more on the way: how RESULTS.md's scale curve gets its points, and
--resume continuing the demo recipe exactly.

What would fail here: a cool-down whose start depends on anything but the run's own --steps, a stop that
saves no checkpoint or trains one step too many, a resume that restarts the schedule, or a recipe whose
defaults do not reach the stages.
"""

import pytest

import train
from conftest import TOY
from ground.runtime import load_checkpoint


def test_the_wsd_schedule_by_hand():
    # 100 steps: warm-up over 4, the peak until step 80, then (100 - s) / 20 down to 0
    assert [train.lr_factor(s, 4, 100, "wsd") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [train.lr_factor(s, 4, 100, "wsd") for s in (4, 50, 79, 80)] == [1.0] * 4
    assert [train.lr_factor(s, 4, 100, "wsd") for s in (81, 90, 99)] == pytest.approx([0.95, 0.5, 0.05])
    # before its own cool-down, a longer run's lr is the shorter one's, step by step
    assert [train.lr_factor(s, 4, 1000, "wsd") for s in range(80)] == [train.lr_factor(s, 4, 100, "wsd") for s in range(80)]
    # the cosine of the classroom recipe is not so: it already decays at step 50
    assert train.lr_factor(50, 4, 100) < train.lr_factor(50, 4, 1000) < 1.0


def test_the_recipes_set_their_stage_defaults_and_flags_still_win():
    classroom, demo = train.parse_args(["--data", "toy"]), train.parse_args(["--data", "toy", "--recipe", "demo"])
    assert train.stage_hparams("transformer", classroom) == (2400, 32, 100, 1e-3)
    assert train.stage_hparams("transformer", demo)[:2] == (train.RECIPES["demo"]["stages"]["transformer"]["steps"], 32)
    assert train.stage_defaults("transformer", demo)["schedule"] == "wsd"
    assert "schedule" not in train.stage_defaults("transformer", classroom)
    assert train.stage_config("vqgan", classroom).patch_frames == 16
    assert train.stage_config("vqgan", demo).patch_frames == 8
    flagged = train.parse_args(["--data", "toy", "--recipe", "demo", "--vqgan.patch_frames", "4", "--steps", "7"])
    assert train.stage_config("vqgan", flagged).patch_frames == 4
    assert train.stage_hparams("transformer", flagged)[0] == 7
    assert train.stage_hparams("vqgan", demo) == train.stage_hparams("vqgan", classroom)   # the recipe changes the transformer's


def test_stop_at_ends_the_run_before_the_later_stages_and_the_bundle(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TOY + ["--stage", "all", "--steps", "3", "--stop-at", "2", "--out", str(out),
                             "--bundle", str(out / "b.pt")]) == 0
    assert load_checkpoint(str(out / "vqgan.state.pt"), "vqgan")["step"] == 2
    assert not (out / "vocoder.pt").exists() and not (out / "b.pt").exists()
