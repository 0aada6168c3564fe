"""The files sample.py and train.py write into --out, and the ones they never touch.

sample.py writes the name it was given (never its lower-case twin), chooses free names in a folder
(names that differ only in case are taken; a dangling symlink or a folder in the way is left alone), claims
a name when it chooses it so two runs at once keep all their takes, never replaces a picture or page beside
--out FILE.wav, keeps odd prompts inside the folder under a short name, and leaves nothing after Ctrl-C.
train.py refuses a folder another run holds, never follows a symlinked log, and removes at start-up only
the partial files of its own killed runs. A read-only folder is one sentence for both.
"""

import fcntl
import os
import subprocess
import sys

import pytest
import soundfile as sf

import mel
import pipeline
from ground import sample_edges
import sample
import train
from training import edges as training_edges
from conftest import CLAP_RUN, TOY, refused, sample_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------
# sample.py: nothing beside --out FILE.wav is overwritten
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


def test_sample_output_name_taken_by_a_folder_is_left_alone_and_the_take_goes_elsewhere(bundle, capsys, tmp_path):
    (tmp_path / "rain_on_a_roof.wav").mkdir()
    assert sample.main(["rain on a roof", "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)]) == 0
    assert "writing rain_on_a_roof-2.wav instead" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["rain_on_a_roof-2.wav", "rain_on_a_roof.wav"]
    assert not os.listdir(tmp_path / "rain_on_a_roof.wav")


# ---------------------------------------------------------------------------------------------------
# Two runs at once
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
# Unwritable folders, and what train.py leaves alone in its own
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["sample", "train"])
def test_a_read_only_output_folder_is_one_sentence(bundle, capsys, tmp_path, script, monkeypatch):
    out = tmp_path / "read_only"
    out.mkdir()
    os.chmod(out, 0o555)
    try:
        try:
            (out / "probe").write_text("x")
            os.remove(out / "probe")
            # root writes anyway (CI runs as root): then the folder is made to look read-only to the
            # writability check itself, so the refusal and the nothing-written checks still run
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: (mode & os.W_OK == 0 and real_access(p, mode))
                                if os.path.abspath(p) == str(out) else real_access(p, mode, **kw))
        except PermissionError:
            pass
        if script == "sample":
            argv = ["rain on a roof", "--ckpt", bundle, "--steps", "2", "--out", str(out)]
        else:
            argv = TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(out)]
        refused(capsys, getattr(sys.modules[script], "main"), argv, ["read_only", "not writable"], out)
        assert os.listdir(out) == []
    finally:
        os.chmod(out, 0o755)


def test_the_training_log_never_follows_a_symlink(tmp_path, capsys):
    out, outside = tmp_path / "run", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_bytes(b"not a log")
    os.symlink(outside, out / "clap.log.jsonl")
    refused(capsys, train.main, CLAP_RUN + ["--steps", "1", "--out", str(out)], ["clap.log.jsonl", "link"])
    assert outside.read_bytes() == b"not a log"


def test_start_up_removes_only_the_partial_files_of_its_own_killed_runs(tmp_path):
    """A user's `.tmp-*` files and folders, and anything not named like our checkpoints, are left alone."""
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                     # a process id that has ended
    users = {".tmp-notes.txt": b"my notes", ".tmp-data.pt": b"not ours", "clap.pt.partial-draft": b"mine too",
             f"notes.txt.partial-{dead.pid}": b"a name like ours, but not a checkpoint"}
    for name, data in users.items():
        (out / name).write_bytes(data)
    (out / ".tmp-folder").mkdir()
    (out / ".tmp-folder" / "inside").write_bytes(b"kept")
    ours = [f"clap.state.pt.partial-{dead.pid}", f"vqgan.pt.partial-{dead.pid}"]
    for name in ours:
        (out / name).write_bytes(b"half a checkpoint")
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    for name, data in users.items():
        assert (out / name).read_bytes() == data
    assert (out / ".tmp-folder" / "inside").read_bytes() == b"kept"
    assert not any((out / name).exists() for name in ours)


# ---------------------------------------------------------------------------------------------------
# Prompts as file names, and Ctrl-C
# ---------------------------------------------------------------------------------------------------

def test_a_5000_character_prompt_of_known_words_is_sampled_under_a_short_name(bundle, capsys, tmp_path):
    """embed_prompts keeps the known words (TinyCLAP reads the first max_words of them); slug cuts the
    file name to 60 characters. So a long prompt is not an error."""
    prompt = ("rain on a roof " * 334)[:5000]
    assert sample.main([prompt, "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert os.listdir(tmp_path) == [sample.slug(prompt) + ".wav"]
    assert len(sample.slug(prompt)) <= 60 and sample.slug(prompt).startswith("rain_on_a_roof_rain")
    assert max(len(line) for line in printed.splitlines()) < 300               # the prompt is not echoed whole


@pytest.mark.parametrize("prompt, name", [("дождь on a roof", "дождь_on_a_roof.wav"),
                                          ("rain on a roof/../../escape", "rain_on_a_roof_escape.wav")])
def test_odd_characters_in_a_prompt_stay_inside_the_output_folder(bundle, tmp_path, prompt, name):
    out = tmp_path / "out"
    assert sample.main([prompt, "--ckpt", bundle, "--steps", "2", "--out", str(out)]) == 0
    assert os.listdir(out) == [name] and os.listdir(tmp_path) == ["out"]


def test_a_prompt_with_an_invalid_byte_makes_its_page(bundle, tmp_path):
    prompt = os.fsdecode(b"rain on a roof \xff")                              # as sys.argv carries it
    assert sample.main([prompt, *sample_args(bundle, tmp_path), "--html"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["rain_on_a_roof.html", "rain_on_a_roof.wav"]


def test_ctrl_c_in_sample_is_one_line_exit_130_and_leaves_nothing(bundle, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "text_to_audio", interrupted)
    assert sample.main(["rain on a roof", *sample_args(bundle, tmp_path), "--png", "--html"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    assert os.listdir(tmp_path) == []
