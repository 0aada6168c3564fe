"""train.py --resume.

Resume is exact: a run stopped after k steps and resumed with --resume ends with the same weights, the
same optimiser moments and the same random streams as the run that was never stopped, and logs the same
losses for the steps after k, for every stage. Compared tensor by tensor, bit for bit (same machine, same
process, fp32).

The demo recipe's schedule holds its peak until a cool-down set by the run's own --steps: a long run stopped
(--stop-at) before a shorter budget's cool-down and resumed with that budget equals the shorter run.

What would fail here: a Trainer whose state_dict leaves out a model or an optimiser, a loop that does not
restore the random stream (the VQGAN's code re-seeding draws from it), a data order that restarts at the
first batch, a learning-rate schedule that restarts at its warm-up.

It also survives the worst: a SIGKILL between two checkpoints, or while one is being written, then
--resume runs to the end with the uninterrupted run's learning rates; a damaged resume state, or one of
another stage, is refused in one sentence and left as it was.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from ground.runtime import UserError, load_checkpoint, save_checkpoint
from conftest import CLAP_RUN, TOY, log_rows, refused, transformer_run_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS, STOP = 4, 2
STAGE_FLAGS = {
    # the discriminator from step 1 and code re-seeding at every step: the optimiser of the discriminator
    # and the random stream both matter within four steps
    "vqgan": ["--vqgan.disc_start", "1", "--vqgan.dead_code_steps", "1"],
    "vocoder": ["--vocoder.disc_start", "1"],
    "clap": [],
    "transformer": [],
}


def assert_same(a, b, where="state"):
    """Equal, tensor by tensor (bit for bit), through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} and {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("stage", list(STAGE_FLAGS))
def test_a_stopped_and_resumed_run_ends_exactly_where_the_uninterrupted_one_does(
        stage, prerequisites, tmp_path, monkeypatch, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out in (whole, parts):
        shutil.copytree(prerequisites, out) if stage == "transformer" else out.mkdir()
    flags = TOY + ["--stage", stage, "--steps", str(STEPS), "--ckpt-every", str(STOP), "--log-every", "1",
                   "--lr", "1e-3", "--warmup", "1"] + STAGE_FLAGS[stage]
    assert train.main(flags + ["--out", str(whole)]) == 0

    trainer_cls = train.stage_module(stage).Trainer
    real_step = trainer_cls.step

    def stop_at(self, batch, step):
        if step == STOP:
            raise KeyboardInterrupt                                 # Ctrl-C after STOP steps (checkpoint at STOP)
        return real_step(self, batch, step)

    monkeypatch.setattr(trainer_cls, "step", stop_at)
    assert train.main(flags + ["--out", str(parts)]) == 130
    monkeypatch.setattr(trainer_cls, "step", real_step)
    assert load_checkpoint(str(parts / f"{stage}.state.pt"), stage)["step"] == STOP
    capsys.readouterr()
    assert train.main(flags + ["--out", str(parts), "--resume"]) == 0
    assert f"resuming at step {STOP}" in capsys.readouterr().out

    a = load_checkpoint(str(whole / f"{stage}.state.pt"), stage)
    b = load_checkpoint(str(parts / f"{stage}.state.pt"), stage)
    assert a["step"] == b["step"] == STEPS
    assert_same(a["trainer"], b["trainer"], "trainer")              # weights and optimiser moments
    assert_same(a["rng"], b["rng"], "rng")                          # the random streams
    assert_same(load_checkpoint(str(whole / f"{stage}.pt"), stage), load_checkpoint(str(parts / f"{stage}.pt"), stage))
    rows_whole, rows_parts = log_rows(whole, stage), log_rows(parts, stage)
    assert [r["step"] for r in rows_parts] == list(range(1, STEPS + 1))
    for w, p in zip(rows_whole[STOP:], rows_parts[STOP:]):          # the losses after the stop, exactly
        assert {k: v for k, v in w.items() if k != "sec_per_step"} == {k: v for k, v in p.items() if k != "sec_per_step"}


def test_resume_with_nothing_to_resume_says_so_and_starts_at_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TOY + ["--stage", "clap", "--steps", "1", "--resume", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"clap: nothing to resume ({out / 'clap.state.pt'} does not exist); starting at step 0" in printed
    assert load_checkpoint(str(out / "clap.state.pt"), "clap")["step"] == 1


def test_a_run_saved_before_a_config_field_existed_resumes_and_one_saved_with_another_value_is_refused(tmp_path, capsys):
    """A field the saved state lacks had its default when it was written (vqgan's l2_codes is one such)."""
    out = tmp_path / "run"
    assert train.main(TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(out)]) == 0
    state_path = out / "vqgan.state.pt"
    state = load_checkpoint(str(state_path), "vqgan")
    del state["config"]["l2_codes"]                                            # as an older train.py wrote it
    torch.save(state, state_path)
    assert train.main(TOY + ["--stage", "vqgan", "--steps", "2", "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(str(state_path), "vqgan")["step"] == 2
    capsys.readouterr()
    assert train.main(TOY + ["--stage", "vqgan", "--steps", "3", "--out", str(out), "--resume",
                             "--vqgan.l2_codes", "true"]) == 2
    assert "l2_codes" in capsys.readouterr().err
    assert load_checkpoint(str(state_path), "vqgan")["step"] == 2                # nothing lost


def test_a_transformer_run_saved_before_magnets_fields_existed_resumes_with_specmaskgits_training(
        prerequisites, tmp_path, monkeypatch, capsys):
    """transformer.pt and transformer.state.pt written before span_len, by_row, ratio_draw and context existed
    were trained as SpecMaskGIT trains (Sec. 3.2: per-token masks, Gaussian ratios, every row at once, every
    token seen): --resume continues so, with Eq. 1 (specmaskgit.masked_loss) as the step's loss, and writes
    those values back; a flag asking for MAGNeT's training on such a run is refused, the state left as it was."""
    import specmaskgit
    out = tmp_path / "run"
    shutil.copytree(prerequisites, out)
    flags = TOY + ["--stage", "transformer", "--log-every", "1", "--out", str(out)]
    assert train.main(flags + ["--steps", "1"]) == 0
    new_fields = ("span_len", "by_row", "ratio_draw", "context")

    def as_an_older_train_py_wrote_them():
        for name in ("transformer.pt", "transformer.state.pt"):
            ckpt = load_checkpoint(str(out / name), "transformer")
            for field in new_fields:
                del ckpt["config"][field]
            save_checkpoint(ckpt, str(out / name))

    as_an_older_train_py_wrote_them()
    seen, real_step = [], specmaskgit.Trainer.step

    def spy(self, batch, step):
        seen.append(dict(step=step, cfg=self.cfg, loss_fn=self.loss, batch=batch,
                         weights={k: v.clone() for k, v in self.model.state_dict().items()}))
        metrics = real_step(self, batch, step)
        seen[-1]["loss"] = metrics["loss"]
        return metrics

    monkeypatch.setattr(specmaskgit.Trainer, "step", spy)
    capsys.readouterr()
    assert train.main(flags + ["--steps", "2", "--resume"]) == 0
    assert "resuming at step 1" in capsys.readouterr().out
    specmaskgits = {"span_len": 1, "by_row": False, "ratio_draw": "gaussian", "context": -1}
    [s] = seen
    assert s["step"] == 1 and {f: getattr(s["cfg"], f) for f in new_fields} == specmaskgits
    assert s["loss_fn"] is specmaskgit.masked_loss
    model = specmaskgit.SpecMaskGIT(s["cfg"])                                  # Eq. 1 by hand: step 1's masks
    model.load_state_dict(s["weights"])
    expected, _ = specmaskgit.masked_loss(model.train(), s["batch"]["tokens"], s["batch"]["cond"],
                                          generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s["loss"], expected.detach(), rtol=1e-6, atol=1e-7)
    for name in ("transformer.pt", "transformer.state.pt"):
        config = load_checkpoint(str(out / name), "transformer")["config"]
        assert {f: config[f] for f in new_fields} == specmaskgits
    as_an_older_train_py_wrote_them()
    before = (out / "transformer.state.pt").read_bytes()
    refused(capsys, train.main, flags + ["--steps", "3", "--resume", "--transformer.by_row", "true"], ["by_row"])
    assert (out / "transformer.state.pt").read_bytes() == before


# ---------------------------------------------------------------------------------------------------
# Damaged resume states
# ---------------------------------------------------------------------------------------------------

def _damage_state(state, how):
    if how == "string step":
        state["step"] = "3"
    elif how == "huge step":
        state["step"] = 10 ** 20
    elif how == "negative step":
        state["step"] = -5
    elif how == "bad rng":
        state["rng"] = [{"cpu": torch.zeros(7, dtype=torch.uint8)}]
    elif how == "missing optimiser":
        del state["trainer"][next(k for k in state["trainer"] if "opt" in k)]
    elif how == "missing config":
        del state["config"]
    elif how == "list for the trainer":
        state["trainer"] = [1, 2]


@pytest.mark.parametrize("how", ["string step", "huge step", "negative step", "bad rng", "missing optimiser",
                                 "missing config", "list for the trainer"])
def test_a_damaged_resume_state_is_one_sentence_and_stays_as_it_was(tmp_path, capsys, how):
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    state = load_checkpoint(str(out / "clap.state.pt"), "clap")
    _damage_state(state, how)
    save_checkpoint(state, str(out / "clap.state.pt"))
    before = (out / "clap.state.pt").read_bytes()
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "3", "--resume", "--out", str(out)], ["clap.state.pt"])
    assert (out / "clap.state.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["another stage", "truncated"])
def test_train_resume_refuses_a_state_of_another_stage_or_a_damaged_one(toy_run, capsys, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    state = out / "transformer.state.pt"
    if damage == "another stage":
        shutil.copy(out / "vqgan.state.pt", state)
        words = ["vqgan checkpoint", "not a transformer one"]
    else:
        state.write_bytes(state.read_bytes()[:2000])
        words = ["transformer.state.pt", "not a readable"]
    before = state.read_bytes()
    refused(capsys, train.main, TOY + ["--stage", "transformer", "--steps", "3", "--resume", "--out", str(out)], words)
    assert state.read_bytes() == before                                         # refused, not overwritten


# ---------------------------------------------------------------------------------------------------
# SIGKILL: between two checkpoints, and while one is being written; then --resume to the end
# ---------------------------------------------------------------------------------------------------

# train.py in a child process, slowed down so that the kill lands where the test wants it:
#   slow-steps    every training step sleeps 0.1 s first: a kill after the first checkpoint lands mid-run
#   slow-save:N   the resume state of step N is written half, flushed to disk, then the writer waits (and
#                 touches SENTINEL): the kill lands inside save_checkpoint, between torch.save and the rename
SHIM = r"""
import io, os, sys, time
import torch
import specmaskgit
mode, sentinel, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "slow-steps":
    real_step = specmaskgit.Trainer.step
    def step(self, batch, s):
        time.sleep(0.1)
        return real_step(self, batch, s)
    specmaskgit.Trainer.step = step
else:
    n, real_save = int(mode.split(":")[1]), torch.save
    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("step") == n and "trainer" in obj):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        whole = buf.getvalue()
        f.write(whole[:len(whole) // 2])
        f.flush()
        os.fsync(f.fileno())
        open(sentinel, "w").close()
        time.sleep(600)
        f.write(whole[len(whole) // 2:])
    torch.save = save
import train
sys.exit(train.main(argv))
"""


def run_until_killed(mode, flags, ready, sentinel, delay=0.0):
    """Start the shimmed train.py, wait until ready() is true, wait `delay`, SIGKILL it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SHIM, mode, str(sentinel), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        why = proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "still running"
        assert ready(), f"the run never got there: {why}"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL                                  # killed, not finished


def resume_to_the_end(flags, out, s, steps, warmup, capsys):
    """--resume from step s: it says so, trains s+1 .. steps with the uninterrupted run's learning rates,
    and leaves a state at `steps` and no temporary file."""
    capsys.readouterr()
    assert train.main(flags + ["--resume"]) == 0
    assert f"resuming at step {s} " in capsys.readouterr().out
    assert load_checkpoint(os.path.join(out, "transformer.state.pt"), "transformer")["step"] == steps
    rows = log_rows(out, "transformer")[-(steps - s):]
    assert [r["step"] for r in rows] == list(range(s + 1, steps + 1))
    for r in rows:
        assert r["lr"] == pytest.approx(1e-3 * train.lr_factor(r["step"] - 1, warmup, steps), rel=1e-9)
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_sigkill_between_checkpoints_then_resume_runs_to_the_end(toy_run, tmp_path, capsys):
    out = transformer_run_from(toy_run, tmp_path / "run")
    state = os.path.join(out, "transformer.state.pt")
    flags = TOY + ["--stage", "transformer", "--steps", "30", "--ckpt-every", "5", "--log-every", "1",
                   "--lr", "1e-3", "--warmup", "4", "--out", out]
    run_until_killed("slow-steps", flags, lambda: os.path.exists(state), tmp_path / "unused", delay=0.25)
    s = load_checkpoint(state, "transformer")["step"]
    assert s % 5 == 0 and 5 <= s < 30
    assert load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")["stage"] == "transformer"
    assert log_rows(out, "transformer")[-1]["step"] > s                        # it was killed between checkpoints
    resume_to_the_end(flags, out, s, 30, 4, capsys)


def test_sigkill_while_a_checkpoint_is_written_then_resume_runs_to_the_end(toy_run, tmp_path, capsys):
    out = transformer_run_from(toy_run, tmp_path / "run")
    sentinel = tmp_path / "half_written"
    flags = TOY + ["--stage", "transformer", "--steps", "8", "--ckpt-every", "2", "--log-every", "1",
                   "--lr", "1e-3", "--warmup", "2", "--out", out]
    run_until_killed("slow-save:4", flags, sentinel.exists, sentinel)
    temporary = [n for n in os.listdir(out) if ".partial-" in n]
    assert len(temporary) == 1 and temporary[0].startswith("transformer.state.pt.partial-")   # step 4's, cut in half
    with pytest.raises(UserError):
        load_checkpoint(os.path.join(out, temporary[0]))
    assert load_checkpoint(os.path.join(out, "transformer.state.pt"), "transformer")["step"] == 2   # intact
    assert load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")["stage"] == "transformer"
    resume_to_the_end(flags, out, 2, 8, 2, capsys)


# The demo recipe (--recipe demo): its transformer's schedule can be branched (tests/test_recipes.py).

DEMO_FLAGS = TOY + ["--stage", "transformer", "--recipe", "demo", "--warmup", "2", "--log-every", "1",
                    "--ckpt-every", "100", "--lr", "1e-3"]


def test_a_long_run_stopped_before_a_budgets_cooldown_and_resumed_with_that_budget_is_that_budgets_run(
        prerequisites, tmp_path, monkeypatch, capsys):
    straight, trunk, branch = tmp_path / "straight", tmp_path / "trunk", tmp_path / "branch"
    for out in (straight, trunk):
        shutil.copytree(prerequisites, out)
    assert train.main(DEMO_FLAGS + ["--steps", "10", "--out", str(straight)]) == 0        # cool-down from step 8
    assert train.main(DEMO_FLAGS + ["--steps", "40", "--stop-at", "8", "--out", str(trunk)]) == 0
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
    assert train.main(DEMO_FLAGS + ["--steps", "10", "--resume", "--out", str(branch)]) == 130
    monkeypatch.setattr(trainer_cls, "step", real_step)
    assert train.main(DEMO_FLAGS + ["--steps", "10", "--resume", "--out", str(branch)]) == 0

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


def test_recipe_and_stop_at_refusals(prerequisites, tmp_path, capsys):
    refused(capsys, train.main, TOY + ["--stop-at", "0", "--out", str(tmp_path / "a")], ["--stop-at"], tmp_path / "a")
    refused(capsys, train.main, ["--data", "audiocaps", "--recipe", "demo", "--out", str(tmp_path / "b")],
            ["--recipe demo", "toy"], tmp_path / "b")
    run = tmp_path / "run"
    shutil.copytree(prerequisites, run)
    assert train.main(DEMO_FLAGS + ["--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    classroom = [f for f in DEMO_FLAGS if f not in ("--recipe", "demo")]
    refused(capsys, train.main, classroom + ["--steps", "4", "--resume", "--out", str(run)], ["--recipe demo", "classroom"])
