"""ground/audio_io.py: the user's audio files, read directly and through sample.py --inpaint and --bwe.

An unusable file (missing, empty, text, no samples, NaN) is one sentence naming it; an unusual one (stereo,
another rate, truncated, silent, shorter than a token column) is mixed, resampled, padded and cropped back
to its own length; a long or wide file is read in blocks and only as far as needed, and a header that
claims days of audio is refused before reading; a name that is not UTF-8 is read.
"""

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from ground import audio_io
import sample
from ground.runtime import UserError
from conftest import refused


# ---------------------------------------------------------------------------------------------------
# Bad and unusual audio files for --inpaint and --bwe
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """One file per kind of bad (or merely unusual) audio file."""
    d = tmp_path_factory.mktemp("audio")
    x = (0.1 * np.random.default_rng(0).standard_normal(70000)).astype(np.float32)
    sf.write(d / "good.wav", x, mel.SR, subtype="PCM_16")
    whole = (d / "good.wav").read_bytes()
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is a text file renamed .wav\n" * 40)
    (d / "truncated.wav").write_bytes(whole[:len(whole) // 2])             # the header promises 70000 samples
    (d / "header_only.wav").write_bytes(whole[:44])
    (d / "cut_in_header.wav").write_bytes(whole[:30])
    sf.write(d / "nan.wav", np.full(5000, np.nan, np.float32), mel.SR, subtype="FLOAT")
    sf.write(d / "stereo.wav", np.stack([x, -0.5 * x], 1), mel.SR)
    sf.write(d / "rate_44100.wav", x, 44100)
    sf.write(d / "rate_8000.wav", x[:30000], 8000)
    sf.write(d / "silent.wav", np.zeros(70000, np.float32), mel.SR)
    sf.write(d / "shorter_than_a_token_column.wav", x[:1000], mel.SR)      # a column is 4096 samples
    return d


TASKS = {"inpaint": ["--start", "0", "--end", "0.04"], "bwe": []}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name, words", [("missing", "does not exist"), ("empty", "empty (0 bytes)"),
                                         ("text", "not an audio file"), ("header_only", "holds no samples"),
                                         ("cut_in_header", "not an audio file"), ("nan", "NaN")])
def test_an_unusable_audio_file_is_one_sentence(bundle, audio, capsys, tmp_path, task, name, words):
    path = str(audio / f"{name}.wav")
    err = refused(capsys, sample.main, [f"--{task}", path, *TASKS[task], "--ckpt", bundle, "--steps", "2",
                                        "--out", str(tmp_path)], [path, words], tmp_path)
    assert len(err) < 400


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name, note", [("truncated", None), ("stereo", "mixed 2 channels to mono"),
                                        ("rate_44100", "resampled 44100 -> 22050 Hz"),
                                        ("rate_8000", "resampled 8000 -> 22050 Hz"), ("silent", None),
                                        ("shorter_than_a_token_column", None)])
def test_an_unusual_audio_file_is_processed_and_keeps_its_length(bundle, audio, capsys, tmp_path, task, name, note):
    """audio_io.load_audio mixes to mono and resamples (it refuses nothing here); a truncated wav is read as far as
    its samples go; a clip shorter than the model's window or one token column is padded and cropped back."""
    path = audio / f"{name}.wav"
    assert sample.main([f"--{task}", str(path), *TASKS[task], "--ckpt", bundle, "--steps", "2",
                        "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    if note:
        assert note in printed
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    expected = -(-len(x) * mel.SR // sr)                                        # ceil: the resampler's length
    if name == "truncated":
        assert len(x) < 70000
    written = os.listdir(tmp_path)
    assert written == [f"{name}_{'inpainted' if task == 'inpaint' else 'bwe'}.wav"]
    y, sr_out = sf.read(tmp_path / written[0], dtype="float32")
    assert sr_out == mel.SR and y.ndim == 1 and len(y) == expected and np.isfinite(y).all()


# ---------------------------------------------------------------------------------------------------
# Memory follows the work asked for
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """20 s of 8-channel 96 kHz near-silence as FLAC: small on disk, 61 MB as float32 samples."""
    d = tmp_path_factory.mktemp("wide")
    x = np.zeros((20 * 96000, 8), np.float32)
    x[::1000, 0] = 0.5
    sf.write(d / "wide.flac", x, 96000)
    return str(d / "wide.flac")


@pytest.mark.parametrize("num_samples", [None, mel.TOY_SAMPLES])
def test_audio_is_read_in_blocks_and_only_as_far_as_needed(wide, num_samples):
    tracemalloc.start()
    try:
        wav = audio_io.load_audio(wide, num_samples=num_samples)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert wav.shape == ((num_samples or 20 * mel.SR),)
    assert peak < 12e6, peak                       # the whole file as float32 would be 61 MB
    x, _ = sf.read(wide, dtype="float32", frames=2 * 96000)
    whole = audio_io.resample(torch.from_numpy(x.mean(1)), 96000, mel.SR)
    n = min(2 * mel.SR - 200, wav.shape[0])        # the blocks' result equals the whole signal's
    assert torch.allclose(wav[:n], whole[:n], atol=1e-6)


def test_a_header_claiming_days_of_audio_is_refused_before_reading(tmp_path):
    sf.write(tmp_path / "short.flac", np.zeros((22050, 2), np.float32), 22050)
    b = bytearray((tmp_path / "short.flac").read_bytes())
    fields = int.from_bytes(b[18:26], "big")                      # STREAMINFO: the 36-bit total sample count
    b[18:26] = (fields | ((1 << 36) - 1)).to_bytes(8, "big")
    (tmp_path / "liar.flac").write_bytes(bytes(b))
    with pytest.raises(UserError, match="liar.flac.*hours"):
        audio_io.load_audio(str(tmp_path / "liar.flac"))
    assert audio_io.load_audio(str(tmp_path / "liar.flac"), num_samples=4096).shape == (4096,)   # a prefix is fine


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------

def test_a_wav_whose_name_is_not_utf8_is_read(tmp_path):
    path = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.wav")
    with open(path, "wb") as f:
        sf.write(f, np.full(3000, 0.25, np.float32), mel.SR, format="WAV")
    wav = audio_io.load_audio(os.fsdecode(path))
    assert wav.shape == (3000,) and torch.allclose(wav, torch.full((3000,), 0.25), atol=1e-4)
