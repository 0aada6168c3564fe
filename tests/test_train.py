"""train.py: every stage end to end on tiny models, resume after an interruption or a kill, the AudioCaps
path on a stand-in folder, atomic checkpoints, and one-sentence errors for bad flags.

Every run here uses models a few thousand parameters large, 16384-sample clips and a handful of steps:
what is checked is the machinery (files, logs, schedules, data order, errors), not what is learnt.
"""

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from data import toyworld
from ground import runtime
import pipeline
import specmaskgit
import train
from training import edges as training_edges
from ground.runtime import UserError, load_checkpoint, save_checkpoint
from conftest import TINY, TOY, log_rows, transformer_run_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_of(capsys, argv) -> str:
    """train.main with bad input: exit code 2 and one line on stderr, starting "error:"."""
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """`--stage all` on the toy world: two steps per stage, a log row per step, and a bundle.
    (This module's own: it stands in for conftest.py's toy_run, which stops before the vocoder.)"""
    out = tmp_path_factory.mktemp("toy_run")
    assert train.main(TOY + ["--stage", "all", "--steps", "2", "--log-every", "1", "--out", str(out),
                             "--bundle", str(out / "bundle.pt")]) == 0
    return out


# ---------------------------------------------------------------------------------------------------
# Every stage, end to end
# ---------------------------------------------------------------------------------------------------

def test_stage_all_writes_every_checkpoint_and_a_bundle_sample_py_loads(toy_run):
    for stage in train.STAGES:
        assert load_checkpoint(str(toy_run / f"{stage}.pt"), stage)["stage"] == stage
        assert load_checkpoint(str(toy_run / f"{stage}.state.pt"), stage)["step"] == 2
    pipe = pipeline.load_pipeline(str(toy_run / "bundle.pt"), verbose=False)
    assert pipe.vocoder is None and pipe.num_samples == 16384          # a 2-step vocoder loses to Griffin-Lim
    assert (pipe.transformer.cfg.rows, pipe.transformer.cfg.cols) == (5, 16384 // 4096)
    wav, _, _, _ = pipeline.text_to_audio(pipe, ["rain on a roof"], steps=2, verbose=False)
    assert wav.shape == (1, 16384) and torch.isfinite(wav).all()


def test_tokens_8_frames_wide_give_the_transformer_twice_the_columns_end_to_end(tmp_path):
    out = tmp_path / "narrow"
    assert train.main(TOY + ["--stage", "all", "--steps", "1", "--vqgan.patch_frames", "8", "--out", str(out),
                             "--bundle", str(out / "bundle.pt")]) == 0
    pipe = pipeline.load_pipeline(str(out / "bundle.pt"), verbose=False)
    assert pipe.vq.cfg.patch_frames == 8 and pipeline.column_samples(pipe.vq) == 2048
    assert (pipe.transformer.cfg.rows, pipe.transformer.cfg.cols) == (5, 16384 // 2048)   # read off the token cache
    assert torch.load(out / "transformer_cache.pt", weights_only=True)["tokens"].shape[1:] == (5, 8)


def test_the_vocoder_is_measured_against_griffin_lim_on_held_out_clips(toy_run):
    """Both reconstruct from the 0-8 kHz input mel; the L1 is measured on HiFiGAN's loss mel (vocoder.loss_mel)."""
    from data import datasets as data
    import mel
    import vocoder
    heldout = load_checkpoint(str(toy_run / "vocoder.pt"), "vocoder")["heldout_mel_l1"]
    val = data.make_dataset("toy", "val", num_samples=16384, n=training_edges.HELDOUT_CLIPS)
    wav = torch.stack([val[i]["wav"] for i in range(training_edges.HELDOUT_CLIPS)])
    measure = vocoder.loss_mel
    gl = (measure(mel.griffin_lim(mel.mel_spectrogram(wav))[:, :16384]) - measure(wav)).abs().mean().item()
    assert heldout["clips"] == 16 and heldout["griffin_lim"] == pytest.approx(gl, rel=1e-5)
    assert heldout["vocoder"] > heldout["griffin_lim"]                    # two steps of training: a loser


def test_the_bundle_keeps_a_vocoder_only_when_it_beats_griffin_lim(toy_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    args = train.parse_args(TOY + ["--out", str(run), "--bundle", str(run / "b.pt")])
    for vocoder_l1, kept in ((0.5, False), (0.05, True)):
        ckpt = load_checkpoint(str(run / "vocoder.pt"), "vocoder")
        ckpt["heldout_mel_l1"] = {"vocoder": vocoder_l1, "griffin_lim": 0.12, "clips": 16}
        save_checkpoint(ckpt, str(run / "vocoder.pt"))
        training_edges.write_bundle(args)
        assert ("vocoder" in load_checkpoint(str(run / "b.pt"), "bundle")) == kept
        assert ("the vocoder is left out" in capsys.readouterr().out) != kept


def test_each_stage_logs_one_json_row_per_log_every_steps_with_a_finite_loss(toy_run):
    for stage in train.STAGES:
        rows = log_rows(toy_run, stage)
        assert [r["step"] for r in rows] == [1, 2]
        assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in rows)


# ---------------------------------------------------------------------------------------------------
# Resume: same data order, same learning rate, no restart
# ---------------------------------------------------------------------------------------------------

def test_batch_indices_are_a_deterministic_permutation_per_epoch_and_ranks_are_disjoint():
    a = [train.batch_indices(s, 2, 8, seed=3) for s in range(4)]          # one epoch: 4 batches of 2
    assert a == [train.batch_indices(s, 2, 8, seed=3) for s in range(4)]
    assert sorted(sum(a, [])) == list(range(8))
    r0, r1 = train.batch_indices(5, 2, 16, 0, rank=0, world=2), train.batch_indices(5, 2, 16, 0, rank=1, world=2)
    assert len(r0) == len(r1) == 2 and not set(r0) & set(r1)


def test_lr_factor_warms_up_linearly_then_decays_by_a_cosine():
    assert [train.lr_factor(s, 4, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert train.lr_factor(4, 4, 100) == 1.0
    assert train.lr_factor(52, 4, 100) == pytest.approx(0.5)             # half-way through the decay
    assert train.lr_factor(100, 4, 100) == pytest.approx(0.0, abs=1e-12)


def test_resume_continues_the_same_run_with_the_same_lr_and_batches(toy_run, tmp_path, monkeypatch, capsys):
    seen = {}                                                               # run -> {step: the batch's tokens}
    original_step = specmaskgit.Trainer.step
    interrupt_at = {"step": None}

    def recording_step(self, batch, step):
        if step == interrupt_at["step"]:
            raise KeyboardInterrupt                                         # Ctrl-C in the middle of a run
        seen.setdefault(run, {})[step] = batch["tokens"].clone()
        return original_step(self, batch, step)

    monkeypatch.setattr(specmaskgit.Trainer, "step", recording_step)
    flags = TOY + ["--stage", "transformer", "--steps", "6", "--warmup", "2", "--lr", "1e-3", "--log-every", "1",
                   "--ckpt-every", "2"]
    whole, parts = transformer_run_from(toy_run, tmp_path / "whole"), transformer_run_from(toy_run, tmp_path / "parts")
    run = "whole"
    assert train.main(flags + ["--out", whole]) == 0
    run, interrupt_at["step"] = "parts", 4                                  # stop after 4 steps (checkpoint at 4)
    assert train.main(flags + ["--out", parts]) == 130
    assert load_checkpoint(os.path.join(parts, "transformer.state.pt"), "transformer")["step"] == 4
    run, interrupt_at["step"] = "resumed", None
    capsys.readouterr()
    assert train.main(flags + ["--out", parts, "--resume"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out

    assert sorted(seen["resumed"]) == [4, 5]                                # no step is trained twice
    rows_whole, rows_parts = log_rows(whole, "transformer"), log_rows(parts, "transformer")
    assert [r["step"] for r in rows_parts] == [1, 2, 3, 4, 5, 6]
    for r, w in zip(rows_parts, rows_whole):
        assert r["lr"] == pytest.approx(1e-3 * train.lr_factor(r["step"] - 1, 2, 6), rel=1e-9)
        assert r["lr"] == pytest.approx(w["lr"], rel=1e-9)
    for step in (4, 5):                                                     # the same clips at the same step
        assert torch.equal(seen["resumed"][step], seen["whole"][step])


# ---------------------------------------------------------------------------------------------------
# A kill: mid-step (a real SIGKILL) and mid-save (torch.save failing half-way)
# ---------------------------------------------------------------------------------------------------

def test_a_killed_run_leaves_a_loadable_checkpoint_and_resumes_from_it(toy_run, tmp_path, capsys):
    out = transformer_run_from(toy_run, tmp_path / "run")
    flags = TOY + ["--stage", "transformer", "--log-every", "1", "--ckpt-every", "1", "--out", out]
    proc = subprocess.Popen([sys.executable, "train.py", *flags, "--steps", "100000"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = os.path.join(out, "transformer.state.pt")
    try:
        deadline = time.time() + 180
        while not os.path.exists(state_path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert os.path.exists(state_path), "the run never wrote its first checkpoint"
        time.sleep(0.3)                                                     # somewhere in a later step or save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(state_path, "transformer")
    load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")
    s = state["step"]
    assert s >= 1
    capsys.readouterr()
    assert train.main(flags + ["--resume", "--steps", str(s + 2)]) == 0
    assert f"resuming at step {s}" in capsys.readouterr().out
    assert [r["step"] for r in log_rows(out, "transformer")][-2:] == [s + 1, s + 2]
    assert not [n for n in os.listdir(out) if ".partial-" in n]           # a save cut short is cleaned up


@pytest.mark.parametrize("error, expected", [(OSError(28, "No space left on device"), UserError),
                                             (RuntimeError("killed while pickling"), RuntimeError)])
def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch, error, expected):
    path = str(tmp_path / "vqgan.pt")
    save_checkpoint({"stage": "vqgan", "config": {}, "model": {}, "step": 1}, path)
    real_save = torch.save

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")                              # some bytes made it to disk ...
        raise error                                                         # ... then the disk filled up

    monkeypatch.setattr(runtime.torch, "save", failing_save)
    with pytest.raises(expected):
        save_checkpoint({"stage": "vqgan", "config": {}, "model": {}, "step": 2}, path)
    monkeypatch.setattr(runtime.torch, "save", real_save)
    assert load_checkpoint(path, "vqgan")["step"] == 1
    assert os.listdir(tmp_path) == ["vqgan.pt"]                             # no temporary file left behind


# ---------------------------------------------------------------------------------------------------
# AudioCaps, on a stand-in folder shaped like the real one
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def audiocaps_root(tmp_path):
    """train.csv with the AudioCaps columns; clips named the ways download tools name them; one missing."""
    root = tmp_path / "audiocaps"
    (root / "audio" / "train").mkdir(parents=True)
    rows = [("101", "abcdefghijk", "30", "a dog barks twice"),              # saved as {audiocap_id}.wav
            ("102", "Ab_cd-efgh1", "0", "rain falls on a roof"),            # Y{ytid}.wav
            ("103", "zyxwvutsrqp", "12.5", "a bell rings"),                 # {ytid}_{start}.wav
            ("104", "missingclip", "0", "a video that is gone")]            # not downloaded
    with open(root / "train.csv", "w") as f:
        f.write("audiocap_id,youtube_id,start_time,caption\n")
        f.writelines(f'{a},{y},{s},"{c}"\n' for a, y, s, c in rows)
    rng = np.random.default_rng(0)
    for name in ("101.wav", "YAb_cd-efgh1.wav", "zyxwvutsrqp_12.5.wav"):
        t = np.arange(16000) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(16000)
        sf.write(root / "audio" / "train" / name, np.stack([x, x], 1).astype(np.float32), 16000)   # stereo, 16 kHz
    return root


def test_audiocaps_runs_every_stage_on_a_stand_in_folder(audiocaps_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", "audiocaps", "--root", str(audiocaps_root), "--clap", "tiny", "--preset", "tiny",
            "--stage", "all", "--steps", "1", "--out", str(out), "--bundle", str(out / "bundle.pt")] + TINY
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 rows usable" in printed and "3 training clips" in printed
    assert "not compared with Griffin-Lim" in printed and "val.csv" in printed   # no val split: kept, and said
    assert "a real AudioCaps epoch (49,838 clips, 24,919 steps)" in printed   # batch 2: the full train.csv's steps
    pipe = pipeline.load_pipeline(str(out / "bundle.pt"), verbose=False)
    assert pipe.num_samples == 16384 and pipe.vocoder is not None
    assert "dog" in pipe.clap.vocab and "bell" in pipe.clap.vocab          # TinyCLAP learnt AudioCaps' words


def test_audiocaps_with_laion_clap_missing_says_to_install_it(audiocaps_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)                   # as on a machine without it
    err = error_of(capsys, ["--data", "audiocaps", "--root", str(audiocaps_root), "--clap", "laion",
                            "--preset", "tiny", "--out", str(tmp_path / "run")] + TINY)
    assert "laion-clap" in err
    assert not os.path.exists(tmp_path / "run" / "vqgan.pt")              # failed before any training


# ---------------------------------------------------------------------------------------------------
# Bad flags: one sentence, exit code 2
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], "--steps"),
    (["--num-samples", "1000"], "--num-samples"),
    (["--lr", "5"], "--lr"),
    (["--workers", "-1"], "--workers"),
    (["--vqgan.n_codes", "abc", "--stage", "vqgan"], "--vqgan.n_codes"),
    (["--data", "/no/such/folder", "--clap", "tiny"], "/no/such/folder"),
])
def test_bad_flags_are_one_sentence_and_exit_2(capsys, tmp_path, flags, words):
    assert words in error_of(capsys, ["--out", str(tmp_path / "run")] + flags)


def test_a_flag_argparse_rejects_is_one_sentence_and_exit_2(capsys):
    assert "--steps" in error_of(capsys, ["--steps", "many"])                # a wrong type: argparse's own check


def test_an_output_folder_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert "file.txt" in error_of(capsys, TOY + ["--out", str(tmp_path / "file.txt" / "run"), "--steps", "1"])


def test_resuming_with_another_config_or_preset_names_the_mismatch(toy_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(toy_run, out)
    flags = TOY + ["--stage", "transformer", "--resume", "--steps", "3", "--out", out]
    err = error_of(capsys, flags + ["--transformer.width", "48"])       # the last of a repeated flag wins
    assert "width" in err and "48" in err and "32" in err
    err = error_of(capsys, flags + ["--preset", "full"])
    assert "tiny" in err and "full" in err


# ---------------------------------------------------------------------------------------------------
# The loop itself, with a Trainer of one weight: what it reads, when, and which schedule it follows
# ---------------------------------------------------------------------------------------------------

class OneWeightTrainer:
    """The Trainer protocol (train.py) at its smallest; its metrics are read-counting stand-ins for tensors
    on a device, each noting how many steps had run when the loop read it back."""

    @dataclasses.dataclass
    class Config:
        size: int = 3

    def __init__(self, own_schedule=False):
        self.cfg, self.step_modules, self.start_step = self.Config(), {}, 0
        self.w = torch.nn.Parameter(torch.ones(3))
        self.optimizers = [torch.optim.SGD([self.w], lr=0.1)]
        self.lrs, self.reads = [], []
        if own_schedule:
            self.lr_factor = lambda step, epoch_steps: 0.5 ** (step // epoch_steps)

    def step(self, batch, step):
        self.lrs.append(self.optimizers[0].param_groups[0]["lr"])
        loss = (self.w ** 2).sum()
        self.optimizers[0].zero_grad()
        loss.backward()
        self.optimizers[0].step()
        trainer = self

        class Lazy:
            def __float__(self):
                trainer.reads.append(len(trainer.lrs))
                return loss.item()
        return {"loss": Lazy()}

    def state_dict(self):
        return {"w": self.w.detach().clone(), "optimizer": self.optimizers[0].state_dict()}

    def checkpoint(self):
        return {"stage": "toy", "config": dataclasses.asdict(self.cfg), "model": {"w": self.w.detach().clone()}}


def run_loop(trainer, tmp_path, steps=4, warmup=2, log_every=2):
    os.makedirs(tmp_path, exist_ok=True)
    args = train.parse_args(["--out", str(tmp_path), "--log-every", str(log_every), "--ckpt-every", "100"])
    train.train_stage("toy", trainer, ((s, None) for s in range(steps + 1)), args, steps, warmup, epoch_steps=2)
    return log_rows(tmp_path, "toy")


def test_the_loop_reads_metrics_back_only_every_log_every_steps(tmp_path):
    trainer = OneWeightTrainer()
    rows = run_loop(trainer, tmp_path, steps=4, log_every=2)
    assert trainer.reads and set(trainer.reads) == {2, 4}                  # never between two log lines
    assert [r["step"] for r in rows] == [2, 4] and all(isinstance(r["loss"], float) for r in rows)


def test_the_loop_follows_a_trainers_own_schedule_instead_of_warm_up_and_cosine(tmp_path):
    plain, own = OneWeightTrainer(), OneWeightTrainer(own_schedule=True)
    run_loop(plain, tmp_path / "plain", steps=4, warmup=2)
    run_loop(own, tmp_path / "own", steps=4, warmup=2)
    assert plain.lrs == pytest.approx([0.1 * train.lr_factor(s, 2, 4) for s in range(4)])
    assert own.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])               # x 0.5 per epoch of 2 steps


def test_the_full_presets_learning_rates_follow_their_papers():
    full = train.parse_args(["--data", "audiocaps", "--preset", "full"])
    assert train.stage_hparams("vqgan", full)[3] == pytest.approx(4.5e-6 * 8)          # Taming x batch 8
    assert train.stage_hparams("transformer", full)[3] == pytest.approx(1e-3 * 48 / 256)   # MAE, Sec. 4
    assert train.stage_hparams("transformer", full, world=4)[3] == pytest.approx(1e-3 * 4 * 48 / 256)
    assert train.stage_hparams("vqgan", full, world=4)[3] == pytest.approx(4.5e-6 * 4 * 8)          # x global batch
    assert train.stage_hparams("vqgan", train.parse_args(["--preset", "tiny"]))[3] == 1e-3   # measured on the toy


def test_a_run_on_two_processes_gives_its_optimisers_the_lr_of_the_global_batch(toy_run, tmp_path, monkeypatch):
    """Under torchrun each process steps on its own batch and the gradients are averaged: the step is that of
    the global batch (processes x --batch-size), and so is the lr of the full preset's rules (Taming's 4.5e-6 x
    batch for the VQGAN, MAE's 1e-3 x batch / 256 for the transformer). Checked on the optimisers train.py
    builds, world 2 against world 1: setup_distributed says 2 processes, the DDP wrapper and the cache's
    all-gather are left out (one process here), and the run stops where the loop would start."""
    built = {}

    def stop_before_the_loop(stage, trainer, *args, **kwargs):
        built[stage, world] = trainer
        raise KeyboardInterrupt

    real_cache = train.build_cache
    monkeypatch.setattr(train, "train_stage", stop_before_the_loop)
    monkeypatch.setattr(train, "build_cache", lambda dataset, args, device, rank=0, world=1: real_cache(dataset, args, device))
    monkeypatch.setattr(training_edges, "wrap_ddp", lambda trainer, device, rank, world: None)
    batch = int(TOY[TOY.index("--batch-size") + 1])
    for world in (1, 2):
        monkeypatch.setattr(training_edges, "setup_distributed", lambda device: (0, world, device))
        for stage in ("vqgan", "transformer"):
            out = transformer_run_from(toy_run, tmp_path / f"{stage}_{world}")
            assert train.main(TOY + ["--preset", "full", "--vqgan.norm_groups", "4", "--stage", stage,
                                     "--steps", "1", "--out", out]) == 130
    for world in (1, 2):
        rule = {"vqgan": 4.5e-6 * batch * world, "transformer": 1e-3 * batch * world / 256}
        for stage, lr in rule.items():
            groups = [g for opt in built[stage, world].optimizers for g in opt.param_groups]
            assert len(groups) >= 2 and all(g["lr"] == pytest.approx(lr, rel=1e-12) for g in groups), (stage, world)


def test_clips_load_in_worker_processes_by_default_only_on_a_gpu(tmp_path):
    """On a GPU, clips read one by one in the main process starve it; on a CPU, workers compete with the
    training for the same cores; the toy world's clips are cached in memory."""
    (tmp_path / "a.wav").write_bytes(b"")                               # parse_args only needs a folder
    assert train.parse_args(["--data", str(tmp_path), "--device", "cuda"]).workers == min(8, training_edges.MAX_WORKERS)
    assert train.parse_args(["--data", str(tmp_path), "--device", "cpu"]).workers == 0
    assert train.parse_args(["--data", "toy", "--device", "cuda"]).workers == 0
    assert train.parse_args(["--data", str(tmp_path), "--device", "cuda", "--workers", "1"]).workers == 1


def test_fp16_training_is_refused_in_one_sentence_before_anything_trains(tmp_path, capsys):
    """fp16 gradients underflow without loss scaling, which this loop does not do: refuse, write nothing."""
    assert train.main(TOY + ["--dtype", "fp16", "--stage", "vqgan", "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "fp16" in err and "loss scaling" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "r" / "vqgan.pt")


def test_the_tiny_preset_trains_in_fp32_unless_asked_otherwise():
    """The toy recipe gives the same model on every CPU kind: bf16 is never picked for it by itself."""
    args = train.parse_args(["--data", "toy", "--device", "cpu"])
    assert train.training_dtype(args, "cpu", verbose=False) == torch.float32
    args = train.parse_args(["--data", "toy", "--device", "cpu", "--dtype", "bf16"])
    assert train.training_dtype(args, "cpu", verbose=False) == torch.bfloat16


def test_the_transformer_and_vqgan_steps_hand_back_tensors_not_host_numbers():
    """A .item() per metric per step makes a GPU wait for the host every step; train.py reads the
    metrics as tensors at each log line instead."""
    import vqgan
    g = torch.Generator().manual_seed(0)
    vq_cfg = dataclasses.replace(vqgan.PRESETS["tiny"], disc_start=0)                 # the GAN path too
    vq_metrics = vqgan.Trainer(vq_cfg).step({"wav": 0.1 * torch.randn(2, 16384, generator=g)}, step=0)
    tr_cfg = dataclasses.replace(specmaskgit.PRESETS["tiny"], n_layers=1, width=32, n_heads=2, mlp=64)
    batch = {"tokens": torch.randint(0, 256, (2, 5, 16), generator=g), "cond": torch.randn(2, 512, generator=g)}
    tr_metrics = specmaskgit.Trainer(tr_cfg).step(batch, step=0)
    for metrics in (vq_metrics, tr_metrics):
        assert {"loss"} <= set(metrics)
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values()), metrics


# ---------------------------------------------------------------------------------------------------
# Fine-tuning (--init-from), validation during training (--eval-every), the VQGAN's constant lr
# ---------------------------------------------------------------------------------------------------

def test_init_from_carries_the_weights_and_not_the_optimiser(toy_run, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train, "train_stage", lambda stage, trainer, *a, **k: seen.setdefault(stage, trainer))
    source = str(toy_run / "transformer.pt")
    assert train.main(TOY + ["--stage", "transformer", "--init-from", source, "--out", str(tmp_path / "ft"),
                             "--steps", "2"]) == 0
    trainer, weights = seen["transformer"], load_checkpoint(source, "transformer")["model"]
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())
    # the source run holds AdamW moments and a decayed lr; the fine-tuning run starts with none at step 0
    assert load_checkpoint(str(toy_run / "transformer.state.pt"))["trainer"]["optimizer"]["state"]
    assert trainer.start_step == 0 and len(trainer.optimizers[0].state) == 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)   # the tiny preset's fresh peak lr
    assert training_edges.same_weights(load_checkpoint(str(tmp_path / "ft" / "vqgan.pt"), "vqgan"),
                              load_checkpoint(str(toy_run / "vqgan.pt"), "vqgan"))    # its tokenizer came along


def test_init_from_with_resume_continues_the_runs_own_weights_and_leaves_the_source_aside(toy_run, tmp_path, capsys):
    """A fine-tuning run stopped after its first checkpoint and resumed with the same --init-from ends where the
    uninterrupted one does: the source's weights start it at step 0 only, never again over a resumed state."""
    source = str(toy_run / "transformer.pt")
    flags = TOY + ["--stage", "transformer", "--init-from", source, "--steps", "4", "--ckpt-every", "2", "--log-every", "1"]
    assert train.main(flags + ["--out", str(tmp_path / "whole")]) == 0
    stopped = tmp_path / "stopped"
    with pytest.MonkeyPatch.context() as m:                                   # stopped by Ctrl-C after step 2's checkpoint
        real = training_edges.save_state

        def save_then_stop(trainer, step, *a, **k):
            real(trainer, step, *a, **k)
            if step == 2:
                raise KeyboardInterrupt
        m.setattr(training_edges, "save_state", save_then_stop)
        assert train.main(flags + ["--out", str(stopped)]) == 130
    assert load_checkpoint(str(stopped / "transformer.state.pt"))["step"] == 2
    capsys.readouterr()
    assert train.main(flags + ["--out", str(stopped), "--resume"]) == 0
    assert "--init-from" in capsys.readouterr().out                           # it says the source is not used
    whole = load_checkpoint(str(tmp_path / "whole" / "transformer.pt"), "transformer")["model"]
    resumed = load_checkpoint(str(stopped / "transformer.pt"), "transformer")["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_held_out_evaluation_leaves_the_global_random_stream_as_it_found_it(toy_run, tmp_path):
    """--eval-every's evaluation runs between steps: the global stream it may draw from is restored, so a run
    with evaluations draws the same numbers afterwards (and --resume replays them) as one without."""
    out = tmp_path / "eval"
    shutil.copytree(toy_run, out)
    args = train.parse_args(TOY + ["--stage", "transformer", "--out", str(out), "--eval-every", "1", "--eval-clips", "3"])
    saved = load_checkpoint(str(out / "transformer.pt"), "transformer")
    trainer = specmaskgit.Trainer(runtime.config_from_dict(specmaskgit.Config, saved["config"]))
    trainer.model.load_state_dict(saved["model"])
    evaluate = training_edges.heldout_evaluator(args, "cpu", trainer)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    evaluate(0)
    assert torch.equal(torch.get_rng_state(), before)


def test_init_from_refuses_another_tokenizer_and_other_stages(toy_run, tmp_path, capsys):
    out = tmp_path / "ft"
    os.makedirs(out)
    vq = load_checkpoint(str(toy_run / "vqgan.pt"), "vqgan")
    vq["model"] = {k: v + 1 for k, v in vq["model"].items()}
    save_checkpoint(vq, str(out / "vqgan.pt"))
    err = error_of(capsys, TOY + ["--stage", "transformer", "--init-from", str(toy_run / "transformer.pt"),
                                  "--out", str(out), "--steps", "1"])
    assert "another vqgan" in err
    err = error_of(capsys, TOY + ["--stage", "all", "--init-from", str(toy_run / "transformer.pt"), "--out", str(out)])
    assert "--stage transformer" in err


def fads_by_hand(toy_run, out, sets, seed=0):
    """The FAD of the toy run's transformer (evaluate.py's, with --eval-every's sampler seed: the run's --seed,
    0 by default), generated from the captions of each (split, toy_mix) set in `sets` and scored against that
    set's clips; 3 clips each."""
    from formats import clap_format
    from formats import hifigan_format
    from evaluation import metrics
    from data import toyworld
    import vocoder
    import vqgan
    model = runtime.build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config,
                                load_checkpoint(str(toy_run / "transformer.pt"), "transformer"), "transformer")
    cond = clap_format.load_clap("tiny", str(out / "clap.pt"))
    vq = runtime.build_model(vqgan.VQGAN, vqgan.Config, load_checkpoint(str(out / "vqgan.pt"), "vqgan"), "vqgan")
    voc = hifigan_format.load_vocoder(str(out / "vocoder.pt"))
    fads = []
    for split, toy_mix in sets:
        d = toyworld.ToyDataset(split, n=3, num_samples=16384, p_mix=toy_mix)
        real, captions = torch.stack([d[i]["wav"] for i in range(3)]), [d[i]["caption"] for i in range(3)]
        with torch.inference_mode():
            tokens = specmaskgit.generate(model, cond.embed_text(captions).float(), seed=seed)
            wav = vocoder.vocode(voc, mel.denormalize(vq.decode(tokens).float()),
                                 runtime.native_dtype("cpu", verbose=False))[:, :16384]
            fads.append(metrics.frechet_distance(cond.embed_audio(wav).float(), cond.embed_audio(real).float()))
    return fads


def test_eval_every_logs_held_out_fad_computed_against_the_val_clips(toy_run, tmp_path):
    out = tmp_path / "ft"
    assert train.main(TOY + ["--stage", "transformer", "--init-from", str(toy_run / "transformer.pt"), "--out", str(out),
                             "--steps", "2", "--eval-every", "1", "--eval-clips", "3"]) == 0
    rows = [r for r in log_rows(out, "transformer") if "eval_fad" in r]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["eval_clips"] == 3 for r in rows)
    # Step 0 is the source's weights: redo its evaluation by hand against the val clips, and against train clips.
    right, wrong = fads_by_hand(toy_run, out, [("val", toyworld.P_MIX), ("train", toyworld.P_MIX)])
    assert rows[0]["eval_fad"] == pytest.approx(right, rel=1e-4) and rows[0]["eval_toy_mix"] == toyworld.P_MIX
    assert abs(rows[0]["eval_fad"] - wrong) > 1e-3 * right


def test_eval_toy_mix_scores_the_curve_on_another_world_than_the_training_one(toy_run, tmp_path):
    out = tmp_path / "shifted"
    assert train.main(TOY + ["--stage", "transformer", "--init-from", str(toy_run / "transformer.pt"), "--out", str(out),
                             "--steps", "1", "--eval-every", "1", "--eval-clips", "3", "--eval-toy-mix", "1"]) == 0
    rows = [r for r in log_rows(out, "transformer") if "eval_fad" in r]
    shifted, training_world = fads_by_hand(toy_run, out, [("val", 1.0), ("val", toyworld.P_MIX)])
    assert rows[0]["eval_toy_mix"] == 1.0 and rows[0]["eval_fad"] == pytest.approx(shifted, rel=1e-4)
    assert abs(shifted - training_world) > 1e-3 * shifted


def test_the_held_out_curve_samples_its_clips_with_the_runs_seed(toy_run, tmp_path):
    # --seed 1: step 0 (the source's weights) logs the FAD of clips sampled with seed 1, redone by hand, and not
    # seed 0's (the sampler's seed is what changes; the val clips and the weights stay).
    out = tmp_path / "seed1"
    assert train.main(TOY + ["--stage", "transformer", "--init-from", str(toy_run / "transformer.pt"), "--out", str(out),
                             "--steps", "1", "--eval-every", "1", "--eval-clips", "3", "--seed", "1"]) == 0
    step0 = next(r for r in log_rows(out, "transformer") if "eval_fad" in r and r["step"] == 0)
    (seed1,), (seed0,) = (fads_by_hand(toy_run, out, [("val", toyworld.P_MIX)], seed=s) for s in (1, 0))
    assert step0["eval_fad"] == pytest.approx(seed1, rel=1e-4)
    assert abs(step0["eval_fad"] - seed0) > 1e-3 * seed1


def test_the_full_vqgan_keeps_a_constant_lr_and_the_tiny_one_its_warm_up_and_cosine(tmp_path):
    for preset, expected in (("full", [0.1] * 4), ("tiny", [0.1 * train.lr_factor(s, 2, 4) for s in range(4)])):
        trainer = OneWeightTrainer()
        args = train.parse_args(["--out", str(tmp_path), "--preset", preset, "--log-every", "2", "--ckpt-every", "100"])
        train.train_stage("vqgan", trainer, ((s, None) for s in range(5)), args, 4, 2, epoch_steps=2)
        assert trainer.lrs == pytest.approx(expected)
    assert train.stage_hparams("vqgan", train.parse_args(["--data", "audiocaps", "--preset", "full"]))[2] == 0
