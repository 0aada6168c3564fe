"""Shared test fixtures: the repository root on sys.path, fp32 everywhere, the real clips in ../shared/audio."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_AUDIO = os.path.join(ROOT, "..", "shared", "audio")

torch.set_default_dtype(torch.float32)   # every test runs in fp32 (bf16 is ~300x slower on AVX2-only CPUs)


def _clips(sub):
    folder = os.path.join(SHARED_AUDIO, sub)
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is absent (the real test clips live in ../shared/audio beside the clone)")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".wav"))


@pytest.fixture
def full_band_clips():
    return _clips("full_band")


@pytest.fixture
def band_limited_clips():
    return _clips("band_limited")
