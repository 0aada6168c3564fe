"""Two processes under torchrun (gloo, on the CPU), on the transformer stage of a tiny toy run:

- the two ranks train on disjoint clips (batch_indices gives each its slice of the global batch);
- after the first step, both hold the same gradient, and it equals the gradient a single process computes
  for the whole global batch (the mean of the two ranks' losses, each with its rank's masks), clipped the
  same way: DistributedDataParallel's all-reduce is exactly that average;
- only rank 0 writes files (rank 1 would fail if it opened anything in --out for writing).
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
from ground.runtime import load_checkpoint
from test_resume import prerequisites  # noqa: F401  (a VQGAN, a TinyCLAP and the token cache)
from test_train import TOY

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
    runtime.save_checkpoint = training_edges.save_checkpoint = refuse
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
