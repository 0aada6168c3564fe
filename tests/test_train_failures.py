"""train.py when a run goes wrong: a loss or weights that stop being finite, a full disk while saving.

The run stops with one sentence, the last good checkpoint stays byte for byte, no bundle is written and no
partial file is left; a resume state holding NaN weights is refused naming the weight. (What train.py
does with the files of a healthy run is tests/test_outputs.py's; a kill and --resume, tests/test_resume.py's.)
"""

import errno
import os

import pytest
import torch

from ground import runtime
import train
from ground.runtime import load_checkpoint, save_checkpoint
from conftest import CLAP_RUN, refused


# ---------------------------------------------------------------------------------------------------
# A diverging run
# ---------------------------------------------------------------------------------------------------

def poison_after(stage_step):
    """A Trainer.step that, after its real step `stage_step`, sets one weight to NaN: a run diverging there."""
    import clap
    real = clap.Trainer.step

    def step(self, batch, s):
        metrics = real(self, batch, s)
        if s == stage_step:
            with torch.no_grad():
                next(iter(self.model.parameters())).fill_(float("nan"))
        return metrics
    return step


@pytest.mark.parametrize("ckpt_every, words", [
    ("2", ["loss stopped being finite at step 4", "step 2) is kept", "no bundle", "--lr"]),   # the loss shows it first
    ("1", ["no longer finite at step 3", "step 2) is kept", "no bundle"])])                 # the weights, before saving
def test_a_diverging_run_stops_keeps_the_last_finite_checkpoint_and_writes_no_bundle(
        tmp_path, capsys, monkeypatch, ckpt_every, words):
    import clap
    out, bundle_path = tmp_path / "run", tmp_path / "bundle.pt"
    assert train.main(CLAP_RUN + ["--steps", "2", "--out", str(out)]) == 0        # a good checkpoint at step 2
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    monkeypatch.setattr(clap.Trainer, "step", poison_after(2))
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "6", "--ckpt-every", ckpt_every, "--resume",
                                            "--out", str(out), "--bundle", str(bundle_path)], words)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not bundle_path.exists() and not [n for n in os.listdir(out) if ".partial-" in n]


def test_a_huge_lr_is_refused_or_caught_and_nan_weights_never_load(tmp_path, capsys):
    """--lr at its bound trains (finite here, or stopped by the check above); a file with NaN weights is
    refused in one sentence naming the file and the weight, by the resume and by every loader."""
    out = tmp_path / "run"
    rc = train.main(CLAP_RUN + ["--steps", "3", "--lr", "0.99", "--warmup", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 or (rc == 2 and "stopped being finite" in err)
    state = load_checkpoint(str(out / "clap.state.pt"), "clap")
    assert all(torch.isfinite(t).all() for t in state["trainer"]["model"].values() if t.is_floating_point())
    name = next(k for k, t in state["trainer"]["model"].items() if t.is_floating_point())
    state["trainer"]["model"][name] = torch.full_like(state["trainer"]["model"][name], float("nan"))
    save_checkpoint(state, str(out / "clap.state.pt"))
    refused(capsys, train.main, CLAP_RUN + ["--steps", "4", "--resume", "--out", str(out)],
            ["clap.state.pt", f"trainer.model.{name}", "NaN"])


# ---------------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------------

class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does (torch.save turns this into its
    zip writer's RuntimeError "unexpected pos")."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if self.room < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_a_full_disk_inside_torch_save_is_one_sentence_and_old_checkpoints_stay(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    real_save = torch.save
    monkeypatch.setattr(runtime.torch, "save", lambda obj, f, *a, **k: real_save(obj, FullDisk(f, 4096)))
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "2", "--resume", "--out", str(out)],
            ["clap.pt", "No space left on device"])
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_a_full_disk_while_saving_is_one_sentence_and_the_old_checkpoint_stays(tmp_path, capsys, monkeypatch):
    from ground import runtime
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")               # written, then the disk was full at the flush

    monkeypatch.setattr(runtime.torch, "save", full_disk)
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "2", "--resume", "--out", str(out)],
            ["clap.pt", "No space left on device", "unchanged"])
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(out) if ".partial-" in n]
