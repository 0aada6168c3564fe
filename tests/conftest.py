"""Shared test fixtures and helpers: the repository root on sys.path, fp32 everywhere, the real recordings in
tests/data, and what several test files use.

Fixtures (ask for them by name):
  full_band_clips, band_limited_clips   the recordings in tests/data, and the same band-limited to 4164 Hz
  bundle, pipe                          four tiny untrained models saved as a bundle, and that bundle loaded
  toy_run                               a tiny toy run: VQGAN, TinyCLAP and transformer, one step each
                                        (tests/test_train.py has its own toy_run: every stage, two steps)
  prerequisites                         a VQGAN, a TinyCLAP and the token cache, for the transformer stage
  alarm                                 a blocking call that outlives its seconds fails instead of hanging

Helpers (import them: `from conftest import TOY, refused`):
  TINY, TOY, CLAP_RUN     train.py flags for tiny models on 8 toy clips, and for its fastest stage
  CLIP, tiny_bundle       the tiny bundle's clip length, and the function that writes such a bundle
  log_rows, transformer_run_from, sample_args, refused
  SMALL, small_model      a 2-layer transformer on a 5 x 8 grid, seeded (fields changed by keyword)
"""

import dataclasses
import json
import os
import shutil
import signal
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

# the method's files, importable from here on
import clap
from data import toyworld
import mel
import pipeline
import specmaskgit
import train
import vocoder
import vqgan
from ground.runtime import save_checkpoint


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


# ---------------------------------------------------------------------------------------------------
# A small transformer for the sampler's tests
# ---------------------------------------------------------------------------------------------------

SMALL = specmaskgit.Config(n_layers=2, width=64, n_heads=4, mlp=128, n_codes=32, rows=5, cols=8, cond_dim=16)


def small_model(seed=0, **changes):
    torch.manual_seed(seed)
    return specmaskgit.SpecMaskGIT(dataclasses.replace(SMALL, **changes)).eval()


# ---------------------------------------------------------------------------------------------------
# train.py on tiny models (tests/test_train.py's flags)
# ---------------------------------------------------------------------------------------------------

# One flag per config field to shrink (train.py generates --<stage>.<field> from each Config).
TINY = ["--num-samples", "16384", "--batch-size", "2", "--dtype", "fp32", "--device", "cpu",
        "--vqgan.base_channels", "4", "--vqgan.z_channels", "16", "--vqgan.n_codes", "32", "--vqgan.code_dim", "16",
        "--vqgan.disc_channels", "4",
        "--vocoder.upsample_initial_channel", "16", "--vocoder.mpd_width", "2", "--vocoder.msd_width", "16",
        "--clap.audio_channels", "4,8,8,8", "--clap.audio_hidden", "16", "--clap.text_width", "16",
        "--transformer.n_layers", "1", "--transformer.width", "32", "--transformer.n_heads", "2",
        "--transformer.mlp", "64"]
TOY = ["--data", "toy", "--n-clips", "8"] + TINY


def log_rows(folder, stage) -> list[dict]:
    with open(os.path.join(folder, f"{stage}.log.jsonl")) as f:
        return [json.loads(line) for line in f]


def transformer_run_from(toy_run, dest) -> str:
    """A copy of the toy run without its transformer stage (the token cache stays: it is keyed on vqgan.pt)."""
    shutil.copytree(toy_run, dest)
    for name in ("transformer.pt", "transformer.state.pt", "transformer.log.jsonl"):
        os.remove(os.path.join(dest, name))
    return str(dest)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The VQGAN, TinyCLAP and transformer stages of a tiny toy run, one step each (no vocoder), plus a
    bundle of the VQGAN alone, written after the VQGAN stage as train.py --stage vqgan --bundle writes it."""
    out = tmp_path_factory.mktemp("toy_run")
    assert train.main(TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(out),
                             "--bundle", str(out / "vqgan_only.pt")]) == 0
    for stage in ("clap", "transformer"):
        assert train.main(TOY + ["--stage", stage, "--steps", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def prerequisites(tmp_path_factory):
    """A VQGAN, a TinyCLAP and the token cache, for the transformer stage (one step each)."""
    out = tmp_path_factory.mktemp("prerequisites")
    for stage in ("vqgan", "clap", "transformer"):
        assert train.main(TOY + ["--stage", stage, "--steps", "1", "--out", str(out)]) == 0
    for name in ("transformer.pt", "transformer.state.pt", "transformer.log.jsonl"):
        os.remove(out / name)
    return out


CLAP_RUN = TOY + ["--stage", "clap", "--log-every", "1"]           # the fastest stage that needs nothing else


# ---------------------------------------------------------------------------------------------------
# sample.py on a bundle of four tiny untrained models
# ---------------------------------------------------------------------------------------------------

CLIP = 8 * 4096                     # the tiny bundle's clip: 32768 samples = 128 frames = 5 x 8 tokens


def tiny_bundle(folder, patch_frames=16, cols=None) -> str:
    """A bundle of four tiny untrained models, saved the way train.py --bundle saves it; its VQGAN's tokens
    are patch_frames mel frames wide, and the transformer's grid has `cols` columns (default: the fitting one)."""
    torch.manual_seed(0)
    vq_cfg = vqgan.Config(base_channels=4, channel_mult=(1, 2, 4, 8, 8), n_res_blocks=1, dec_res_blocks=1,
                          norm_groups=4, z_channels=16, n_codes=32, code_dim=16, disc_channels=4, disc_layers=2,
                          patch_frames=patch_frames)
    voc_cfg = dataclasses.replace(vocoder.PRESETS["tiny"], upsample_initial_channel=16, mpd_width=2, msd_width=16)
    clap_cfg = clap.Config(audio_channels=(4, 8, 8, 8), audio_hidden=16, text_width=16, text_layers=1)
    cols = cols or CLIP // (patch_frames * mel.HOP)
    tr_cfg = specmaskgit.Config(n_layers=1, width=32, n_heads=2, mlp=64, n_codes=32, rows=5, cols=cols)
    b = {"stage": "bundle", "num_samples": CLIP, "data": "toy",
         "vqgan": vqgan.Trainer(vq_cfg).checkpoint(),
         "vocoder": vocoder.Trainer(voc_cfg).checkpoint(),
         "clap": clap.Trainer(clap_cfg, vocab=clap.build_vocab(toyworld.toy_caption_phrases())).checkpoint(),
         "transformer": specmaskgit.Trainer(tr_cfg).checkpoint()}
    path = folder / f"tiny_{patch_frames}_{cols}.pt"
    save_checkpoint(b, str(path))
    return str(path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def pipe(bundle):
    return pipeline.load_pipeline(bundle, verbose=False)


def sample_args(bundle, out, *more):
    return ["--ckpt", bundle, "--steps", "2", "--out", str(out), *more]


# ---------------------------------------------------------------------------------------------------
# Refusals: one sentence, exit code 2, nothing written; and nothing hangs
# ---------------------------------------------------------------------------------------------------

def refused(capsys, main, argv, words=(), folder=None) -> str:
    """Run `main(argv)`: exit code 2, one error line naming every one of `words`, no traceback, and
    nothing written in `folder`. Returns the error line."""
    rc = main(argv)                                              # argparse's own refusals too (runtime.ArgumentParser)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[-1], lines[-1]
    if folder is not None:
        nothing_written(folder)
    return lines[-1]


def nothing_written(folder) -> None:
    """No output and no temporary file in `folder` (which may not exist at all)."""
    if os.path.isdir(folder):
        left = [n for n in os.listdir(folder) if n.endswith((".wav", ".png", ".pt")) or n.startswith(".tmp")
                or ".partial-" in n]
        assert not left, left


class TimedOut(BaseException):                 # not caught by the code under test
    pass


@pytest.fixture
def alarm():
    """Fail instead of hanging: a blocking call still running after `seconds` raises TimedOut."""
    def on_alarm(signum, frame):
        raise TimedOut("still blocked after the alarm")

    old = signal.signal(signal.SIGALRM, on_alarm)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
