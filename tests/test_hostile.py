"""Hostile input, second round: what a careless or malicious user does to the files around a run.

Each test names the promise it checks. Nothing already on disk is lost (the data-loss tests compare
bytes), nothing hangs (every blocking open is guarded by an alarm here), memory follows the work asked
for (not a file's size or a header's claims), and every refusal is one sentence with exit code 2.
"""

import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from data import datasets as data
from speed import fast
import mel
from ground import audio_io
import pipeline
from ground import runtime
from ground import sample_edges
import sample
import train
from training import edges as training_edges
from ground.runtime import UserError, load_checkpoint, save_checkpoint
from test_robustness import CLAP_RUN, refused, toy_run  # noqa: F401  (toy_run: a module fixture)
from test_sample import bundle  # noqa: F401
from test_train import TOY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def sample_args(bundle, out, *more):
    return ["--ckpt", bundle, "--steps", "2", "--out", str(out), *more]


# ---------------------------------------------------------------------------------------------------
# 1. Nothing beside --out FILE.wav is overwritten
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, sibling", [("--png", "take.png"), ("--html", "take.html"), ("--png", "TAKE.PNG")])
def test_file_out_never_replaces_a_picture_or_page_beside_it(bundle, tmp_path, capsys, flag, sibling):
    (tmp_path / sibling).write_bytes(b"my own picture")
    refused(capsys, sample.main, ["rain on a roof", *sample_args(bundle, tmp_path / "take.wav"), flag],
            [sibling])
    assert (tmp_path / sibling).read_bytes() == b"my own picture"
    assert sorted(os.listdir(tmp_path)) == [sibling]


def test_file_out_writes_the_name_given_and_not_its_lower_case_twin(bundle, tmp_path):
    (tmp_path / "take.wav").write_bytes(b"an older take")
    assert sample.main(["rain on a roof", *sample_args(bundle, tmp_path / "take.WAV")]) == 0
    assert (tmp_path / "take.wav").read_bytes() == b"an older take"
    assert sf.info(str(tmp_path / "take.WAV")).samplerate == mel.SR


def test_folder_out_treats_names_that_differ_only_in_case_as_taken(bundle, tmp_path, capsys):
    (tmp_path / "Rain_On_A_Roof.WAV").write_bytes(b"mine")
    assert sample.main(["rain on a roof", *sample_args(bundle, tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["Rain_On_A_Roof.WAV", "rain_on_a_roof-2.wav"]
    assert (tmp_path / "Rain_On_A_Roof.WAV").read_bytes() == b"mine"


def test_a_dangling_symlink_at_an_output_name_is_never_replaced(bundle, tmp_path, capsys):
    os.symlink(tmp_path / "nowhere" / "x.wav", tmp_path / "rain_on_a_roof.wav")
    assert sample.main(["rain on a roof", *sample_args(bundle, tmp_path)]) == 0
    assert os.path.islink(tmp_path / "rain_on_a_roof.wav")
    assert (tmp_path / "rain_on_a_roof-2.wav").is_file()
    os.symlink(tmp_path / "nowhere" / "y.wav", tmp_path / "take.wav")
    refused(capsys, sample.main, ["rain on a roof", *sample_args(bundle, tmp_path / "take.wav")],
            ["take.wav", "symbolic link"])
    assert os.readlink(tmp_path / "take.wav") == str(tmp_path / "nowhere" / "y.wav")


# ---------------------------------------------------------------------------------------------------
# 2. Two runs at once
# ---------------------------------------------------------------------------------------------------

def test_output_names_are_claimed_when_chosen(tmp_path):
    """Two runs choosing names in one folder before either has written: they get different names."""
    first = sample_edges.output_names(str(tmp_path), ["rain", "rain"], (".wav", ".png"))
    second = sample_edges.output_names(str(tmp_path), ["rain"], (".wav",))
    assert len({names[".wav"] for names in first + second}) == 3
    assert sorted(os.listdir(tmp_path)) == ["rain-2.png", "rain-2.wav", "rain-3.wav", "rain.png", "rain.wav"]


def test_two_sample_runs_into_one_folder_keep_all_four_takes(bundle, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "sample.py", "rain on a roof", "--n", "2", "--seed", str(seed),
                               *sample_args(bundle, tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for seed in (1, 2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
        p.stderr.close()
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 4 and all(n.endswith(".wav") for n in names)
    assert len({(tmp_path / n).read_bytes() for n in names}) == 4              # four different takes, all kept


def test_a_second_train_run_into_a_locked_out_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / training_edges.LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)                      # what a running train.py holds
        refused(capsys, train.main, CLAP_RUN + ["--steps", "1", "--out", str(out)], ["another", str(out)], out)
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0   # released: the next run goes ahead
    assert train.main(CLAP_RUN + ["--steps", "2", "--resume", "--out", str(out)]) == 0   # and ours released it


# ---------------------------------------------------------------------------------------------------
# 3. A stale stage is never bundled with a new one
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("older_run", [False, True])
def test_a_new_vqgan_is_not_bundled_with_the_transformer_of_the_old_one(toy_run, tmp_path, capsys, older_run):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    if older_run:                                          # a transformer.pt written before the hash was stored
        ckpt = load_checkpoint(str(out / "transformer.pt"), "transformer")
        ckpt.pop("vqgan_hash", None)
        save_checkpoint(ckpt, str(out / "transformer.pt"))
    else:
        assert "vqgan_hash" in load_checkpoint(str(out / "transformer.pt"), "transformer")
    bundle_path = tmp_path / "model.pt"
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--seed", "1", "--out", str(out),
                                       "--bundle", str(bundle_path)], ["transformer.pt", "--stage transformer"])
    assert not bundle_path.exists()


def test_sample_refuses_a_bundle_whose_transformer_learnt_another_vqgan(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["transformer"]["vqgan_hash"] = "0" * 16
    save_checkpoint(b, str(tmp_path / "mixed.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "mixed.pt"), tmp_path / "o")],
            ["mixed.pt", "another VQGAN"], tmp_path / "o")
    b["transformer"]["vqgan_hash"] = runtime.vqgan_hash(b["vqgan"])
    save_checkpoint(b, str(tmp_path / "matched.pt"))
    assert sample.main(["rain on a roof", *sample_args(str(tmp_path / "matched.pt"), tmp_path / "o")]) == 0


# ---------------------------------------------------------------------------------------------------
# 4. Weights that are not finite float32 numbers, or not what they claim to be
# ---------------------------------------------------------------------------------------------------

def _weights(b, how):
    w = b["transformer"]["model"]
    name = "head.weight"
    if how == "complex":
        w[name] = torch.complex(w[name], torch.full_like(w[name], float("nan")))
    elif how == "int64":
        w[name] = torch.ones_like(w[name], dtype=torch.int64)
    elif how == "float64 beyond float32":
        w[name] = torch.full_like(w[name], 1e300, dtype=torch.float64)
    elif how == "stride 0":
        w[name] = torch.zeros(1).expand(10 ** 12)
    return name


@pytest.mark.parametrize("how, words", [("complex", ["complex"]), ("int64", ["int64", "float"]),
                                        ("float64 beyond float32", ["float32"]), ("stride 0", ["stores"])])
def test_weights_that_are_not_finite_float32_are_refused(bundle, tmp_path, capsys, how, words):
    b = load_checkpoint(bundle, "bundle")
    name = _weights(b, how)
    path = tmp_path / "damaged.pt"
    save_checkpoint(b, str(path))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(path), tmp_path / "o")],
            ["damaged.pt", name, *words], tmp_path / "o")


def test_a_checkpoint_with_compressed_entries_is_refused_before_it_is_inflated(tmp_path):
    import zipfile
    save_checkpoint({"stage": "x", "t": torch.zeros(1000)}, str(tmp_path / "plain.pt"))
    with zipfile.ZipFile(tmp_path / "plain.pt") as zin, \
            zipfile.ZipFile(tmp_path / "zipped.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert torch.load(tmp_path / "zipped.pt", weights_only=True)["t"].shape == (1000,)   # torch would inflate it
    with pytest.raises(UserError, match="compressed"):
        load_checkpoint(str(tmp_path / "zipped.pt"))


def test_a_layer_count_beyond_any_model_is_refused_before_building(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["transformer"]["config"]["n_layers"] = 4096
    save_checkpoint(b, str(tmp_path / "deep.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "deep.pt"), tmp_path / "o")],
            ["n_layers", "4096"], tmp_path / "o")


# ---------------------------------------------------------------------------------------------------
# 5, 6, 9, 13. train.py: its log, damaged resume states, a damaged official vocoder, a full disk
# ---------------------------------------------------------------------------------------------------

def test_the_training_log_never_follows_a_symlink(tmp_path, capsys):
    out, outside = tmp_path / "run", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_bytes(b"not a log")
    os.symlink(outside, out / "clap.log.jsonl")
    refused(capsys, train.main, CLAP_RUN + ["--steps", "1", "--out", str(out)], ["clap.log.jsonl", "link"])
    assert outside.read_bytes() == b"not a log"


def _damage_state(state, how):
    if how == "string step":
        state["step"] = "3"
    elif how == "huge step":
        state["step"] = 10 ** 20
    elif how == "negative step":
        state["step"] = -5
    elif how == "bad rng":
        state["rng"] = [{"cpu": torch.zeros(7, dtype=torch.uint8)}]
    elif how == "missing optimiser":
        del state["trainer"][next(k for k in state["trainer"] if "opt" in k)]
    elif how == "missing config":
        del state["config"]
    elif how == "list for the trainer":
        state["trainer"] = [1, 2]


@pytest.mark.parametrize("how", ["string step", "huge step", "negative step", "bad rng", "missing optimiser",
                                 "missing config", "list for the trainer"])
def test_a_damaged_resume_state_is_one_sentence_and_stays_as_it_was(tmp_path, capsys, how):
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    state = load_checkpoint(str(out / "clap.state.pt"), "clap")
    _damage_state(state, how)
    save_checkpoint(state, str(out / "clap.state.pt"))
    before = (out / "clap.state.pt").read_bytes()
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "3", "--resume", "--out", str(out)], ["clap.state.pt"])
    assert (out / "clap.state.pt").read_bytes() == before


def test_a_damaged_official_vocoder_is_one_sentence_in_train_as_in_sample(tmp_path, capsys):
    path = tmp_path / "generator_v1"
    torch.save({"generator": {"conv_pre.bias": torch.zeros(3), "conv_pre.weight_g": torch.zeros(2)}}, path)
    refused(capsys, train.main, TOY + ["--steps", "1", "--out", str(tmp_path / "run"), "--vocoder-ckpt", str(path)],
            ["generator_v1"])


class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does (torch.save turns this into its
    zip writer's RuntimeError "unexpected pos")."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if self.room < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_a_full_disk_inside_torch_save_is_one_sentence_and_old_checkpoints_stay(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    real_save = torch.save
    monkeypatch.setattr(runtime.torch, "save", lambda obj, f, *a, **k: real_save(obj, FullDisk(f, 4096)))
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "2", "--resume", "--out", str(out)],
            ["clap.pt", "No space left on device"])
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(out) if ".partial-" in n]


# ---------------------------------------------------------------------------------------------------
# 7. Memory follows the work asked for
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


@pytest.mark.parametrize("argv, words", [
    (["--num-samples", str(4096 * 2 ** 20)], ["--num-samples"]),
    (["--n-clips", str(10 ** 9)], ["--n-clips"])])
def test_train_sizes_beyond_any_machine_are_refused(tmp_path, capsys, argv, words):
    refused(capsys, train.main, TOY + ["--steps", "1", "--out", str(tmp_path / "r")] + argv, words, tmp_path / "r")


@pytest.mark.parametrize("argv, words", [(["--runs", str(10 ** 9)], ["--runs"]), (["--batch", str(10 ** 9)], ["--batch"]),
                                         (["--batches", f"4,{10 ** 9}"], ["--batches"])])
def test_benchmark_counts_beyond_any_machine_are_refused(capsys, argv, words):
    from speed import benchmark
    refused(capsys, benchmark.main, ["tiny", *argv], words)


# ---------------------------------------------------------------------------------------------------
# 8, 11. Hangs and the dtype cache
# ---------------------------------------------------------------------------------------------------

def test_a_fifo_in_a_data_folder_is_skipped_without_hanging(tmp_path, alarm):
    sf.write(tmp_path / "good.wav", np.zeros(5000, np.float32), mel.SR)
    os.mkfifo(tmp_path / "x.wav")
    alarm(20)
    ds = data.FolderDataset(str(tmp_path), num_samples=4096)
    assert [os.path.basename(p) for p, _, _ in ds.items] == ["good.wav"]


def fake_timer(name, width):
    return {"fp32": 3.0, "bf16": 2.0, "int8": 1.0}[name]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "deep"])
def test_a_hostile_dtype_cache_is_ignored_quickly(tmp_path, alarm, kind):
    cache = tmp_path / "cpu_dtype.json"
    if kind == "fifo":
        os.mkfifo(cache)
    elif kind == "/dev/zero":
        os.symlink("/dev/zero", cache)
    else:
        cache.write_text("[" * 100_000 + "]" * 100_000)
    alarm(20)
    assert fast.measure_cpu_dtype(768, timer=fake_timer, cache=str(cache), verbose=False) == "fp32"
    assert not stat.S_ISREG(os.lstat(cache).st_mode) or kind == "deep"     # a FIFO or a link is left as it is


def test_an_empty_home_never_puts_the_cache_at_the_filesystem_root(monkeypatch):
    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    path = fast.default_cache_path()
    assert path is None or not path.startswith("/.cache")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")                   # the XDG spec ignores a relative one
    path = fast.default_cache_path()
    assert path is None or os.path.isabs(path) and not path.startswith("/.cache")


# ---------------------------------------------------------------------------------------------------
# 10, 12, 14. Text, Ctrl-C, and messages that name the real problem
# ---------------------------------------------------------------------------------------------------

def test_a_prompt_with_an_invalid_byte_makes_its_page(bundle, tmp_path):
    prompt = os.fsdecode(b"rain on a roof \xff")                              # as sys.argv carries it
    assert sample.main([prompt, *sample_args(bundle, tmp_path), "--html"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["rain_on_a_roof.html", "rain_on_a_roof.wav"]


def test_a_wav_whose_name_is_not_utf8_is_read(tmp_path):
    path = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.wav")
    with open(path, "wb") as f:
        sf.write(f, np.full(3000, 0.25, np.float32), mel.SR, format="WAV")
    wav = audio_io.load_audio(os.fsdecode(path))
    assert wav.shape == (3000,) and torch.allclose(wav, torch.full((3000,), 0.25), atol=1e-4)


def test_ctrl_c_in_sample_is_one_line_exit_130_and_leaves_nothing(bundle, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "text_to_audio", interrupted)
    assert sample.main(["rain on a roof", *sample_args(bundle, tmp_path), "--png", "--html"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    assert os.listdir(tmp_path) == []


def test_a_gap_within_one_sample_is_named_as_such(bundle, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(mel.SR, np.float32), mel.SR)
    refused(capsys, sample.main, ["--inpaint", str(clip), "--start", "-0.0", "--end", "1e-9",
                                  *sample_args(bundle, tmp_path / "o")], ["one sample"], tmp_path / "o")


def test_a_vocabulary_of_numbers_is_named(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["clap"]["vocab"] = list(range(len(b["clap"]["vocab"])))
    save_checkpoint(b, str(tmp_path / "numbers.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "numbers.pt"), tmp_path / "o")],
            ["numbers.pt", "vocab"], tmp_path / "o")


def test_a_fifo_as_checkpoint_is_called_what_it_is(bundle, tmp_path, capsys, alarm):
    os.mkfifo(tmp_path / "model.pt")
    alarm(20)
    err = refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "model.pt"), tmp_path / "o")],
                  ["model.pt", "not a regular file"])
    assert "does not exist" not in err


def test_clap_on_a_folder_without_captions_names_the_missing_captions(tmp_path, capsys):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"s{i}.wav", 0.1 * np.ones(5000, np.float32), mel.SR)
    refused(capsys, train.main, ["--data", str(folder), "--stage", "clap", "--clap", "tiny", "--preset", "tiny",
                                 "--num-samples", "4096", "--steps", "1", "--out", str(tmp_path / "r")],
            ["captions.csv"], tmp_path / "r")
