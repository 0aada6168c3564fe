"""Shared test fixtures: the repository root on sys.path, fp32 everywhere, the real recordings in tests/data."""

import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from ground import audio_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "tests", "data")
# Freely licensed real recordings (authors and licences in tests/data/README.md): a mechanical alarm clock
# (6.1 s, 48 kHz stereo), a camera shutter (0.9 s, 96 kHz stereo) and a voice (1.4 s, 48 kHz mono).
RECORDINGS = ["alarm-clock-elapsed.oga", "camera-shutter.oga", "audio-channel-front-center.oga"]

torch.set_default_dtype(torch.float32)   # every test runs in fp32 (bf16 is ~300x slower on AVX2-only CPUs)


@pytest.fixture(scope="session")
def full_band_clips():
    """The recordings in tests/data, longest first."""
    return [os.path.join(DATA, name) for name in RECORDINGS]


@pytest.fixture(scope="session")
def band_limited_clips(full_band_clips, tmp_path_factory):
    """The same recordings at 22050 Hz with everything above mel bin 64's lower edge (4164 Hz) removed, so
    the top 16 of the 80 mel bins hear nothing: the input of the zero-shot bandwidth extension (Table 7).
    16-bit wav files named after their sources, in the same order."""
    import mel
    folder = tmp_path_factory.mktemp("band_limited")
    edges = mel.mel_to_hz(np.linspace(mel.hz_to_mel(mel.FMIN), mel.hz_to_mel(mel.FMAX), mel.N_MELS + 2))
    paths = []
    for path in full_band_clips:
        x = audio_io.load_audio(path).double().numpy()
        spectrum = np.fft.rfft(x)
        spectrum[np.fft.rfftfreq(len(x), 1 / mel.SR) > edges[64]] = 0           # a brick wall: nothing above
        out = str(folder / (os.path.splitext(os.path.basename(path))[0] + ".wav"))
        sf.write(out, np.fft.irfft(spectrum, n=len(x)), mel.SR, subtype="PCM_16")
        paths.append(out)
    return paths
