"""Inputs nobody should trust: what a hostile-input probe found, each refused or handled where it enters.

- train.py --init-from: a transformer that learnt another VQGAN's tokens, an --out that holds its source,
  --resume that makes --init-from moot;
- a sample.py stopped by SIGTERM or killed by SIGKILL leaves no empty take behind;
- flags out of range or ignored (--context, --eval-every, SpecMaskGIT's flags with --sampler magnet), entry
  points a user can reach (python -m speed.benchmark's worker flags, python magnet.py), a missing laion-clap
  named by the flag that asked for it, a symbolic link at the run folder's lock;
- the first runs of a newcomer: peak normalisation said as information, a repeated take said to be the
  seed's, a prompt with no known content word refused, --help that says each default once, a page that
  shows the model's file name and not where it lives.
Every model is tiny and untrained (fp32, CPU): what is checked is the machinery.
"""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import magnet
import pipeline
import sample
import train
from ground.runtime import load_checkpoint, save_checkpoint
from ground import sample_edges
from speed import benchmark
from conftest import TOY

STEPS = "4"                         # MaskGIT iterations in these tests (fast; the default is 16)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_sentence(capsys, code: int) -> str:
    """Exit code 2 and exactly one line on stderr, starting "error:"."""
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def empty_files(folder) -> list[str]:
    return [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
            and os.path.getsize(os.path.join(folder, n)) == 0]


# ---------------------------------------------------------------------------------------------------
# train.py --init-from trusts its source no more
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pre-training run: a VQGAN, a TinyCLAP and a transformer, one step each."""
    out = tmp_path_factory.mktemp("pretrained")
    for stage in ("vqgan", "clap", "transformer"):
        assert train.main(TOY + ["--stage", stage, "--steps", "1", "--out", str(out)]) == 0
    return out


def test_init_from_refuses_a_lone_transformer_that_learnt_another_vqgan(pretrained, tmp_path, capsys):
    lone, out = tmp_path / "lone", tmp_path / "ft"
    os.makedirs(lone)
    os.makedirs(out)
    shutil.copy(pretrained / "transformer.pt", lone / "transformer.pt")           # no vqgan.pt beside it
    vq = load_checkpoint(str(pretrained / "vqgan.pt"), "vqgan")
    vq["model"] = {k: v + 1 for k, v in vq["model"].items()}                       # another codebook
    save_checkpoint(vq, str(out / "vqgan.pt"))
    shutil.copy(pretrained / "clap.pt", out / "clap.pt")
    err = one_sentence(capsys, train.main(TOY + ["--stage", "transformer", "--init-from", str(lone / "transformer.pt"),
                                                 "--out", str(out), "--steps", "1"]))
    assert "another VQGAN" in err and "transformer.pt" in err
    assert not os.path.exists(out / "transformer.pt")


def test_init_from_refuses_an_out_that_holds_its_source(pretrained, tmp_path, capsys):
    source = pretrained / "transformer.pt"
    before = source.read_bytes()
    link = tmp_path / "same_run"
    os.symlink(pretrained, link)                                                   # the same folder by another name
    for out in (str(pretrained), str(link), str(pretrained) + "/."):
        err = one_sentence(capsys, train.main(TOY + ["--stage", "transformer", "--init-from", str(source),
                                                     "--out", out, "--steps", "1"]))
        assert "--out" in err and "overwrite" in err
    assert source.read_bytes() == before


def test_resume_says_that_init_from_is_not_used(pretrained, tmp_path, capsys):
    out = str(tmp_path / "ft")
    source = str(pretrained / "transformer.pt")
    assert train.main(TOY + ["--stage", "transformer", "--init-from", source, "--out", out, "--steps", "1"]) == 0
    capsys.readouterr()
    assert train.main(TOY + ["--stage", "transformer", "--init-from", source, "--out", out, "--steps", "2",
                             "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"--init-from {source} is not used" in said and "resum" in said


# ---------------------------------------------------------------------------------------------------
# A stopped or killed sample.py leaves no empty take
# ---------------------------------------------------------------------------------------------------

def test_sigterm_during_sampling_removes_the_claimed_names(bundle, tmp_path):
    out = tmp_path / "takes"
    command = [sys.executable, "sample.py", "rain on a roof", "--ckpt", bundle, "--steps", "256", "--n", "16",
               "--png", "--html", "--device", "cpu", "--dtype", "fp32", "--out", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:                                     # wait until the sampler runs
            if "step" in line:
                break
        assert os.listdir(out)                                       # the names are claimed by now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert empty_files(out) == [] and not any(n.endswith(".wav") for n in os.listdir(out))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claimed_by(path, pid: int) -> None:
    """An empty placeholder as sample_edges.claim leaves it: stamped with its claimer's process id."""
    path.write_bytes(b"")
    os.utime(path, ns=(pid, pid))


def test_the_next_run_reclaims_the_empty_names_a_killed_run_claimed(bundle, tmp_path, capsys):
    out = tmp_path / "takes"
    os.makedirs(out)
    claimed_by(out / "rain_on_a_roof.wav", dead_pid())                # what SIGKILL left: an empty claim
    claimed_by(out / "siren.wav", os.getppid())                       # a running process's claim: untouched
    (out / "notes.txt").write_bytes(b"")                              # a user's empty file: untouched
    assert sample.main(["rain on a roof", "--ckpt", bundle, "--steps", STEPS, "--out", str(out)]) == 0
    assert "is taken" not in capsys.readouterr().out
    assert (out / "rain_on_a_roof.wav").stat().st_size > 0 and not os.path.exists(out / "rain_on_a_roof-2.wav")
    assert sorted(empty_files(out)) == ["notes.txt", "siren.wav"]


# ---------------------------------------------------------------------------------------------------
# Flags out of range, entry points a user can reach, flags ignored without a word
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("context", [str(10 ** 30), "9"])
def test_context_beyond_the_grids_columns_is_one_sentence(bundle, tmp_path, capsys, context):
    err = one_sentence(capsys, sample.main(["rain on a roof", "--ckpt", bundle, "--sampler", "magnet", "--context",
                                            context, "--out", str(tmp_path)]))
    assert "--context" in err and "8 columns" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, words", [
    (["--row", "99", "--stages", "transformer"], "--row"),
    (["--row", "-1", "--stages", "transformer"], "--row"),
    (["--row", "0", "--stages", "everything"], "--stages"),
    (["--row", "0"], "--stages"),
    (["--end-to-end", "--threads", "0"], "--threads"),
    (["--thread-counts", "1,x"], "--thread-counts"),
])
def test_the_benchmarks_worker_flags_are_one_sentence(capsys, flags, words):
    assert words in one_sentence(capsys, benchmark.main(["tiny", "--runs", "1"] + flags))


@pytest.mark.parametrize("argv", [["5", "x"], ["5"], ["0", "53"], ["5", str(10 ** 9)], ["5", "53", "7"]])
def test_magnet_py_run_alone_with_bad_arguments_is_one_sentence(capsys, argv):
    assert "ROWS" in one_sentence(capsys, magnet.main(argv))


def test_magnet_py_run_alone_from_the_shell_is_one_sentence():
    run = subprocess.run([sys.executable, "magnet.py", "five", "53"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr


def test_eval_every_with_the_vqgan_stage_is_refused(tmp_path, capsys):
    err = one_sentence(capsys, train.main(TOY + ["--stage", "vqgan", "--steps", "1", "--eval-every", "1",
                                                 "--out", str(tmp_path / "r")]))
    assert "--eval-every" in err and "--stage vqgan" in err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("flag, value", [("--steps", "8"), ("--cfg", "5"), ("--temperature", "1")])
def test_magnet_refuses_specmaskgits_sampler_flags_and_names_its_own(bundle, capsys, tmp_path, flag, value):
    err = one_sentence(capsys, sample.main(["rain on a roof", "--ckpt", bundle, "--sampler", "magnet", flag, value,
                                            "--out", str(tmp_path)]))
    assert flag in err and all(f in err for f in ("--row-steps", "--guidance", "--magnet-temperature"))
    assert os.listdir(tmp_path) == []


def test_fad_clap_ckpt_without_laion_clap_names_that_flag(capsys, monkeypatch, tmp_path):
    import evaluate
    monkeypatch.setitem(sys.modules, "laion_clap", None)                       # as if not installed
    err = one_sentence(capsys, evaluate.main(["--fad", "--fad-clap-ckpt", str(tmp_path / "630k.pt")]))
    assert "--fad-clap-ckpt" in err and "--clap laion" not in err and "laion-clap" in err


def test_a_symbolic_link_at_the_run_folders_lock_is_one_sentence(tmp_path, capsys):
    out = tmp_path / "run"
    os.makedirs(out)
    os.symlink(tmp_path / "elsewhere", out / ".train.lock")
    err = one_sentence(capsys, train.main(TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(out)]))
    assert "symbolic link" in err and "Too many levels" not in err
    assert not os.path.exists(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------------------
# A newcomer's first runs
# ---------------------------------------------------------------------------------------------------

def test_peak_normalisation_is_said_as_information_not_as_a_warning(tmp_path, capsys):
    sample.save_outputs(str(tmp_path / "loud.wav"), 2.0 * torch.sin(torch.arange(4000) / 10))
    said = capsys.readouterr().out
    assert "peak-normalised" in said and "not calibrated in level" in said and "instead of clipping" not in said


def test_a_second_run_with_the_same_seed_says_the_take_is_the_seeds(bundle, tmp_path, capsys):
    argv = ["rain on a roof", "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path)]
    assert sample.main(argv) == 0
    assert "same take" not in capsys.readouterr().out
    assert sample.main(argv) == 0
    said = capsys.readouterr().out
    assert (tmp_path / "rain_on_a_roof.wav").read_bytes() == (tmp_path / "rain_on_a_roof-2.wav").read_bytes()
    assert "rain_on_a_roof-2.wav is the same take as rain_on_a_roof.wav" in said and "--seed" in said
    assert sample.main(argv + ["--seed", "1"]) == 0
    assert "same take" not in capsys.readouterr().out


@pytest.mark.parametrize("prompt, unknown", [("a cat meowing", "cat, meowing"), ("the", "")])
def test_a_prompt_whose_only_known_words_are_stop_words_is_refused(bundle, tmp_path, capsys, prompt, unknown):
    err = one_sentence(capsys, sample.main([prompt, "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path)]))
    assert "no word" in err and unknown in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["sample", "train", "evaluate", "speed.benchmark"])
def test_help_says_each_default_once_and_every_flag_has_help(command, capsys):
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(command).main(["--help"] if command != "speed.benchmark" else ["tiny", "--help"])
    text = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])                 # one entry per flag
    for entry in entries:
        assert len(re.findall(r"\bdefault\b", entry, flags=re.I)) <= 1, entry
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
    assert re.search(r"--seed SEED\s+\S", text) or command == "speed.benchmark", "--seed has no help"
    if command == "speed.benchmark":                                            # its hidden worker flags stay hidden
        assert not re.search(r"--(end-to-end|row|stages)\b", text), text


def test_the_page_shows_the_checkpoints_file_name_not_its_path(bundle, tmp_path):
    args = sample.parse_args(["rain on a roof", "--ckpt", bundle])
    pipe = pipeline.load_pipeline(bundle, verbose=False)
    model = sample_edges.page_settings(args, pipe, "text to audio", "rain on a roof")["model"]
    assert model.startswith(os.path.basename(bundle) + " (") and os.path.dirname(bundle) not in model


def test_a_rescorer_that_learnt_another_vqgans_tokens_is_refused(bundle, tmp_path, capsys):
    """--rescore-ckpt gets --ckpt's check: its transformer must have learnt this bundle's VQGAN's token ids."""
    from conftest import refused
    foreign = load_checkpoint(bundle)
    foreign["transformer"]["vqgan_hash"] = "0" * 16                     # as if trained on another codebook
    path = str(tmp_path / "foreign.pt")
    save_checkpoint(foreign, path)
    argv = ["rain on a roof", "--ckpt", bundle, "--sampler", "magnet", "--row-steps", "1", "--out", str(tmp_path / "o")]
    refused(capsys, sample.main, argv + ["--rescore-ckpt", path], ["foreign.pt", "another VQGAN"], tmp_path / "o")
    assert sample.main(argv + ["--rescore-ckpt", bundle]) == 0                # the bundle's own tokens: accepted
