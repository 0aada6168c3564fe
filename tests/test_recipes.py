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

import shutil

import pytest
import torch

import train
from conftest import TOY, log_rows, refused
from ground.runtime import load_checkpoint
from test_resume import assert_same


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


FLAGS = TOY + ["--stage", "transformer", "--recipe", "demo", "--warmup", "2", "--log-every", "1",
               "--ckpt-every", "100", "--lr", "1e-3"]


def test_a_long_run_stopped_before_a_budgets_cooldown_and_resumed_with_that_budget_is_that_budgets_run(
        prerequisites, tmp_path, monkeypatch, capsys):
    straight, trunk, branch = tmp_path / "straight", tmp_path / "trunk", tmp_path / "branch"
    for out in (straight, trunk):
        shutil.copytree(prerequisites, out)
    assert train.main(FLAGS + ["--steps", "10", "--out", str(straight)]) == 0        # cool-down from step 8
    assert train.main(FLAGS + ["--steps", "40", "--stop-at", "8", "--out", str(trunk)]) == 0
    assert "stopped at step 8 of 40" in capsys.readouterr().out
    assert load_checkpoint(str(trunk / "transformer.state.pt"), "transformer")["step"] == 8
    assert [r["step"] for r in log_rows(trunk, "transformer")] == list(range(1, 9))
    shutil.copytree(trunk, branch)

    trainer_cls = train.stage_module("transformer").Trainer
    real_step = trainer_cls.step

    def killed_at_9(self, batch, step):
        if step == 9:
            raise KeyboardInterrupt
        return real_step(self, batch, step)

    monkeypatch.setattr(trainer_cls, "step", killed_at_9)                 # Ctrl-C in the cool-down
    assert train.main(FLAGS + ["--steps", "10", "--resume", "--out", str(branch)]) == 130
    monkeypatch.setattr(trainer_cls, "step", real_step)
    assert train.main(FLAGS + ["--steps", "10", "--resume", "--out", str(branch)]) == 0

    a = load_checkpoint(str(straight / "transformer.state.pt"), "transformer")
    b = load_checkpoint(str(branch / "transformer.state.pt"), "transformer")
    assert a["step"] == b["step"] == 10 and a["recipe"] == b["recipe"] == "demo"
    assert_same(a["trainer"], b["trainer"], "trainer")
    assert_same(a["rng"], b["rng"], "rng")
    lrs = [r["lr"] for r in log_rows(straight, "transformer")]
    assert lrs == pytest.approx([1e-3 * f for f in (0.5, 1, 1, 1, 1, 1, 1, 1, 1, 0.5)])
    rows = {r["step"]: r for r in log_rows(branch, "transformer")}        # the killed try logged step 9 too
    for r in log_rows(straight, "transformer"):
        assert {k: v for k, v in r.items() if k != "sec_per_step"} == \
               {k: v for k, v in rows[r["step"]].items() if k != "sec_per_step"}


def test_the_trunk_and_the_straight_run_differ_once_the_shorter_cools_down(prerequisites, tmp_path):
    # the counterpart of the test above: the same steps under the classroom's cosine are not branchable
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        shutil.copytree(prerequisites, out)
    flags = [f for f in FLAGS if f not in ("--recipe", "demo")]
    assert train.main(flags + ["--steps", "10", "--stop-at", "4", "--out", str(a)]) == 0
    assert train.main(flags + ["--steps", "40", "--stop-at", "4", "--out", str(b)]) == 0
    wa = load_checkpoint(str(a / "transformer.pt"), "transformer")["model"]
    wb = load_checkpoint(str(b / "transformer.pt"), "transformer")["model"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_at_ends_the_run_before_the_later_stages_and_the_bundle(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TOY + ["--stage", "all", "--steps", "3", "--stop-at", "2", "--out", str(out),
                             "--bundle", str(out / "b.pt")]) == 0
    assert load_checkpoint(str(out / "vqgan.state.pt"), "vqgan")["step"] == 2
    assert not (out / "vocoder.pt").exists() and not (out / "b.pt").exists()


def test_recipe_and_stop_at_refusals(prerequisites, tmp_path, capsys):
    refused(capsys, train.main, TOY + ["--stop-at", "0", "--out", str(tmp_path / "a")], ["--stop-at"], tmp_path / "a")
    refused(capsys, train.main, ["--data", "audiocaps", "--recipe", "demo", "--out", str(tmp_path / "b")],
            ["--recipe demo", "toy"], tmp_path / "b")
    run = tmp_path / "run"
    shutil.copytree(prerequisites, run)
    assert train.main(FLAGS + ["--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    classroom = [f for f in FLAGS if f not in ("--recipe", "demo")]
    refused(capsys, train.main, classroom + ["--steps", "4", "--resume", "--out", str(run)], ["--recipe demo", "classroom"])
