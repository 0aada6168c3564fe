"""The robustness sweep: every flag of train.py and sample.py with a bad value, every kind of bad audio
file, checkpoints of another stage or config, unwritable outputs, odd prompts, and SIGKILL mid-run and
mid-save.

What a bad input must give: exit code 2 and one sentence on stderr ("error: ...", also for what
argparse itself catches, a wrong type or an unknown choice), no
traceback (the scripts run in-process: a traceback is an exception escaping main, and the test fails
with it), and nothing half-written left behind (no .wav, .png, checkpoint or temporary file). What
tests/test_sample.py and tests/test_train.py already check (--steps 0, --cfg -1, --n 0, --start >= --end,
a missing --ckpt, a vqgan.pt as --ckpt, empty and unknown-word prompts, a text file as --inpaint,
--lr 5, --workers -1, a resume with another preset or width, a SIGKILL at a random moment) is not
repeated here.
"""

import argparse
import os
import signal
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from data import toyworld
import mel
from ground import audio_io
import pipeline
import sample
import train
import vqgan
from ground.runtime import UserError, config_from_dict, load_checkpoint, save_checkpoint
from test_sample import bundle  # noqa: F401  (bundle: four tiny untrained models, a module fixture)
from test_train import TOY, log_rows, transformer_run_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def cases(rows) -> list:
    """(argv, words) rows, or pytest.param(argv, words, marks=...), as params named by their flags."""
    out = []
    for row in rows:
        values, marks = (row.values, row.marks) if hasattr(row, "values") else (row, ())
        out.append(pytest.param(*values, marks=marks, id=" ".join(values[0]) or "no arguments"))
    return out


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


# ---------------------------------------------------------------------------------------------------
# sample.py: every flag with a bad value
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A one-second wav, a text file, and a path that does not exist."""
    d = tmp_path_factory.mktemp("files")
    sf.write(d / "clip.wav", 0.1 * np.random.default_rng(0).standard_normal(mel.SR).astype(np.float32), mel.SR)
    (d / "notes.txt").write_text("not a checkpoint\n" * 10)
    return {"{clip}": str(d / "clip.wav"), "{text}": str(d / "notes.txt"), "{missing}": str(d / "missing.pt")}


SAMPLE_BAD = [
    (["rain", "--steps", "257"], ["--steps", "257"]),
    (["rain", "--steps", "abc"], ["--steps"]),
    (["rain", "--steps", "2.5"], ["--steps"]),
    (["rain", "--cfg", "strong"], ["--cfg"]),
    (["rain", "--cfg", "nan"], ["--cfg"]),
    (["rain", "--cfg", "inf"], ["--cfg"]),
    (["rain", "--temperature", "-1"], ["--temperature"]),
    (["rain", "--temperature", "nan"], ["--temperature"]),
    (["rain", "--temperature", "inf"], ["--temperature"]),
    (["rain", "--seed", "lucky"], ["--seed"]),
    (["rain", "--seed", str(2 ** 70)], ["--seed"]),
    (["rain", "--n", "65"], ["--n", "65"]),
    (["rain", "--n", "two"], ["--n"]),
    (["rain", "--device", "tpu"], ["--device", "tpu"]),
    (["rain", "--dtype", "fp64"], ["--dtype", "fp64"]),
    (["rain", "--clap", "gpt"], ["--clap"]),
    (["rain", "--clap", "laion"], ["--clap-ckpt"]),
    (["rain", "--clap-ckpt", "{missing}"], ["laion-clap"]),
    (["rain", "--ckpt", "{text}"], ["{text}", "not a readable"]),
    (["rain", "--ckpt", os.path.join(ROOT, "tests")], ["tests", "is a folder, not a checkpoint file"]),
    (["rain", "--vocoder-ckpt", "{missing}"], ["{missing}", "does not exist"]),
    (["rain", "--vocoder-ckpt", "{bundle}"], ["bundle", "not a vocoder"]),
    (["--inpaint", "{clip}", "--start", "0.1"], ["--end"]),
    (["--inpaint", "{clip}", "--start", "-1", "--end", "0.5"], ["--start"]),
    (["--inpaint", "{clip}", "--start", "zero", "--end", "0.5"], ["--start"]),
    (["--inpaint", "{clip}", "--start", "0.1", "--end", "5"], ["--end", "1.00 s"]),          # past the input's end
    (["--inpaint", "{clip}", "--start", "0", "--end", "1", "--bwe", "{clip}"], ["--inpaint", "--bwe"]),
    (["--inpaint", "{clip}", "--start", "0", "--end", "0.5", "rain", "birds"], ["one prompt"]),
    (["--inpaint", "{clip}", "--start", "0", "--end", "inf"], ["--end"]),
    (["--inpaint", "{missing}", "--start", "0", "--end", "0.5"], ["{missing}", "does not exist"]),
    (["--bwe", "{missing}"], ["{missing}", "does not exist"]),
    (["rain", "--start", "1", "--end", "2"], ["--inpaint"]),
    (["rain", "--lfr"], ["--bwe"]),
    (["--benchmark", "huge"], ["--benchmark"]),
    (["rain", "--runs", "0"], ["--runs"]),
    (["--benchmark", "tiny", "--threads", "0"], ["--threads"]),
    (["rain", "--threads", "1"], ["--threads", "--benchmark"]),
    (["rain", "--out", "{text}/out"], ["notes.txt", "output folder"]),       # a folder under a regular file
    ([], ["prompt"]),
    (["rain", "--sampler", "autoregressive"], ["--sampler"]),
    (["rain", "--sampler", "magnet", "--span-len", "0"], ["--span-len"]),
    (["rain", "--sampler", "magnet", "--span-len", "999"], ["--span-len", "columns"]),
    (["rain", "--sampler", "magnet", "--span-scoring", "mean"], ["--span-scoring"]),
    (["rain", "--sampler", "magnet", "--guidance", "10"], ["--guidance"]),
    (["rain", "--sampler", "magnet", "--guidance", "nan,1"], ["--guidance"]),
    (["rain", "--sampler", "magnet", "--magnet-temperature", "-1"], ["--magnet-temperature"]),
    (["rain", "--sampler", "magnet", "--top-p", "0"], ["--top-p"]),
    (["rain", "--sampler", "magnet", "--row-steps", "8,x"], ["--row-steps"]),
    (["rain", "--sampler", "magnet", "--row-steps", "8,4"], ["--row-steps", "token row"]),
    (["rain", "--sampler", "magnet", "--context", "-1"], ["--context"]),
    (["rain", "--sampler", "magnet", "--rescore-ckpt", "{text}"], ["{text}"]),
    (["rain", "--sampler", "magnet", "--rescore-weight", "2"], ["--rescore-weight"]),
    (["rain", "--sampler", "magnet", "--prefix-cols", "-2"], ["--prefix-cols"]),
]


@pytest.mark.parametrize("argv, words", cases(SAMPLE_BAD))
def test_sample_flag_with_a_bad_value_is_one_sentence(bundle, files, capsys, monkeypatch, tmp_path, argv, words):
    monkeypatch.setitem(sys.modules, "laion_clap", None)             # as on a machine without it, always
    names = dict(files, **{"{bundle}": bundle})
    for key, value in names.items():
        argv = [a.replace(key, value) for a in argv]
        words = [w.replace(key, value) for w in words]
    out = tmp_path / "out"
    refused(capsys, sample.main, ["--ckpt", bundle, "--out", str(out), "--steps", "2"] + argv, words, out)
    assert os.listdir(os.path.dirname(files["{text}"])) == ["clip.wav", "notes.txt"]


# ---------------------------------------------------------------------------------------------------
# train.py: every flag with a bad value, before any training
# ---------------------------------------------------------------------------------------------------

TRAIN_BAD = [
    (["--data", "README.md", "--clap", "tiny", "--preset", "tiny"], ["README.md", "not a folder"]),
    (["--data", "audiocaps", "--root", "/no/such/audiocaps", "--clap", "tiny", "--preset", "tiny"], ["/no/such/audiocaps"]),
    (["--stage", "everything"], ["--stage"]),
    (["--preset", "huge"], ["--preset"]),
    (["--steps", "-3"], ["--steps"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--batch-size", "many"], ["--batch-size"]),
    (["--lr", "0"], ["--lr"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "fast"], ["--lr"]),
    (["--warmup", "-1"], ["--warmup"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--num-samples", "4096.5"], ["--num-samples"]),
    (["--n-clips", "0"], ["--n-clips"]),
    (["--clap", "gpt"], ["--clap"]),
    (["--clap", "laion", "--clap-ckpt", "/no/such/630k.pt"], ["laion-clap"]),
    (["--vocoder-ckpt", "/no/such/generator_v1"], ["/no/such/generator_v1"]),
    (["--vocoder-ckpt", "README.md"], ["README.md"]),
    (["--device", "tpu"], ["--device"]),
    (["--dtype", "fp64"], ["--dtype"]),
    (["--log-every", "0"], ["--log-every"]),
    (["--ckpt-every", "0"], ["--ckpt-every"]),
    (["--preview-every", "0"], ["--preview-every"]),
    (["--workers", "some"], ["--workers"]),
    (["--workers", "10000"], ["--workers", "10000", "per CPU core"]),
    (["--batch-size", "100000"], ["--batch-size", "at most"]),                 # a batch that asked for all memory
    (["--seed", "lucky"], ["--seed"]),
    (["--seed", str(2 ** 40)], ["--seed"]),
    (["--bundle", "{file}/bundle.pt"], ["{file}"]),
    (["--transformer.n_heads", "3"], ["--transformer.width", "--transformer.n_heads"]),
    (["--transformer.dropout", "2"], ["--transformer.dropout"]),
    (["--transformer.mask_schedule", "zigzag"], ["mask_schedule", "zigzag"]),
    (["--transformer.width", "0"], ["--transformer.width"]),
    (["--transformer.conditional_mask", "maybe"], ["--transformer.conditional_mask"]),
    (["--transformer.label_smoothing", "nan"], ["--transformer.label_smoothing"]),
    (["--transformer.no_such_field", "3"], ["--transformer.no_such_field"]),
    (["--vqgan.n_codes", "0"], ["--vqgan.n_codes"]),
    (["--vqgan.channel_mult", "1,0,2,2,4"], ["--vqgan.channel_mult"]),
    (["--vqgan.n_res_blocks", "0"], ["--vqgan.n_res_blocks"]),
    (["--vqgan.norm_groups", "3"], ["norm_groups"]),
    (["--clap.text_heads", "5"], ["--clap.text_heads"]),
    (["--clap.audio_channels", "4,x"], ["--clap.audio_channels"]),
    (["--vocoder.resblock", "3"], ["--vocoder.resblock"]),
    (["--vocoder.upsample_rates", "8,8,2", "--stage", "vocoder"], ["upsample_rates"]),   # train.py checks it
    (["--eval-every", "0"], ["--eval-every"]),
    (["--eval-clips", "1"], ["--eval-clips"]),
    (["--toy-mix", "1.5"], ["--toy-mix"]),
    (["--toy-mix", "nan"], ["--toy-mix"]),
    (["--init-from", "/no/such/transformer.pt"], ["--init-from", "--stage transformer"]),
    (["--init-from", "{file}", "--stage", "transformer"], ["{file}", "not a readable"]),
]


@pytest.mark.parametrize("argv, words", cases(TRAIN_BAD))
def test_train_flag_with_a_bad_value_is_one_sentence_before_any_training(capsys, monkeypatch, tmp_path, argv, words):
    """--stage all (the default): a bad value for the last stage is refused before the first one trains."""
    monkeypatch.setitem(sys.modules, "laion_clap", None)
    monkeypatch.chdir(ROOT)
    (tmp_path / "file").write_text("a file, not a folder")
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    words = [w.replace("{file}", str(tmp_path / "file")) for w in words]
    out = tmp_path / "run"
    refused(capsys, train.main, TOY + ["--steps", "1", "--out", str(out)] + argv, words, out)


def parser_of(module) -> argparse.ArgumentParser:
    """The ArgumentParser a script's parse_args builds (caught as it starts parsing)."""
    class Caught(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Caught(self)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(Caught) as caught:
            module.parse_args([])
    return caught.value.args[0]


@pytest.mark.parametrize("module, rows, elsewhere", [
    (sample, SAMPLE_BAD, {}),
    (train, TRAIN_BAD, {"--out": "test_train.py: test_an_output_folder_under_a_file_is_refused"})])
def test_every_flag_that_takes_a_value_is_in_the_sweep(module, rows, elsewhere):
    """A flag added to a script without a bad-value case here fails this test. The generated
    --<stage>.<field> flags share one code path (train.stage_config): one case per stage is enough."""
    swept = {a for row in rows for a in (row.values if hasattr(row, "values") else row)[0] if a.startswith("--")}
    flags = {o for a in parser_of(module)._actions if a.nargs != 0 for o in a.option_strings}
    missing = {f for f in flags if "." not in f} - swept - set(elsewhere)
    assert not missing, f"add a bad value of {sorted(missing)} to the sweep"
    stages = {f.split(".")[0] for f in flags if "." in f}
    assert stages == {f.split(".")[0] for f in swept if "." in f}


# ---------------------------------------------------------------------------------------------------
# Bad audio files for --inpaint and --bwe
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
# Checkpoints of another stage or another config
# ---------------------------------------------------------------------------------------------------

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


def test_sample_refuses_a_bundle_without_a_transformer_and_a_resume_state(toy_run, capsys, tmp_path):
    vqgan_only = str(toy_run / "vqgan_only.pt")
    assert sorted(load_checkpoint(vqgan_only, "bundle")) == ["data", "num_samples", "stage", "vqgan"]
    base = ["rain on a roof", "--out", str(tmp_path), "--ckpt"]
    refused(capsys, sample.main, base + [vqgan_only], ["no transformer", "--stage transformer"], tmp_path)
    refused(capsys, sample.main, base + [str(toy_run / "transformer.state.pt")],
            ["transformer checkpoint", "not a bundle"], tmp_path)
    half = tmp_path / "half.pt"
    half.write_bytes((toy_run / "vqgan_only.pt").read_bytes()[:5000])          # a copy cut short
    refused(capsys, sample.main, base + [str(half)], ["half.pt", "not a readable"])
    assert sorted(os.listdir(tmp_path)) == ["half.pt"]


def test_train_refuses_to_bundle_a_transformer_trained_on_another_vqgan(toy_run, capsys, tmp_path):
    """Retraining the VQGAN alone with another codebook leaves the old transformer.pt beside it."""
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    bundle_path = out / "model.pt"
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--vqgan.n_codes", "16", "--out", str(out),
                                       "--bundle", str(bundle_path)],
            ["transformer.pt", "16 codes", "--stage transformer"])
    assert not bundle_path.exists() and not [n for n in os.listdir(out) if ".partial-" in n]
    # the way out the sentence names: retrain the transformer on the new tokens, then the bundle is written;
    # the token cache is rebuilt even when the new vqgan.pt is younger than the old one by a microsecond
    old_ns = os.stat(toy_run / "vqgan.pt").st_mtime_ns
    os.utime(out / "vqgan.pt", ns=(old_ns + 1000, old_ns + 1000))
    capsys.readouterr()
    assert train.main(TOY + ["--stage", "transformer", "--steps", "1", "--out", str(out),
                             "--bundle", str(bundle_path)]) == 0
    assert "reading the token cache" not in capsys.readouterr().out
    assert load_checkpoint(str(out / "transformer_cache.pt"), "cache")["tokens"].max() < 16
    pipe = pipeline.load_pipeline(str(bundle_path), verbose=False)
    assert pipe.transformer.cfg.n_codes == pipe.vq.cfg.n_codes == 16


def test_sample_refuses_a_bundle_whose_transformer_does_not_fit_its_vqgan(bundle, capsys, tmp_path):
    """A bundle put together by hand (or by an older train.py) from stages of two runs."""
    b = load_checkpoint(bundle, "bundle")
    small = config_from_dict(vqgan.Config, dict(b["vqgan"]["config"], n_codes=8))
    b["vqgan"] = vqgan.Trainer(small).checkpoint()                             # 8 codes; the transformer draws 32
    save_checkpoint(b, str(tmp_path / "mixed.pt"))
    refused(capsys, sample.main, ["rain on a roof", "--ckpt", str(tmp_path / "mixed.pt"), "--steps", "2",
                                  "--out", str(tmp_path / "out")], ["mixed.pt"], tmp_path / "out")


@pytest.mark.parametrize("damage", ["another stage", "truncated"])
def test_train_resume_refuses_a_state_of_another_stage_or_a_damaged_one(toy_run, capsys, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    state = out / "transformer.state.pt"
    if damage == "another stage":
        shutil.copy(out / "vqgan.state.pt", state)
        words = ["vqgan checkpoint", "not a transformer one"]
    else:
        state.write_bytes(state.read_bytes()[:2000])
        words = ["transformer.state.pt", "not a readable"]
    before = state.read_bytes()
    refused(capsys, train.main, TOY + ["--stage", "transformer", "--steps", "3", "--resume", "--out", str(out)], words)
    assert state.read_bytes() == before                                         # refused, not overwritten


# ---------------------------------------------------------------------------------------------------
# Unwritable outputs
# ---------------------------------------------------------------------------------------------------

def test_sample_output_name_taken_by_a_folder_is_left_alone_and_the_take_goes_elsewhere(bundle, capsys, tmp_path):
    (tmp_path / "rain_on_a_roof.wav").mkdir()
    assert sample.main(["rain on a roof", "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)]) == 0
    assert "writing rain_on_a_roof-2.wav instead" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["rain_on_a_roof-2.wav", "rain_on_a_roof.wav"]
    assert not os.listdir(tmp_path / "rain_on_a_roof.wav")


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


# ---------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["雨が屋根に降る", "дождь", "!!!"])
def test_a_prompt_with_no_latin_word_is_one_sentence_listing_the_kinds(bundle, capsys, tmp_path, prompt):
    err = refused(capsys, sample.main, [prompt, "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)],
                  ["no word", prompt, toyworld.KINDS[0]], tmp_path)
    assert os.listdir(tmp_path) == []


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


# ---------------------------------------------------------------------------------------------------
# Seeds (the same seed giving the same bytes is tests/test_sample.py's)
# ---------------------------------------------------------------------------------------------------

def test_another_seed_writes_other_bytes(bundle, tmp_path):
    for seed in ("1", "2"):
        assert sample.main(["rain on a roof", "--ckpt", bundle, "--steps", "4", "--seed", seed,
                            "--out", str(tmp_path / seed)]) == 0
    a, b = ((tmp_path / s / "rain_on_a_roof.wav").read_bytes() for s in ("1", "2"))
    assert len(a) == len(b) and a != b


# ---------------------------------------------------------------------------------------------------
# SIGKILL: between two checkpoints, and while one is being written; then --resume to the end
# ---------------------------------------------------------------------------------------------------

# train.py in a child process, slowed down so that the kill lands where the test wants it:
#   slow-steps    every training step sleeps 0.1 s first: a kill after the first checkpoint lands mid-run
#   slow-save:N   the resume state of step N is written half, flushed to disk, then the writer waits (and
#                 touches SENTINEL): the kill lands inside save_checkpoint, between torch.save and the rename
SHIM = r"""
import io, os, sys, time
import torch
import specmaskgit
mode, sentinel, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "slow-steps":
    real_step = specmaskgit.Trainer.step
    def step(self, batch, s):
        time.sleep(0.1)
        return real_step(self, batch, s)
    specmaskgit.Trainer.step = step
else:
    n, real_save = int(mode.split(":")[1]), torch.save
    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("step") == n and "trainer" in obj):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        whole = buf.getvalue()
        f.write(whole[:len(whole) // 2])
        f.flush()
        os.fsync(f.fileno())
        open(sentinel, "w").close()
        time.sleep(600)
        f.write(whole[len(whole) // 2:])
    torch.save = save
import train
sys.exit(train.main(argv))
"""


def run_until_killed(mode, flags, ready, sentinel, delay=0.0):
    """Start the shimmed train.py, wait until ready() is true, wait `delay`, SIGKILL it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SHIM, mode, str(sentinel), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        why = proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "still running"
        assert ready(), f"the run never got there: {why}"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL                                  # killed, not finished


def resume_to_the_end(flags, out, s, steps, warmup, capsys):
    """--resume from step s: it says so, trains s+1 .. steps with the uninterrupted run's learning rates,
    and leaves a state at `steps` and no temporary file."""
    capsys.readouterr()
    assert train.main(flags + ["--resume"]) == 0
    assert f"resuming at step {s} " in capsys.readouterr().out
    assert load_checkpoint(os.path.join(out, "transformer.state.pt"), "transformer")["step"] == steps
    rows = log_rows(out, "transformer")[-(steps - s):]
    assert [r["step"] for r in rows] == list(range(s + 1, steps + 1))
    for r in rows:
        assert r["lr"] == pytest.approx(1e-3 * train.lr_factor(r["step"] - 1, warmup, steps), rel=1e-9)
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_sigkill_between_checkpoints_then_resume_runs_to_the_end(toy_run, tmp_path, capsys):
    out = transformer_run_from(toy_run, tmp_path / "run")
    state = os.path.join(out, "transformer.state.pt")
    flags = TOY + ["--stage", "transformer", "--steps", "30", "--ckpt-every", "5", "--log-every", "1",
                   "--lr", "1e-3", "--warmup", "4", "--out", out]
    run_until_killed("slow-steps", flags, lambda: os.path.exists(state), tmp_path / "unused", delay=0.25)
    s = load_checkpoint(state, "transformer")["step"]
    assert s % 5 == 0 and 5 <= s < 30
    assert load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")["stage"] == "transformer"
    assert log_rows(out, "transformer")[-1]["step"] > s                        # it was killed between checkpoints
    resume_to_the_end(flags, out, s, 30, 4, capsys)


def test_sigkill_while_a_checkpoint_is_written_then_resume_runs_to_the_end(toy_run, tmp_path, capsys):
    out = transformer_run_from(toy_run, tmp_path / "run")
    sentinel = tmp_path / "half_written"
    flags = TOY + ["--stage", "transformer", "--steps", "8", "--ckpt-every", "2", "--log-every", "1",
                   "--lr", "1e-3", "--warmup", "2", "--out", out]
    run_until_killed("slow-save:4", flags, sentinel.exists, sentinel)
    temporary = [n for n in os.listdir(out) if ".partial-" in n]
    assert len(temporary) == 1 and temporary[0].startswith("transformer.state.pt.partial-")   # step 4's, cut in half
    with pytest.raises(UserError):
        load_checkpoint(os.path.join(out, temporary[0]))
    assert load_checkpoint(os.path.join(out, "transformer.state.pt"), "transformer")["step"] == 2   # intact
    assert load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")["stage"] == "transformer"
    resume_to_the_end(flags, out, 2, 8, 2, capsys)


# ---------------------------------------------------------------------------------------------------
# What train.py must never lose, and must never write: users' files in --out, the last good checkpoint
# of a diverging run, a complete bundle, a checkpoint on a full disk. The data-loss tests compare bytes.
# ---------------------------------------------------------------------------------------------------

CLAP_RUN = TOY + ["--stage", "clap", "--log-every", "1"]           # the fastest stage that needs nothing else


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


def poison_after(stage_step):
    """A Trainer.step that, after its real step `stage_step`, sets one weight to NaN: a run diverging there."""
    import clap
    real = clap.Trainer.step

    def step(self, batch, s):
        metrics = real(self, batch, s)
        if s == stage_step:
            with torch.no_grad():
                next(iter(self.model.parameters())).fill_(float("nan"))
        return metrics
    return step


@pytest.mark.parametrize("ckpt_every, words", [
    ("2", ["loss stopped being finite at step 4", "step 2) is kept", "no bundle", "--lr"]),   # the loss shows it first
    ("1", ["no longer finite at step 3", "step 2) is kept", "no bundle"])])                 # the weights, before saving
def test_a_diverging_run_stops_keeps_the_last_finite_checkpoint_and_writes_no_bundle(
        tmp_path, capsys, monkeypatch, ckpt_every, words):
    import clap
    out, bundle_path = tmp_path / "run", tmp_path / "bundle.pt"
    assert train.main(CLAP_RUN + ["--steps", "2", "--out", str(out)]) == 0        # a good checkpoint at step 2
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    monkeypatch.setattr(clap.Trainer, "step", poison_after(2))
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "6", "--ckpt-every", ckpt_every, "--resume",
                                            "--out", str(out), "--bundle", str(bundle_path)], words)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not bundle_path.exists() and not [n for n in os.listdir(out) if ".partial-" in n]


def test_a_huge_lr_is_refused_or_caught_and_nan_weights_never_load(tmp_path, capsys):
    """--lr at its bound trains (finite here, or stopped by the check above); a file with NaN weights is
    refused in one sentence naming the file and the weight, by the resume and by every loader."""
    out = tmp_path / "run"
    rc = train.main(CLAP_RUN + ["--steps", "3", "--lr", "0.99", "--warmup", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 or (rc == 2 and "stopped being finite" in err)
    state = load_checkpoint(str(out / "clap.state.pt"), "clap")
    assert all(torch.isfinite(t).all() for t in state["trainer"]["model"].values() if t.is_floating_point())
    name = next(k for k, t in state["trainer"]["model"].items() if t.is_floating_point())
    state["trainer"]["model"][name] = torch.full_like(state["trainer"]["model"][name], float("nan"))
    save_checkpoint(state, str(out / "clap.state.pt"))
    refused(capsys, train.main, CLAP_RUN + ["--steps", "4", "--resume", "--out", str(out)],
            ["clap.state.pt", f"trainer.model.{name}", "NaN"])


def test_a_full_disk_while_saving_is_one_sentence_and_the_old_checkpoint_stays(tmp_path, capsys, monkeypatch):
    from ground import runtime
    out = tmp_path / "run"
    assert train.main(CLAP_RUN + ["--steps", "1", "--out", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in ("clap.pt", "clap.state.pt")}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")               # written, then the disk was full at the flush

    monkeypatch.setattr(runtime.torch, "save", full_disk)
    capsys.readouterr()
    refused(capsys, train.main, CLAP_RUN + ["--steps", "2", "--resume", "--out", str(out)],
            ["clap.pt", "No space left on device", "unchanged"])
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_a_bundle_is_never_made_worse_by_a_one_stage_run(toy_run, tmp_path, capsys):
    """An existing bundle's other stages are kept; a transformer that would not fit the new tokens is a
    refusal that leaves the bundle's bytes as they were; a file that is not a bundle is never overwritten."""
    bundle_path = tmp_path / "model.pt"
    shutil.copy(toy_run / "vqgan_only.pt", tmp_path / "vqgan_only.pt")
    # a complete bundle: the toy run's vqgan, clap and transformer
    full = tmp_path / "full_run"
    shutil.copytree(toy_run, full)
    assert train.main(TOY + ["--stage", "transformer", "--steps", "1", "--out", str(full), "--resume",
                             "--bundle", str(bundle_path)]) == 0
    assert sorted(s for s in train.STAGES if s in load_checkpoint(str(bundle_path), "bundle")) == ["clap", "transformer", "vqgan"]
    # a vocoder trained alone into a fresh folder joins the bundle; nothing is lost
    assert train.main(TOY + ["--stage", "vocoder", "--steps", "1", "--out", str(tmp_path / "voc"),
                             "--bundle", str(bundle_path)]) == 0
    merged = load_checkpoint(str(bundle_path), "bundle")
    assert all(s in merged for s in ("vqgan", "clap", "transformer"))
    pipeline.load_pipeline(str(bundle_path), verbose=False)
    # a VQGAN retrained alone: the bundle's transformer learnt other tokens, so no bundle, and its bytes stay
    before = bundle_path.read_bytes()
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(tmp_path / "vq"),
                                       "--bundle", str(bundle_path)], ["transformer", "vqgan", "new path"])
    assert bundle_path.read_bytes() == before
    # a file that is not one of our bundles is refused before any training
    (tmp_path / "essay.txt").write_text("my essay")
    refused(capsys, train.main, CLAP_RUN + ["--steps", "1", "--out", str(tmp_path / "c"),
                                            "--bundle", str(tmp_path / "essay.txt")], ["essay.txt"], tmp_path / "c")
    assert (tmp_path / "essay.txt").read_text() == "my essay"


def test_a_vqgan_run_never_asks_for_laion_clap_and_data_is_checked_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)            # as on a machine without it
    assert train.main(TOY + ["--stage", "vqgan", "--clap", "laion", "--steps", "1", "--out", str(tmp_path / "a")]) == 0
    refused(capsys, train.main, ["--data", "audiocaps", "--root", "/no/such/root", "--clap", "laion",
                                 "--out", str(tmp_path / "b")], ["/no/such/root"])


# Bundles that load but hold nonsense: one sentence naming the file and the entry, before any model is built.
def _damage(b, how):
    if how == "no config":
        del b["vqgan"]["config"]
    elif how == "no weights":
        del b["transformer"]["model"]
    elif how == "a list for a stage":
        b["clap"] = [1, 2, 3]
    elif how == "a list for a config":
        b["vqgan"]["config"] = [1, 2]
    elif how == "a string for a weight":
        b["transformer"]["model"]["head.weight"] = "weights"
    elif how == "a string for a number":
        b["transformer"]["config"]["n_layers"] = "two"
    elif how == "a negative layer count":
        b["transformer"]["config"]["n_layers"] = -1
    elif how == "a terabyte width":
        b["transformer"]["config"]["width"] = 2 ** 40
    elif how == "NaN weights":
        b["vqgan"]["model"]["quantizer.codebook.weight"][0, 0] = float("nan")
    elif how == "a NaN in a config":
        b["vqgan"]["config"]["beta"] = float("nan")


@pytest.mark.parametrize("how, words", [
    ("no config", ["vqgan.config", "missing"]),
    ("no weights", ["transformer.model", "missing"]),
    ("a list for a stage", ["'clap'", "list"]),
    ("a list for a config", ["vqgan.config", "list"]),
    ("a string for a weight", ["transformer.model.head.weight", "str"]),
    ("a string for a number", ["n_layers", "'two'"]),
    ("a negative layer count", ["n_layers", "-1"]),
    ("a terabyte width", ["width", str(2 ** 40)]),
    ("NaN weights", ["vqgan.model.quantizer.codebook.weight", "NaN"]),
    ("a NaN in a config", ["vqgan.config.beta", "nan"]),
])
def test_a_bundle_holding_nonsense_is_one_sentence_naming_the_file_and_entry(bundle, tmp_path, capsys, how, words):
    b = load_checkpoint(bundle, "bundle")
    _damage(b, how)
    path = tmp_path / "damaged.pt"
    save_checkpoint(b, str(path))
    err = refused(capsys, sample.main, ["rain on a roof", "--ckpt", str(path), "--steps", "2",
                                        "--out", str(tmp_path / "out")], words, tmp_path / "out")
    if how != "a string for a number":                              # config_from_dict does not know the path
        assert "damaged.pt" in err


def test_a_weight_of_the_wrong_shape_is_one_sentence():
    from ground import runtime
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=r"'weight' is \(2, 4\), where its config needs \(2, 3\)"):
        runtime.load_weights(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "test checkpoint")
    with pytest.raises(UserError, match="lacks weight 'bias'"):
        runtime.load_weights(model, {"weight": torch.zeros(2, 3)}, "test checkpoint")
