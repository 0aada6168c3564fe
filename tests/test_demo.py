"""The bundled demo model (checkpoints/toy.pt): the README's first command works and makes the right sound."""

import os

import soundfile as sf
import torch

from data import toyworld
import pipeline
import sample

CKPT = pipeline.DEFAULT_CKPT


def test_readme_first_command_writes_a_wav_of_the_demo_clip_length(tmp_path):
    assert os.path.getsize(CKPT) <= 25e6                                  # the bundle stays small
    assert sample.main(["rain on a roof", "--out", str(tmp_path)]) == 0
    wav, sr = sf.read(tmp_path / "rain_on_a_roof.wav")
    assert sr == 22050 and len(wav) == torch.load(CKPT, weights_only=True)["num_samples"]
    assert 0.01 < abs(wav).max() <= 1.0                                    # a sound, not silence or clipping garbage


def test_demo_rain_is_heard_as_rain_by_tinyclap():
    pipe = pipeline.load_pipeline(CKPT, verbose=False)
    wav, _, _, _ = pipeline.text_to_audio(pipe, ["rain on a roof"], n=4, seed=0, verbose=False)
    names = pipe.clap.embed_text(toyworld.KINDS)                               # (12, 512)
    verdicts = (pipe.clap.embed_audio(wav) @ names.T).argmax(1)            # zero-shot: nearest kind name
    assert (verdicts == toyworld.KINDS.index("rain on a roof")).sum() >= 3, [toyworld.KINDS[i] for i in verdicts]


def test_a_prompt_with_no_known_word_lists_the_toy_kinds(capsys):
    assert sample.main(["zxqv blorp"]) == 2
    err = capsys.readouterr().err
    assert "only knows the toy sounds" in err and "a church bell" in err
