"""Every stage's Trainer.step leaves the device alone between log lines: no value is read back to the host
(a scalar read, a boolean test of a tensor, a nonzero, a boolean-mask index, whose output size only the
device knows) and every copy to the device is queued (non_blocking), for ten tiny steps of each Trainer.

On a GPU each such read waits for every kernel queued before it; train.py reads the metrics once per
--log-every steps (test_train checks that loop). Here the steps run on the CPU, and a TorchDispatchMode
records the name of every operation they dispatch. The one read allowed is PyTorch's own: a CPU
optimiser keeps its step counter on the host (also on a GPU, unless fused) and reads it there.
"""

import dataclasses
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import clap
import specmaskgit
import vocoder
import vqgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "equal"}
INDEX = {"index", "index_put", "index_put_", "_index_put_impl_"}


class HostReads(TorchDispatchMode):
    """Records (op name, data pointer of its first argument) for every op that makes the host wait."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in READS:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.found.append((name, first.data_ptr() if first is not None else None))
        elif name in INDEX:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.found.append((f"{name} with a boolean mask", None))
        return func(*args, **(kwargs or {}))


def optimiser_counters(trainer) -> set:
    return {state["step"].data_ptr() for opt in trainer.optimizers for state in opt.state.values()
            if isinstance(state.get("step"), torch.Tensor)}


class ToCalls:
    """Every Tensor.to call in the project's files that names a device: (file:line, non_blocking)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if (os.path.dirname(caller.co_filename) == ROOT
                    and ("device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args))):
                where = f"{os.path.basename(caller.co_filename)}:{sys._getframe(1).f_lineno}"
                self.calls.append((where, kwargs.get("non_blocking", False)))
            return real(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, "to", to)


def audio_batch(step):
    g = torch.Generator().manual_seed(step)
    captions = ["a dog barking", "rain on a roof", "a dog barking", "a church bell"]
    return {"wav": 0.1 * torch.randn(4, 16384, generator=g), "caption": captions,
            "kind": torch.tensor([0, 1, 0, 2])}


def trainers():
    """One tiny Trainer per stage, with every branch of its step switched on from step 0 (the discriminators,
    the VQGAN's code re-seeding, CFG dropout), and a batch maker."""
    vq = dataclasses.replace(vqgan.PRESETS["tiny"], base_channels=4, z_channels=16, n_codes=32, code_dim=16,
                             disc_channels=4, disc_start=0, dead_code_steps=1)
    voc = dataclasses.replace(vocoder.PRESETS["tiny"], upsample_initial_channel=16, mpd_width=2, msd_width=16,
                              disc_start=0)
    cl = dataclasses.replace(clap.PRESETS["tiny"], audio_channels=(4, 8, 8, 8), audio_hidden=16, text_width=16)
    tr = dataclasses.replace(specmaskgit.PRESETS["tiny"], n_layers=1, width=32, n_heads=2, mlp=64, n_codes=32,
                             cols=4, cond_dim=16)

    def token_batch(step):
        g = torch.Generator().manual_seed(step)
        return {"tokens": torch.randint(0, 32, (4, 5, 4), generator=g), "cond": torch.randn(4, 16, generator=g)}
    return {
        "vqgan": (lambda: vqgan.Trainer(vq), audio_batch),
        "vocoder": (lambda: vocoder.Trainer(voc), audio_batch),
        "clap": (lambda: clap.Trainer(cl, vocab=clap.build_vocab(audio_batch(0)["caption"])), audio_batch),
        "transformer": (lambda: specmaskgit.Trainer(tr), token_batch),
    }


@pytest.mark.parametrize("stage", ["vqgan", "vocoder", "clap", "transformer"])
def test_ten_steps_read_nothing_back_and_copy_without_blocking(stage, monkeypatch):
    torch.manual_seed(0)
    make, batch = trainers()[stage]
    trainer = make()
    batches = [batch(s) for s in range(10)]
    copies = ToCalls(monkeypatch)
    with HostReads() as mode:
        metrics = [trainer.step(b, s) for s, b in enumerate(batches)]
    counters = optimiser_counters(trainer)
    waits = [name for name, ptr in mode.found if not (name == "_local_scalar_dense" and ptr in counters)]
    assert waits == [], f"{stage}: {len(waits)} host reads in 10 steps: {sorted(set(waits))}"
    blocking = sorted({where for where, queued in copies.calls if not queued})
    assert copies.calls and not blocking, f"{stage}: copies to the device that block the host at {blocking}"
    # the metrics are 0-d tensors (or numbers), read once per log line by train.py
    for m in metrics:
        assert all(isinstance(v, (float, int)) or (isinstance(v, torch.Tensor) and v.dim() == 0) for v in m.values())
        assert all(torch.isfinite(torch.as_tensor(v)) for k, v in m.items() if "loss" in k)


def test_the_recorder_sees_the_reads_it_is_meant_to_catch():
    x = torch.randn(6)
    with HostReads() as mode:
        x.sum().item()
        bool(x[0] > 0)
        x[x > 0].sum()
        (x > 0).nonzero()
        x.sum() * 2                                                 # not a read
    names = [n for n, _ in mode.found]
    assert "_local_scalar_dense" in names and "is_nonzero" in names or names.count("_local_scalar_dense") >= 2
    assert any("boolean mask" in n for n in names) and "nonzero" in names
