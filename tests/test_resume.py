"""Resume is exact: a run stopped after k steps and resumed with --resume ends with the same weights, the
same optimiser moments and the same random streams as the run that was never stopped, and logs the same
losses for the steps after k, for every stage. Compared tensor by tensor, bit for bit (same machine, same
process, fp32).

What would fail here: a Trainer whose state_dict leaves out a model or an optimiser, a loop that does not
restore the random stream (the VQGAN's code re-seeding draws from it), a data order that restarts at the
first batch, a learning-rate schedule that restarts at its warm-up.
"""

import os
import shutil

import pytest
import torch

import train
from ground.runtime import load_checkpoint
from test_train import TOY, log_rows

STEPS, STOP = 4, 2
STAGE_FLAGS = {
    # the discriminator from step 1 and code re-seeding at every step: the optimiser of the discriminator
    # and the random stream both matter within four steps
    "vqgan": ["--vqgan.disc_start", "1", "--vqgan.dead_code_steps", "1"],
    "vocoder": ["--vocoder.disc_start", "1"],
    "clap": [],
    "transformer": [],
}


@pytest.fixture(scope="module")
def prerequisites(tmp_path_factory):
    """A VQGAN, a TinyCLAP and the token cache, for the transformer stage (one step each)."""
    out = tmp_path_factory.mktemp("prerequisites")
    for stage in ("vqgan", "clap", "transformer"):
        assert train.main(TOY + ["--stage", stage, "--steps", "1", "--out", str(out)]) == 0
    for name in ("transformer.pt", "transformer.state.pt", "transformer.log.jsonl"):
        os.remove(out / name)
    return out


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
