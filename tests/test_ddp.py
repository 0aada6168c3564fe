"""Two processes under torchrun (gloo, on the CPU), on the transformer stage of a tiny toy run:

- the two ranks train on disjoint clips (batch_indices gives each its slice of the global batch);
- after the first step, both hold the same gradient, and it equals the gradient a single process computes
  for the whole global batch (the mean of the two ranks' losses, each with its rank's masks), clipped the
  same way: DistributedDataParallel's all-reduce is exactly that average;
- only rank 0 writes files (rank 1 would fail if it opened anything in --out for writing);
- every rank waits for rank 0's checkpoints before reading them, even from a slow disk, so all of them
  train the transformer on one token cache, which each tokenised a share of; when rank 0 refuses to
  write (weights no longer finite), every rank stops with its sentence;
- the cache is keyed by the CLAP checkpoint too: a retrained TinyCLAP rebuilds it.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import specmaskgit
import train
from training import edges as training_edges
from ground.runtime import load_checkpoint, weights_hash
from conftest import SMALL, TOY, log_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# train.py under torchrun, with a record of the first step (batch indices, weights before, gradient
# after) per rank, and a rank 1 that may not write anything into --out.
SHIM = r"""
import builtins, os, sys
import torch
import specmaskgit, train
from ground import runtime
from training import edges as training_edges
dump, argv = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
out = os.path.abspath(argv[argv.index("--out") + 1])
record = {"indices": {}}
real_indices = train.batch_indices
def batch_indices(step, batch_size, n_items, seed, rank_=0, world=1):
    idx = real_indices(step, batch_size, n_items, seed, rank_, world)
    record["indices"].setdefault(step, idx)
    return idx
train.batch_indices = batch_indices
real_step = specmaskgit.Trainer.step
def step(self, batch, s):
    if s == 0:
        record["before"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        record["batch"] = batch
    metrics = real_step(self, batch, s)
    if s == 0:
        record["grad"] = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        torch.save(record, os.path.join(dump, f"rank{rank}.pt"))
    return metrics
specmaskgit.Trainer.step = step
if rank != 0:
    real_open = builtins.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(out):
            raise RuntimeError(f"rank {rank} wrote {file}")
        return real_open(file, mode, *args, **kwargs)
    builtins.open = guarded_open
    def refuse(obj, path):
        raise RuntimeError(f"rank {rank} saved {path}")
    runtime.save_checkpoint = training_edges.save_checkpoint = train.save_checkpoint = refuse
sys.exit(train.main(argv))
"""


def test_two_processes_see_disjoint_data_share_the_whole_batch_gradient_and_only_rank_0_writes(prerequisites, tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    shutil.copytree(prerequisites, out)
    dump.mkdir()
    (tmp_path / "shim.py").write_text(SHIM)
    flags = TOY + ["--stage", "transformer", "--steps", "2", "--ckpt-every", "1", "--log-every", "1", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "shim.py"), str(dump), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # disjoint clips, together the global batch of 2 x 2
    i0, i1 = r0["indices"][0], r1["indices"][0]
    assert len(i0) == len(i1) == 2 and not set(i0) & set(i1)
    assert sorted(i0 + i1) == sorted(train.batch_indices(0, 4, 8, seed=0))

    # the same weights before, the same gradient after, and it is the whole batch's
    for k in r0["before"]:
        assert torch.equal(r0["before"][k], r1["before"][k])
    assert r0["grad"].keys() == r1["grad"].keys()
    for k in r0["grad"]:
        torch.testing.assert_close(r0["grad"][k], r1["grad"][k], rtol=0, atol=0)
    cfg = specmaskgit.Config(**{**load_checkpoint(str(out / "transformer.pt"), "transformer")["config"]})
    model = specmaskgit.SpecMaskGIT(cfg)
    model.load_state_dict(r0["before"])
    model.train()
    losses = [specmaskgit.masked_loss(model, r["batch"]["tokens"], r["batch"]["cond"],
                                      generator=torch.Generator().manual_seed(rank))[0]   # step 0: seed = rank
              for rank, r in enumerate((r0, r1))]
    (sum(losses) / 2).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == r0["grad"].keys()
    for k in grads:
        torch.testing.assert_close(r0["grad"][k], grads[k], rtol=1e-4, atol=1e-6)

    # rank 0 wrote the run's files; the state holds both processes' random streams
    state = load_checkpoint(str(out / "transformer.state.pt"), "transformer")
    assert state["step"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])


# train.py under torchrun, recording the device of every tensor handed to a collective (each must be on the
# training device, the one its backend serves: NCCL reduces only CUDA tensors, gloo here host ones).
COLLECTIVES_SHIM = r"""
import json, os, sys
import torch
import torch.distributed as dist
import train
dump, argv = sys.argv[1], sys.argv[2:]
seen = []
def spy(name):
    real = getattr(dist, name)
    def collective(tensor, *args, **kwargs):
        seen.append([name, str(tensor.device)])
        return real(tensor, *args, **kwargs)
    return collective
for name in ("all_reduce", "broadcast"):
    setattr(dist, name, spy(name))
code = train.main(argv)
with open(os.path.join(dump, f"collectives{os.environ['RANK']}.json"), "w") as f:
    json.dump(seen, f)
sys.exit(code)
"""


def test_two_processes_train_every_stage_and_write_a_bundle_that_samples(tmp_path):
    """`--stage all` under torchrun: every Trainer under DistributedDataParallel (describe, the divergence
    check, save_state, the VQGAN's code re-seeding), then a bundle that loads and samples a clip."""
    import mel
    import pipeline
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    (tmp_path / "shim.py").write_text(COLLECTIVES_SHIM)
    flags = TOY + ["--stage", "all", "--steps", "2", "--log-every", "1", "--out", str(out),
                   "--bundle", str(out / "bundle.pt")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "shim.py"), str(dump), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in train.STAGES:
        assert load_checkpoint(str(out / f"{stage}.state.pt"), stage)["step"] == 2
    for rank in (0, 1):
        seen = json.loads((dump / f"collectives{rank}.json").read_text())
        # the divergence flag after every logged step of the four stages, the VQGAN's pick counts and codes
        assert sum(name == "all_reduce" for name, _ in seen) >= 2 * 4 and ("broadcast", "cpu") in map(tuple, seen)
        assert {device for _, device in seen} == {"cpu"}
    pipe = pipeline.load_pipeline(str(out / "bundle.pt"), device="cpu", dtype="fp32", verbose=False)
    wav, _, _, _ = pipeline.text_to_audio(pipe, ["a dog barking"], verbose=False)
    assert wav.shape == (1, 16384) and pipe.num_samples == 16384 and torch.isfinite(wav).all()
    assert wav.abs().max() > 0


class Collective(Exception):
    pass


def test_the_divergence_flag_goes_to_the_collective_on_the_training_device(monkeypatch, tmp_path):
    """NCCL reduces only CUDA tensors: the flag must be made on the device the run trains on, not on the host.
    "meta" stands in for a GPU here (no CPU tensor is on it); the spy stops at the collective."""
    seen = []

    def all_reduce(tensor, *args, **kwargs):
        seen.append(tensor.device)
        raise Collective
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    for device in ("meta", "cpu"):
        with pytest.raises(Collective):
            training_edges.stop_unless_finite("vqgan", [(0, {"loss": torch.tensor(1.0)})], str(tmp_path), world=2, device=device)
    assert seen == [torch.device("meta"), torch.device("cpu")]


def test_a_group_that_maps_devices_as_nccl_does_refuses_a_host_flag_and_gloo_takes_one(tmp_path):
    """The failure torchrun met on GPUs, reproduced on a CPU: a group made for "cuda:gloo" serves CUDA tensors
    only, as NCCL does, so a flag on the host has no backend there. With the flag on the device that the
    group serves (here a "cpu:gloo" group and a CPU run), the check runs and stops a diverged run."""
    import torch.distributed as dist
    from ground.runtime import UserError
    losses_ok, losses_nan = [(0, {"loss": torch.tensor(1.0)})], [(0, {"loss": torch.tensor(float("nan"))})]
    for backend in ("cuda:gloo", "cpu:gloo"):
        store = dist.FileStore(str(tmp_path / f"store-{backend.replace(':', '-')}"), 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
        try:
            if backend == "cuda:gloo":
                with pytest.raises(RuntimeError, match="device type cpu"):
                    training_edges.stop_unless_finite("vqgan", losses_ok, str(tmp_path), world=2, device="cpu")
            else:
                training_edges.stop_unless_finite("vqgan", losses_ok, str(tmp_path), world=2, device="cpu")
                with pytest.raises(UserError, match="stopped being finite at step 1"):
                    training_edges.stop_unless_finite("vqgan", losses_nan, str(tmp_path), world=2, device="cpu")
        finally:
            dist.destroy_process_group()


# train.py under torchrun on a slow disk: rank 0 publishes each checkpoint 2 s after writing it, as a slow
# or networked file system does. Every rank records the token cache it trains the transformer on, and the
# clips it tokenised for it.
SLOW_DISK_SHIM = r"""
import os, sys, time
import torch
import train
argv = sys.argv[1:]
rank = int(os.environ["RANK"])
out = argv[argv.index("--out") + 1]
if rank == 0:
    real_replace = os.replace
    def slow_replace(src, dst, *args, **kwargs):
        time.sleep(2)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = slow_replace
real_build_cache = train.build_cache
def build_cache(dataset, *args, **kwargs):
    seen, kind = [], type(dataset)
    real_getitem = kind.__getitem__
    def getitem(self, i):
        seen.append(i)
        return real_getitem(self, i)
    kind.__getitem__ = getitem
    try:
        cache = real_build_cache(dataset, *args, **kwargs)
    finally:
        kind.__getitem__ = real_getitem
    torch.save({**cache, "tokenised": seen}, os.path.join(out, f"cache_rank{rank}.pt"))
    return cache
train.build_cache = build_cache
sys.exit(train.main(argv))
"""


def test_on_a_slow_disk_every_rank_waits_for_rank_0s_checkpoints_and_trains_on_one_token_cache(tmp_path):
    """Each rank reads vqgan.pt and clap.pt only once rank 0 has published them: the ranks' caches are
    the same bit for bit, keyed by both checkpoints, and each rank tokenised its own half of the clips."""
    out = tmp_path / "run"
    (tmp_path / "shim.py").write_text(SLOW_DISK_SHIM)
    flags = TOY + ["--stage", "all", "--steps", "2", "--log-every", "1", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "shim.py"), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"cache_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["key"] == r1["key"]
    assert torch.equal(r0["tokens"], r1["tokens"]) and torch.equal(r0["cond"], r1["cond"])
    assert r0["tokens"].shape[0] == r0["cond"].shape[0] == 8
    clap_ckpt = load_checkpoint(str(out / "clap.pt"), "clap")
    assert f"clap.pt {os.stat(out / 'clap.pt').st_mtime_ns}-{weights_hash(clap_ckpt)}" in r0["key"]
    assert r0["tokenised"] == [0, 1, 2, 3] and r1["tokenised"] == [4, 5, 6, 7]       # contiguous halves
    written = load_checkpoint(str(out / "transformer_cache.pt"), "cache")
    assert written["key"] == r0["key"] and torch.equal(written["tokens"], r0["tokens"])


# Two processes call save_state on weights that hold a NaN: rank 0 refuses to write them, and each rank
# writes the sentence it stopped with to a file of its own (two processes' prints can share one line).
REFUSAL_SHIM = r"""
import argparse, os, sys
import torch
import torch.distributed as dist
from training import edges as training_edges
from ground.runtime import UserError
dist.init_process_group("gloo")
rank = dist.get_rank()
class Diverged:
    def checkpoint(self):
        return {"stage": "vqgan", "model": {"w": torch.tensor([float("nan")])}}
    def state_dict(self):
        return {}
args = argparse.Namespace(out=sys.argv[1], seed=0, preset="tiny")
try:
    training_edges.save_state(Diverged(), 3, args, "vqgan", rank, 2)
except UserError as e:
    with open(os.path.join(sys.argv[1], f"said_rank{rank}.txt"), "w") as f:
        f.write(f"rank {rank} stopped: {e}")
dist.destroy_process_group()
"""


def test_when_rank_0_refuses_to_save_every_rank_stops_with_its_sentence(tmp_path):
    """No rank waits for a checkpoint that rank 0 will never write: all raise rank 0's UserError."""
    (tmp_path / "shim.py").write_text(REFUSAL_SHIM)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "shim.py"), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [(tmp_path / f"said_rank{r}.txt").read_text() for r in (0, 1) if (tmp_path / f"said_rank{r}.txt").exists()]
    assert len(said) == 2 and said[0].startswith("rank 0") and said[1].startswith("rank 1")
    assert said[0].split(" stopped: ")[1] == said[1].split(" stopped: ")[1]
    assert "'model.w' is no longer finite at step 3" in said[0] and not os.path.exists(tmp_path / "vqgan.pt")


def test_a_retrained_clap_rebuilds_the_token_cache(tmp_path, capsys):
    """The cache holds CLAP's embeddings: another clap.pt gives another key, so they are computed again."""
    import argparse
    import clap
    import mel
    import vqgan
    from ground.runtime import save_checkpoint
    torch.manual_seed(0)
    save_checkpoint(vqgan.Trainer(vqgan.PRESETS["tiny"]).checkpoint(), str(tmp_path / "vqgan.pt"))
    wavs = torch.randn(3, 16 * mel.HOP) * 0.1
    dataset = [{"wav": w, "caption": "a dog barks", "kind": i} for i, w in enumerate(wavs)]
    args = argparse.Namespace(out=str(tmp_path), clap="tiny", num_samples=16 * mel.HOP, workers=0)
    cfg = clap.Config(audio_channels=(4, 8, 8, 8), audio_hidden=16, text_width=16, text_layers=1)
    caches = []
    for seed in (0, 0, 1):                           # trained once, read again, then retrained
        torch.manual_seed(seed)
        if seed == 1 or not caches:
            save_checkpoint(clap.Trainer(cfg, vocab=["a", "barks", "dog"]).checkpoint(), str(tmp_path / "clap.pt"))
        capsys.readouterr()
        caches.append(train.build_cache(dataset, args, "cpu"))
        caches[-1]["read"] = "reading the token cache" in capsys.readouterr().out
    first, again, retrained = caches
    assert again["read"] and again["key"] == first["key"]
    assert not retrained["read"] and retrained["key"] != first["key"]
    assert torch.equal(retrained["tokens"], first["tokens"]) and not torch.equal(retrained["cond"], first["cond"])


def masks_of_steps(tmp_path, rank, world, steps=5):
    """The masks a Trainer on SMALL draws at steps 0 .. steps-1, after edges.wrap_ddp gave it rank `rank` of
    `world` processes (world > 1 runs in a one-process gloo group: the wrapper and its all-reduce work alike).
    Read off the model's input by a hook, so whatever draws them is seen."""
    import torch.distributed as dist
    torch.manual_seed(0)
    trainer = specmaskgit.Trainer(SMALL)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    g = torch.Generator().manual_seed(7)
    batch = {"tokens": torch.randint(0, SMALL.n_codes, (4, SMALL.rows, SMALL.cols), generator=g),
             "cond": torch.randn(4, SMALL.cond_dim, generator=g)}
    if world > 1:
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / f"store-{rank}"), 1), rank=0, world_size=1)
    try:
        training_edges.wrap_ddp(trainer, "cpu", rank, world)
        for s in range(steps):
            trainer.step(batch, s)
    finally:
        if world > 1:
            dist.destroy_process_group()
    assert len(seen) == steps
    return seen


def test_every_rank_draws_its_own_masks_at_every_step_from_the_seed_step_times_world_plus_rank(tmp_path):
    """Under torchrun each process must learn from other masks than the others at every step (else both ranks
    hide the same positions of their clips: the global batch holds half as many masks), and the masks must be a
    function of the step alone (--resume replays them). wrap_ddp gives rank r of 2 the seeds 2 s + r; one
    process keeps s."""
    n = SMALL.rows * SMALL.cols

    def by_hand(seed):
        return specmaskgit.sample_mask(4, n, SMALL, torch.Generator().manual_seed(seed)).view(4, SMALL.rows, SMALL.cols)

    rank0, rank1 = masks_of_steps(tmp_path, 0, 2), masks_of_steps(tmp_path, 1, 2)
    alone = masks_of_steps(tmp_path, 0, 1)
    for s in range(5):
        assert not torch.equal(rank0[s], rank1[s]), f"step {s}: both ranks drew one mask"
        assert torch.equal(rank0[s], by_hand(2 * s)) and torch.equal(rank1[s], by_hand(2 * s + 1)), f"step {s}"
        assert torch.equal(alone[s], by_hand(s)), f"step {s}"
    # no seed serves twice: rank 1's stream is not rank 0's one step on
    assert all(not torch.equal(rank1[s], rank0[s + 1]) for s in range(4))


# train.py under torchrun, stopped as Ctrl-C stops it when STOP_AT is set: every rank is interrupted before
# step STOP_AT (after the checkpoint of the step before), and the shim then exits 0 (torchrun would report
# the interrupted workers as failed).
STOP_SHIM = r"""
import os, sys
import specmaskgit, train
stop = int(os.environ.get("STOP_AT", "-1"))
real_step = specmaskgit.Trainer.step
def step(self, batch, s):
    if s == stop:
        raise KeyboardInterrupt
    return real_step(self, batch, s)
specmaskgit.Trainer.step = step
code = train.main(sys.argv[1:])
sys.exit(0 if stop >= 0 and code == 130 else code)
"""


def test_two_processes_stopped_and_resumed_end_exactly_where_the_uninterrupted_run_does(prerequisites, tmp_path):
    """torchrun on 2 processes, the transformer stage: 3 steps in one go, against the same run interrupted
    after step 1 and resumed with --resume. Each rank's masks and batches must continue where they were
    (step s, rank r: seed 2 s + r and the rank's slice of the global batch), and each rank's random stream
    is restored from its own entry of the state: the final weights, optimiser moments and random streams
    are the same bit for bit, and so are the losses logged after the stop. The --preset full runs leave
    the lr to its rule, 1e-3 x the global batch (2 processes x 2) / 256 (Sec. 4), which the log shows."""
    from test_resume import assert_same
    steps, stop, warmup = 3, 1, 2
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out in (whole, parts):
        shutil.copytree(prerequisites, out)
    (tmp_path / "shim.py").write_text(STOP_SHIM)
    flags = TOY + ["--stage", "transformer", "--preset", "full", "--steps", str(steps), "--warmup", str(warmup),
                   "--ckpt-every", str(stop), "--log-every", "1"]

    def torchrun(out, *more, stop_at=-1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, STOP_AT=str(stop_at))
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(tmp_path / "shim.py"), *flags, "--out", str(out), *more], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    torchrun(whole)
    torchrun(parts, stop_at=stop)
    assert load_checkpoint(str(parts / "transformer.state.pt"), "transformer")["step"] == stop
    assert [r["step"] for r in log_rows(parts, "transformer")] == list(range(1, stop + 1))
    assert f"resuming at step {stop}" in torchrun(parts, "--resume")

    a = load_checkpoint(str(whole / "transformer.state.pt"), "transformer")
    b = load_checkpoint(str(parts / "transformer.state.pt"), "transformer")
    assert a["step"] == b["step"] == steps and len(a["rng"]) == len(b["rng"]) == 2
    assert not torch.equal(a["rng"][0]["cpu"], a["rng"][1]["cpu"])        # two streams, one per rank
    assert_same(a["trainer"], b["trainer"], "trainer")                      # weights and optimiser moments
    assert_same(a["rng"], b["rng"], "rng")                                  # rank r's stream where rank r's was
    rows_whole, rows_parts = log_rows(whole, "transformer"), log_rows(parts, "transformer")
    assert [r["step"] for r in rows_whole] == [r["step"] for r in rows_parts] == list(range(1, steps + 1))
    for w, p in zip(rows_whole, rows_parts):                                # every step's loss, exactly
        assert {k: v for k, v in w.items() if k != "sec_per_step"} == {k: v for k, v in p.items() if k != "sec_per_step"}
        assert w["lr"] == pytest.approx(1e-3 * 2 * 2 / 256 * train.lr_factor(w["step"] - 1, warmup, steps), rel=1e-9)
    assert len({r["loss"] for r in rows_whole}) == steps                    # the steps did differ
