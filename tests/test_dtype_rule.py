"""The compute dtype follows one rule (runtime.auto_dtype): a small model runs in fp32 on every device, then
CUDA gets bf16 from compute capability 8.0 on and fp32 on older cards, and --dtype overrides it; fp16 never
trains. The GPU is stubbed: torch.cuda.get_device_capability answers what a V100 (7.0), an A100 (8.0) or
an H100 (9.0) would, so the rule is checked on a machine without one.
"""

import pytest
import torch

from speed import fast
from ground import runtime
import specmaskgit
import train

FP32, BF16 = torch.float32, torch.bfloat16
CARDS = {"V100": (7, 0), "A100": (8, 0), "H100": (9, 0)}


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is present."""
    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return install


def inference(preset, device="cuda", name="auto"):
    """The dtype sample.py takes for the preset's transformer (fast.inference_dtype)."""
    return fast.inference_dtype(device, name, specmaskgit.PRESETS[preset].width, verbose=False)


def training(preset, device="cuda", name="auto"):
    args = train.parse_args(["--data", "toy", "--preset", preset, "--dtype", name])
    return train.training_dtype(args, device, verbose=False)


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("how", [inference, training])
def test_tiny_runs_in_fp32_on_every_card(gpu, card, how):
    gpu(CARDS[card])
    assert how("tiny") == FP32
    assert how("tiny", "cuda:0") == FP32


@pytest.mark.parametrize("card, expected", [("V100", FP32), ("A100", BF16), ("H100", BF16)])
@pytest.mark.parametrize("how", [inference, training])
def test_full_takes_bf16_from_compute_capability_8_on(gpu, card, expected, how):
    gpu(CARDS[card])
    assert how("full") == expected
    assert how("full", "cuda:1") == expected                 # a DDP process's device names its index


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("how", [inference, training])
def test_dtype_flag_overrides_the_rule(gpu, card, how):
    gpu(CARDS[card])
    assert how("tiny", name="bf16") == BF16
    assert how("full", name="fp32") == FP32
    assert how("full", name="bf16") == BF16                  # even where the card would take fp32


def test_fp16_never_trains_on_any_card(gpu):
    gpu(CARDS["H100"])
    with pytest.raises(runtime.UserError, match="fp16"):
        training("full", name="fp16")


def test_the_small_rule_comes_before_the_device_is_asked(monkeypatch):
    """A small model needs no GPU query at all: its answer cannot depend on the card."""
    def no_query(device=None):
        raise AssertionError("asked for the compute capability")
    monkeypatch.setattr(torch.cuda, "get_device_capability", no_query)
    assert runtime.auto_dtype("cuda", small=True)[0] == FP32


def test_the_choice_is_printed_with_its_reason(gpu, capsys):
    gpu(CARDS["V100"])
    runtime.native_dtype("cuda")
    assert "float32 on cuda (compute capability 7.0 has no bf16" in capsys.readouterr().out
    gpu(CARDS["H100"])
    runtime.native_dtype("cuda")
    assert "bfloat16 on cuda" in capsys.readouterr().out


def test_a_cpu_keeps_its_rule():
    """Without native bf16 (this CPU and most), a CPU computes in fp32, small or not."""
    if runtime.cpu_has_native_bf16():
        pytest.skip("this CPU has native bf16")
    assert runtime.native_dtype("cpu", verbose=False) == FP32
    assert inference("tiny", "cpu") == FP32 and training("full", "cpu") == FP32
