"""Every stage's Trainer.step leaves the device alone between log lines: no value is read back to the host
(a scalar read, a boolean test of a tensor, a nonzero, a boolean-mask index, whose output size only the
device knows) and every copy to the device is queued (non_blocking), for ten tiny steps of each Trainer.

On a GPU each such read waits for every kernel queued before it; train.py reads the metrics once per
--log-every steps (test_train checks that loop). Here the steps run on the CPU, and a TorchDispatchMode
records the name of every operation they dispatch. The one read allowed is PyTorch's own: a CPU
optimiser keeps its step counter on the host (also on a GPU, unless fused) and reads it there.

The samplers (specmaskgit.generate, magnet.generate) are held to what a GPU needs as well: no op that CUDA
has no kernel for, and at most one read per step; magnet.span_mask builds its mask where it is asked to.
"""

import dataclasses
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import clap
import magnet
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


# ---------------------------------------------------------------------------------------------------
# The samplers: the same recorder, and a refusal of the kernels CUDA does not have.
# ---------------------------------------------------------------------------------------------------

# Ops whose CUDA kernels dispatch over numbers but not Bool (ScatterGatherKernel.cu: AT_DISPATCH_ALL_TYPES_AND2
# of Half and BFloat16); the CPU has Bool kernels for them, so a CPU run alone never notices.
NO_CUDA_BOOL = {"scatter_reduce", "scatter_reduce_", "scatter_add", "scatter_add_", "index_reduce", "index_reduce_"}


class CudaSampler(HostReads):
    """HostReads that also refuses the ops CUDA has no kernel for."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in NO_CUDA_BOOL and args[0].dtype == torch.bool:
            raise NotImplementedError(f"{name} on a Bool tensor has no CUDA kernel")
        return super().__torch_dispatch__(func, types, args, kwargs)


class ToLists(TorchFunctionMode):
    """Adds every Tensor.tolist to `found`: it copies the data out below the dispatcher, which never sees it."""

    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.found.append(("tolist", None))
        return func(*args, **(kwargs or {}))


def host_reads(sampler, model, cond, on_step=None, **options) -> list:
    """The reads sampler(model, cond, ...) makes, in order; on_step(n_reads_so_far) is called at each step."""
    with CudaSampler() as mode, ToLists(mode.found):
        hook = None if on_step is None else (lambda info: on_step(len(mode.found)))
        sampler(model, cond, seed=0, on_step=hook, **options)
    return mode.found


def test_the_refusal_catches_a_bool_scatter_reduce():
    x, index = torch.zeros(1, 2, dtype=torch.bool), torch.tensor([[0, 1, 1]])
    with CudaSampler():
        x.float().scatter_reduce(1, index, torch.ones(1, 3), "amax")              # numbers: CUDA has it
        with pytest.raises(NotImplementedError):
            x.scatter_reduce(1, index, torch.ones(1, 3, dtype=torch.bool), "amax")


MAGNET_OPTIONS = [dict(row_steps=(3, 2, 2, 2, 2)), dict(row_steps=(2, 1, 1, 1, 1), scoring="prod", context=1),
                  dict(row_steps=(2, 1, 1, 1, 1), span_len=1, context=2, prefix_cols=2),
                  dict(row_steps=(4,), rescorer="a second model", prefix_cols=1)]


def tiny_model():
    torch.manual_seed(0)
    cfg = dataclasses.replace(specmaskgit.PRESETS["tiny"], n_layers=1, width=32, n_heads=2, mlp=64, n_codes=32,
                              cols=8, cond_dim=16, span_len=2)
    return specmaskgit.SpecMaskGIT(cfg).eval()


def assert_reads_at_most_once_per_step(sampler, model, cond, **options):
    """Without a hook: at most one read, before the loop (with known tokens, or specmaskgit's unknown counts).
    With one: at most one read per step (the hook's numbers)."""
    known = dict(known_tokens=torch.randint(0, 32, (2, 5, 8)), known_mask=torch.rand(2, 5, 8) < 0.3)
    assert len(host_reads(sampler, model, cond, **options, **known)) <= 1
    assert len(host_reads(sampler, model, cond, **options)) <= 1
    marks = []
    host_reads(sampler, model, cond, on_step=marks.append, **options)
    assert len(marks) > 2 and max(b - a for a, b in zip(marks, marks[1:])) <= 1


def test_specmaskgit_uses_cuda_kernels_and_reads_back_before_its_loop_only():
    assert_reads_at_most_once_per_step(specmaskgit.generate, tiny_model(), torch.randn(2, 16), steps=6)


@pytest.mark.parametrize("options", MAGNET_OPTIONS, ids=["rows", "prod+context", "prefix+context", "rescorer"])
def test_magnet_uses_cuda_kernels_and_reads_back_once_per_step_at_most(options):
    model, cond = tiny_model(), torch.randn(2, 16)
    if options.get("rescorer"):
        options = dict(options, rescorer=specmaskgit.SpecMaskGIT(model.cfg).eval())
    assert_reads_at_most_once_per_step(magnet.generate, model, cond, **options)
    assert host_reads(magnet.generate, model, cond, **options) == []           # text to audio: none at all


class HostDraws(HostReads):
    """HostReads that also notes what the CPU generator seeded with `seed` drew: reading those waits for no
    device. (The dispatcher hands the mode a new Python object for the generator: it is known by its seed.)"""

    def __init__(self, seed):
        super().__init__()
        self.seed, self.drawn = seed, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        generator = (kwargs or {}).get("generator")
        if generator is not None and generator.initial_seed() == self.seed:
            self.drawn.add(out.data_ptr())
        return out


def test_span_masks_are_built_on_the_device_from_a_few_host_numbers(monkeypatch):
    cfg = dataclasses.replace(specmaskgit.PRESETS["tiny"], span_len=3)
    B, n = 6, cfg.rows * cfg.cols
    copies, real = [], torch.Tensor.to

    def to(tensor, *args, **kwargs):
        if os.path.basename(sys._getframe(1).f_code.co_filename) == "magnet.py":
            copies.append((tensor.numel(), kwargs.get("non_blocking", False)))
        return real(tensor, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    g = torch.Generator().manual_seed(3)
    with HostDraws(3) as mode:
        mask = magnet.span_mask(B, n, cfg, g, device="cpu")
    assert mask.shape == (B, n) and mask.dtype == torch.bool and mask.device.type == "cpu"
    assert copies == [(B, True)]                                  # the span counts, queued; nothing of (B, n)
    assert mode.found and all(ptr in mode.drawn for _, ptr in mode.found)   # reads of host draws only
    again = magnet.span_mask(B, n, cfg, torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(mask, again)                               # a seeded step draws the same mask again
