"""Every flag of sample.py and train.py with a bad value, and sizes beyond any machine for train.py and the
benchmark: exit code 2 and one sentence on stderr ("error: ...", also for what argparse itself catches, a
wrong type or an unknown choice), no traceback, and nothing written. A flag added to either script without
a bad value here fails test_every_flag_that_takes_a_value_is_in_the_sweep.

What tests/test_sample.py and tests/test_train.py already check (--steps 0, --cfg -1, --n 0, --start >= --end,
a missing --ckpt, a vqgan.pt as --ckpt, empty and unknown-word prompts, a text file as --inpaint, --lr 5,
--workers -1, a resume with another preset or width) is not repeated here.
"""

import argparse
import os
import sys

import numpy as np
import pytest
import soundfile as sf

import mel
import sample
import train
from conftest import TOY, refused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cases(rows) -> list:
    """(argv, words) rows, or pytest.param(argv, words, marks=...), as params named by their flags."""
    out = []
    for row in rows:
        values, marks = (row.values, row.marks) if hasattr(row, "values") else (row, ())
        out.append(pytest.param(*values, marks=marks, id=" ".join(values[0]) or "no arguments"))
    return out


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
    (["rain", "--sampler", "magnet", "--context", "-2"], ["--context", "-1 or more"]),
    (["rain", "--sampler", "magnet", "--context", "1", "--row-steps", "16"], ["--context", "one number per row"]),
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
    (["--eval-toy-mix", "0.5"], ["--eval-toy-mix", "--eval-every"]),
    (["--eval-every", "10", "--eval-toy-mix", "2"], ["--eval-toy-mix", "between 0 and 1"]),
    (["--transformer.ratio_draw", "uniform"], ["--transformer.ratio_draw", "cosine"]),
    (["--transformer.by_row", "maybe"], ["--transformer.by_row"]),
    (["--init-from", "/no/such/transformer.pt"], ["--init-from", "--stage transformer"]),
    (["--recipe", "banquet"], ["--recipe", "classroom", "demo"]),
    (["--stop-at", "-1"], ["--stop-at"]),
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


def test_a_vqgan_run_never_asks_for_laion_clap_and_data_is_checked_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)            # as on a machine without it
    assert train.main(TOY + ["--stage", "vqgan", "--clap", "laion", "--steps", "1", "--out", str(tmp_path / "a")]) == 0
    refused(capsys, train.main, ["--data", "audiocaps", "--root", "/no/such/root", "--clap", "laion",
                                 "--out", str(tmp_path / "b")], ["/no/such/root"])


# ---------------------------------------------------------------------------------------------------
# Every flag is in the sweep
# ---------------------------------------------------------------------------------------------------

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
# Sizes beyond any machine
# ---------------------------------------------------------------------------------------------------

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
