"""sample.py: text to audio, zero-shot inpainting and bandwidth extension, and its one-sentence errors.

The models are tiny and untrained (tests/conftest.py's bundle: built once per module and saved as a
bundle like train.py --bundle writes), so the sounds are noise; what is checked is the machinery: which
tokens are kept, how long the output is, which files are written, reproducibility and the errors.
"""

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from data import toyworld
import mel
from ground import audio_io
import pipeline
import sample
import specmaskgit
from ground.runtime import load_checkpoint, save_checkpoint
from conftest import CLIP, refused, sample_args, tiny_bundle


STEPS = "4"                         # MaskGIT iterations in these tests (fast; the default is 16)


@pytest.fixture(scope="module")
def pipe8(tmp_path_factory):
    """A bundle whose tokens are 8 frames (2048 samples) wide: twice the columns of the paper's patches."""
    return pipeline.load_pipeline(tiny_bundle(tmp_path_factory.mktemp("bundle8"), patch_frames=8), verbose=False)


def run_ok(argv):
    assert sample.main(argv) == 0


def error_of(capsys, argv) -> str:
    """Run sample.py with bad input: exit code 2 and exactly one line on stderr, starting "error:"."""
    assert sample.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def band_energy(wav: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(wav)) ** 2
    hz = np.fft.rfftfreq(len(wav), 1 / mel.SR)
    return float(spec[(hz >= lo_hz) & (hz < hi_hz)].sum())


# ---------------------------------------------------------------------------------------------------
# Text to audio from the command line
# ---------------------------------------------------------------------------------------------------

def test_the_same_seed_writes_the_same_bytes(bundle, tmp_path):
    for folder in ("a", "b"):
        run_ok(["rain on a roof", "--ckpt", bundle, "--steps", STEPS, "--seed", "7", "--out", str(tmp_path / folder)])
    a, b = (tmp_path / "a" / "rain_on_a_roof.wav").read_bytes(), (tmp_path / "b" / "rain_on_a_roof.wav").read_bytes()
    assert a == b


def test_no_cfg_ramp_holds_the_guidance_scale_from_the_first_step(bundle, tmp_path, monkeypatch, capsys):
    scales = {}
    real = specmaskgit.guided_logits

    def spy(model, tokens, cond, masked, t):
        scales.setdefault(flag, []).append(t)
        return real(model, tokens, cond, masked, t)
    monkeypatch.setattr(specmaskgit, "guided_logits", spy)
    for flag in ([], ["--no-cfg-ramp"]):
        flag = tuple(flag)
        run_ok(["rain on a roof", "--ckpt", bundle, "--steps", "4", "--cfg", "2", "--out", str(tmp_path / str(len(flag)))] + list(flag))
    assert scales[()] == pytest.approx([0, 2 / 3, 4 / 3, 2])                   # Eq. 2's ramp, the paper's default
    assert scales[("--no-cfg-ramp",)] == [2.0] * 4                             # Table 1's ablation
    assert "--no-cfg-ramp" in error_of(capsys, ["--inpaint", str(tmp_path / "1" / "rain_on_a_roof.wav"),
                                                "--no-cfg-ramp", "--ckpt", bundle])


def test_n_takes_are_four_different_wavs_of_the_clip_length(bundle, tmp_path):
    run_ok(["a dog barking", "--n", "4", "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path)])
    names = sorted(os.listdir(tmp_path))
    assert names == [f"a_dog_barking_{k}.wav" for k in (1, 2, 3, 4)]
    wavs = [sf.read(tmp_path / n) for n in names]
    assert all(sr == mel.SR and len(w) == CLIP for w, sr in wavs)
    assert len({w.tobytes() for w, _ in wavs}) == 4


def test_each_take_of_each_prompt_is_drawn_from_its_prompts_embedding_and_saved_under_its_name(
        bundle, pipe, tmp_path, monkeypatch):
    """Two prompts x --n 2 go through the sampler as one batch of 4: take k of prompt i is row 2 i + k, drawn
    from prompt i's CLAP text embedding, and its file is named after prompt i with the suffix _{k+1}
    (sample.py: "<prompt's words>_<take>.wav" when --n > 1). A swapped index, a tiled batch or a repeated
    embedding puts a take under another prompt's name, or draws it from another prompt."""
    prompts, n = ["rain on a roof", "a dog barking"], 2
    conds, returned = [], []
    real_generate, real_text_to_audio = specmaskgit.generate, pipeline.text_to_audio

    def generate(model, cond, *args, **kwargs):
        conds.append(cond.clone())
        return real_generate(model, cond, *args, **kwargs)

    def text_to_audio(*args, **kwargs):
        returned.append(real_text_to_audio(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(specmaskgit, "generate", generate)
    monkeypatch.setattr(pipeline, "text_to_audio", text_to_audio)
    run_ok([*prompts, "--n", str(n), "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path)])
    [cond], [(wav, _, _, _)] = conds, returned
    alone = [pipe.clap.embed_text([p])[0] for p in prompts]                   # each prompt embedded on its own
    assert cond.shape[0] == wav.shape[0] == len(prompts) * n
    assert not torch.allclose(alone[0], alone[1])
    expected = {"rain_on_a_roof_1.wav": 0, "rain_on_a_roof_2.wav": 1, "a_dog_barking_1.wav": 2, "a_dog_barking_2.wav": 3}
    assert sorted(os.listdir(tmp_path)) == sorted(expected)
    for i in range(len(prompts)):
        for k in range(n):
            torch.testing.assert_close(cond[i * n + k], alone[i])
    rows = [audio_io.wav_bytes(pipeline.peak_normalised(w)) for w in wav]     # what each row's file holds
    assert len(set(rows)) == len(rows)                                        # four different takes
    for name, row in expected.items():
        assert (tmp_path / name).read_bytes() == rows[row], name


def test_one_wav_per_prompt_named_after_it_and_png_beside_it(bundle, tmp_path):
    run_ok(["Rain on a roof!", "a church bell", "--png", "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["a_church_bell.png", "a_church_bell.wav",
                                            "rain_on_a_roof.png", "rain_on_a_roof.wav"]
    assert (tmp_path / "a_church_bell.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------
# Inpainting: every token outside the gap is kept; the output is as long as the input
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which, col", [("pipe", 16 * mel.HOP), ("pipe8", 8 * mel.HOP)])   # samples per column
@pytest.mark.parametrize("length, start_s, end_s", [(20000, 0.2, 0.5),       # shorter than the clip: padded
                                                    (100000, 2.0, 2.5)])     # longer: a window around the gap
def test_inpainting_keeps_every_token_outside_the_gap(request, which, col, length, start_s, end_s):
    pipe = request.getfixturevalue(which)
    wav = 0.1 * torch.randn(length, generator=torch.Generator().manual_seed(1))
    out, before, after, _, _ = pipeline.inpaint(pipe, wav, start_s, end_s, "birds chirping", steps=4, seed=0,
                                              verbose=False)
    assert out.shape == wav.shape and before.shape == (1, 5, CLIP // col)
    assert pipeline.column_samples(pipe.vq) == col
    offset = pipeline.clip_window(length, CLIP, int(start_s * mel.SR), int(end_s * mel.SR), col)
    assert offset % col == 0 and 0 <= offset <= max(0, length - CLIP)
    gap = (int(start_s * mel.SR) - offset, int(end_s * mel.SR) - offset)   # the gap inside the window
    outside = [c for c in range(before.shape[-1]) if (c + 1) * col <= gap[0] or c * col >= gap[1]]
    assert len(outside) >= 1
    assert torch.equal(after[..., outside], before[..., outside])
    if length > CLIP:                                             # outside the model's window: the input itself
        assert torch.equal(out[:offset], wav[:offset]) and torch.equal(out[offset + CLIP:], wav[offset + CLIP:])


def test_inpainting_from_the_command_line_writes_an_output_as_long_as_the_input(bundle, tmp_path):
    wav = 0.1 * np.random.default_rng(0).standard_normal((50000, 2)).astype(np.float32)   # stereo, 44.1 kHz
    sf.write(tmp_path / "in.wav", wav, 44100)
    run_ok(["--inpaint", str(tmp_path / "in.wav"), "--start", "0.3", "--end", "0.6", "--ckpt", bundle,
            "--steps", STEPS, "--out", str(tmp_path / "out")])
    out, sr = sf.read(tmp_path / "out" / "in_inpainted.wav")
    assert sr == mel.SR and abs(len(out) - 50000 * mel.SR / 44100) <= 1


# ---------------------------------------------------------------------------------------------------
# Bandwidth extension: the low rows are kept, the top row (above ~4.3 kHz) is generated
# ---------------------------------------------------------------------------------------------------

def test_bwe_keeps_the_low_token_rows(pipe):
    wav = 0.1 * torch.randn(CLIP, generator=torch.Generator().manual_seed(2))
    out, before, after, _, _ = pipeline.bandwidth_extension(pipe, wav, steps=4, verbose=False)
    assert out.shape == wav.shape
    assert torch.equal(after[:, :-1], before[:, :-1])


def test_bwe_adds_energy_above_the_cutoff_of_a_real_band_limited_clip(pipe, band_limited_clips):
    wav = audio_io.load_audio(band_limited_clips[0])
    assert wav.shape[-1] > 2 * CLIP                               # longer than the tiny model's clip: 3 windows
    out, before, after, _, order = pipeline.bandwidth_extension(pipe, wav, steps=2, verbose=False)
    assert out.shape == wav.shape
    x, y = wav.numpy(), out.numpy()
    assert band_energy(y, pipeline.BWE_CUTOFF_HZ, mel.SR / 2) > 10 * band_energy(x, pipeline.BWE_CUTOFF_HZ, mel.SR / 2)
    # what made that energy (Table 7's zero-shot BWE): only the top token row (mel bins 64-79) is
    # regenerated; the four rows below are the input's own tokens, given to the sampler and never re-drawn
    assert torch.equal(after[:, :-1], before[:, :-1]) and bool((order[:, :-1] == -1).all())
    assert bool((order[:, -1] >= 0).all()) and not torch.equal(after[:, -1], before[:, -1])


def test_bwe_with_lfr_keeps_the_inputs_low_band(bundle, band_limited_clips, tmp_path):
    run_ok(["--bwe", band_limited_clips[0], "--lfr", "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)])
    name = os.path.splitext(os.path.basename(band_limited_clips[0]))[0] + "_bwe_lfr.wav"
    y, sr = sf.read(tmp_path / name, dtype="float32")
    x = audio_io.load_audio(band_limited_clips[0]).numpy()
    assert sr == mel.SR and len(y) == len(x)
    hz = np.fft.rfftfreq(CLIP, 1 / mel.SR)
    for offset in range(0, len(x) - CLIP + 1, CLIP):             # LFR works window by window
        fx, fy = np.fft.rfft(x[offset:offset + CLIP]), np.fft.rfft(y[offset:offset + CLIP])
        low = (hz > 0) & (hz < 4000)                              # (16-bit rounding may shift the mean: no DC)
        err = (np.abs(fy[low] - fx[low]) ** 2).sum()
        rounding = low.sum() * CLIP * (1 / 32768) ** 2 / 12      # the energy of 16-bit rounding noise there
        assert err < 1e-4 * (np.abs(fx[low]) ** 2).sum() + 10 * rounding


# ---------------------------------------------------------------------------------------------------
# Bad input: one sentence, exit code 2
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["rain", "--steps", "0"], "--steps"),
    (["rain", "--cfg", "-1"], "--cfg"),
    (["rain", "--n", "0"], "--n"),
    (["--inpaint", "x.wav", "--start", "2", "--end", "1"], "--start"),
    (["--inpaint", "x.wav", "--start", "1", "--end", "1"], "--start"),
])
def test_bad_flags_are_one_sentence_and_exit_2(capsys, flags, words):
    assert words in error_of(capsys, flags)


def test_inpainting_a_text_file_is_refused(bundle, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not audio\n" * 100)
    err = error_of(capsys, ["--inpaint", str(tmp_path / "notes.txt"), "--start", "0", "--end", "0.5",
                            "--ckpt", bundle, "--out", str(tmp_path)])
    assert "notes.txt" in err
    assert not os.path.exists(tmp_path / "notes_inpainted.wav")


@pytest.mark.parametrize("prompt", ["", "   ", "zzyzx " * 833, "雨の音"])
def test_prompts_without_a_known_word_are_refused(bundle, capsys, tmp_path, prompt):
    err = error_of(capsys, [prompt, "--ckpt", bundle, "--out", str(tmp_path)])
    assert "prompt is empty" in err or "no word" in err
    assert len(err) < 600                                         # a 5000-character prompt is not echoed whole
    assert os.listdir(tmp_path) == []


def test_a_missing_checkpoint_is_refused(capsys, tmp_path):
    err = error_of(capsys, ["rain on a roof", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert "nope.pt" in err and "does not exist" in err


def test_a_checkpoint_of_another_stage_is_refused(bundle, capsys, tmp_path):
    save_checkpoint(load_checkpoint(bundle, "bundle")["vqgan"], str(tmp_path / "vqgan.pt"))
    err = error_of(capsys, ["rain on a roof", "--ckpt", str(tmp_path / "vqgan.pt"), "--out", str(tmp_path / "o")])
    assert "vqgan" in err and "bundle" in err


# ---------------------------------------------------------------------------------------------------
# Outputs a user can trust: --out FILE, no take overwrites another, nothing clips, big numbers refused
# ---------------------------------------------------------------------------------------------------

def test_out_naming_a_wav_writes_exactly_that_file(bundle, tmp_path):
    run_ok(["rain on a roof", "--png", "--ckpt", bundle, "--steps", STEPS, "--out", str(tmp_path / "rain.wav")])
    assert sorted(os.listdir(tmp_path)) == ["rain.png", "rain.wav"]             # a file, not a folder
    x, sr = sf.read(tmp_path / "rain.wav")
    assert sr == mel.SR and x.shape == (CLIP,)


def test_out_naming_a_wav_with_several_takes_is_refused_before_anything_is_written(bundle, capsys, tmp_path):
    err = error_of(capsys, ["rain on a roof", "--n", "2", "--ckpt", bundle, "--steps", STEPS,
                            "--out", str(tmp_path / "rain.wav")])
    assert "rain.wav" in err and "2 takes" in err
    assert os.listdir(tmp_path) == []


def test_prompts_with_one_name_get_one_file_each_and_nothing_is_overwritten(bundle, tmp_path, capsys):
    long_a, long_b = "rain on a roof " * 5 + "loud", "rain on a roof " * 5 + "soft"   # equal in 60 characters
    assert sample.slug(long_a) == sample.slug(long_b)
    run_ok(["rain on a roof", "RAIN on a roof!!", long_a, long_b, "--ckpt", bundle, "--steps", STEPS,
            "--out", str(tmp_path)])
    first = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    stem = sample.slug(long_a)
    assert sorted(first) == sorted(["rain_on_a_roof.wav", "rain_on_a_roof-2.wav", stem + ".wav", stem + "-2.wav"])
    assert len(set(first.values())) == 4                                          # four different takes
    assert "rain_on_a_roof-2.wav instead" in capsys.readouterr().out              # and the user is told
    run_ok(["rain on a roof", "--ckpt", bundle, "--steps", STEPS, "--seed", "5", "--out", str(tmp_path)])
    assert "rain_on_a_roof-3.wav" in os.listdir(tmp_path)                         # a second call: the next number
    assert all((tmp_path / n).read_bytes() == b for n, b in first.items())       # the first call's files unchanged


def test_audio_beyond_full_scale_is_scaled_down_not_clipped(tmp_path, capsys):
    t = torch.arange(4000) / mel.SR
    wav = 3.0 * torch.sin(2 * math.pi * 440 * t)                                  # peak 3: would clip
    sample.save_outputs(str(tmp_path / "loud.wav"), wav)
    y, _ = sf.read(tmp_path / "loud.wav", dtype="float32")
    assert abs(np.abs(y).max() - 1.0) < 1e-4                                      # full scale, not beyond
    assert np.allclose(y, wav.numpy() / 3.0, atol=1e-4)                          # one gain: the shape is kept
    assert "scaled down by 9.5 dB" in capsys.readouterr().out
    quiet = 0.5 * torch.sin(2 * math.pi * 440 * t)
    sample.save_outputs(str(tmp_path / "quiet.wav"), quiet)
    assert np.allclose(sf.read(tmp_path / "quiet.wav", dtype="float32")[0], quiet.numpy(), atol=1e-4)   # untouched


def test_audio_with_nan_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(sample.UserError, match="NaN"):
        sample.save_outputs(str(tmp_path / "nan.wav"), torch.tensor([0.1, float("nan"), 0.2]))
    assert not os.path.exists(tmp_path / "nan.wav")


@pytest.mark.parametrize("prompt", ["lluvia sobre el techo", "下雨的声音", "صوت المطر على السطح", "café olé"])
def test_a_prompt_in_words_the_toy_model_does_not_know_lists_what_it_knows(bundle, capsys, tmp_path, prompt):
    err = error_of(capsys, [prompt, "--ckpt", bundle, "--out", str(tmp_path)])
    assert "no word" in err and all(kind in err for kind in toyworld.KINDS)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, words", [
    (["rain", "--cfg", "1e38"], "--cfg"),
    (["rain", "--cfg", "nan"], "--cfg"),
    (["rain", "--temperature", "1e300"], "--temperature"),
    (["--inpaint", "x.wav", "--start", "1e308", "--end", "inf"], "--end"),
    (["--inpaint", "x.wav", "--start", "0", "--end", "1e308"], "--end"),
    (["a", "b", "c", "--n", "30"], "90 takes"),
])
def test_large_finite_numbers_are_refused_in_one_sentence(capsys, flags, words):
    assert words in error_of(capsys, flags)


# ---------------------------------------------------------------------------------------------------
# A hand-edited or truncated bundle: one sentence naming the entry
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, words", [
    (lambda b: b.update(num_samples="abc"), "num_samples"),
    (lambda b: b.update(num_samples=-4096), "num_samples"),
    (lambda b: b.update(vqgan=[1, 2]), "vqgan"),
    (lambda b: b["transformer"].pop("config"), "transformer"),
    (lambda b: b["transformer"]["config"].update(width="wide"), "transformer"),
    (lambda b: b["vqgan"]["model"].popitem(), "vqgan"),
    (lambda b: b["vqgan"]["config"].update(patch_frames=12), "patch_frames"),
    (lambda b: b.update(num_samples=CLIP + mel.HOP), "num_samples"),          # not a whole token column
])
def test_an_edited_bundle_is_one_sentence_naming_the_entry(bundle, capsys, tmp_path, edit, words):
    b = load_checkpoint(bundle, "bundle")
    edit(b)
    save_checkpoint(b, str(tmp_path / "edited.pt"))
    err = error_of(capsys, ["rain on a roof", "--ckpt", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "o")])
    assert words in err and "edited.pt" in err


def test_a_transformer_on_the_16_frame_grid_does_not_fit_a_vqgan_of_8_frame_tokens(tmp_path, capsys):
    path = tiny_bundle(tmp_path, patch_frames=8, cols=CLIP // (16 * mel.HOP))    # 8 columns; the VQGAN makes 16
    err = error_of(capsys, ["rain on a roof", "--ckpt", path, "--out", str(tmp_path / "o")])
    assert "5 x 8 tokens" in err and "5 x 16" in err and "does not fit" in err
    fitting = pipeline.load_pipeline(tiny_bundle(tmp_path, patch_frames=8), verbose=False)
    wav, log_mel, _, tokens = pipeline.text_to_audio(fitting, ["rain on a roof"], steps=2, verbose=False)
    assert tokens.shape == (1, 5, 16) and log_mel.shape == (1, 80, CLIP // mel.HOP) and wav.shape == (1, CLIP)


# ---------------------------------------------------------------------------------------------------
# Long inputs: the last half second can be inpainted; --bwe says where it is
# ---------------------------------------------------------------------------------------------------

def test_inpainting_reaches_the_last_half_second_of_a_file(pipe):
    length = 100000                                                               # not a whole number of columns
    wav = 0.1 * torch.randn(length, generator=torch.Generator().manual_seed(4))
    start_s, end_s = length / mel.SR - 0.5, length / mel.SR
    out, before, after, _, _ = pipeline.inpaint(pipe, wav, start_s, end_s, "rain", steps=2, verbose=False)
    assert out.shape == wav.shape
    offset = pipeline.clip_window(length, CLIP, int(start_s * mel.SR), length, 4096)
    assert offset % 4096 == 0 and offset <= int(start_s * mel.SR) and length - offset <= CLIP   # the gap is inside
    assert torch.equal(out[:offset], wav[:offset])                               # before the window: the input
    changed = (after != before).any(1)[0]                                         # (cols,) token columns changed
    first_gap_col = (int(start_s * mel.SR) - offset) // 4096
    assert not changed[:first_gap_col].any()                                      # nothing before the gap


def test_bwe_of_a_long_file_prints_clip_i_of_n(pipe, capsys):
    wav = 0.1 * torch.randn(3 * CLIP - 100, generator=torch.Generator().manual_seed(5))
    pipeline.bandwidth_extension(pipe, wav, steps=1)
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines() if line.startswith("clip ")] == \
        ["clip 1 of 3", "clip 2 of 3", "clip 3 of 3"]


def test_a_loud_inpainted_window_is_scaled_and_the_input_around_it_kept_sample_for_sample(pipe, monkeypatch):
    real = pipeline.tokens_to_audio
    monkeypatch.setattr(pipeline, "tokens_to_audio", lambda p, t, **kw: (lambda m, w: (m, 50 * w))(*real(p, t, **kw)))
    length = 3 * CLIP
    wav = 0.1 * torch.randn(length, generator=torch.Generator().manual_seed(6))
    out, _, _, _, _ = pipeline.inpaint(pipe, wav, 2.0, 2.3, "rain", steps=2, verbose=False)
    offset = pipeline.clip_window(length, CLIP, int(2.0 * mel.SR), int(2.3 * mel.SR), 4096)
    assert 0 < offset and offset + CLIP < length
    assert torch.equal(out[:offset], wav[:offset]) and torch.equal(out[offset + CLIP:], wav[offset + CLIP:])
    assert abs(float(out[offset:offset + CLIP].abs().max()) - 1.0) < 1e-6        # full scale, not 50 x


def test_a_bf16_pipeline_holds_the_transformer_in_bf16_and_keeps_the_tokenizer_and_clap_in_fp32():
    fp32 = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, dtype="fp32", verbose=False)
    bf16 = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, dtype="bf16", verbose=False)
    assert bf16.dtype == torch.bfloat16
    linears = [m for m in bf16.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)             # converted once
    assert all(p.dtype == torch.float32 for p in list(bf16.vq.parameters()) + list(bf16.clap.parameters()))
    assert all(p.dtype == torch.float32 for p in fp32.transformer.parameters())           # fp32 untouched
    t = fp32.transformer.cfg
    tokens, mask = torch.randint(0, t.n_codes, (2, t.rows, t.cols)), torch.rand(2, t.rows, t.cols) < 0.5
    cond = torch.nn.functional.normalize(torch.randn(2, t.cond_dim), dim=-1)
    with torch.inference_mode():
        reference = fp32.transformer(tokens, cond, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):                                 # as sample_tokens runs it
            out = bf16.transformer(tokens, cond, mask).float()
    assert (out.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
    torch.testing.assert_close(out.softmax(-1), reference.softmax(-1), atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Prompts, seeds and gaps (first written as hostile-input probes)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["雨が屋根に降る", "дождь", "!!!"])
def test_a_prompt_with_no_latin_word_is_one_sentence_listing_the_kinds(bundle, capsys, tmp_path, prompt):
    err = refused(capsys, sample.main, [prompt, "--ckpt", bundle, "--steps", "2", "--out", str(tmp_path)],
                  ["no word", prompt, toyworld.KINDS[0]], tmp_path)
    assert os.listdir(tmp_path) == []


def test_another_seed_writes_other_bytes(bundle, tmp_path):
    for seed in ("1", "2"):
        assert sample.main(["rain on a roof", "--ckpt", bundle, "--steps", "4", "--seed", seed,
                            "--out", str(tmp_path / seed)]) == 0
    a, b = ((tmp_path / s / "rain_on_a_roof.wav").read_bytes() for s in ("1", "2"))
    assert len(a) == len(b) and a != b


def test_a_gap_within_one_sample_is_named_as_such(bundle, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(mel.SR, np.float32), mel.SR)
    refused(capsys, sample.main, ["--inpaint", str(clip), "--start", "-0.0", "--end", "1e-9",
                                  *sample_args(bundle, tmp_path / "o")], ["one sample"], tmp_path / "o")
