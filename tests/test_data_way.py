"""The data's way goes forward (DESIGN.md, "The layout"): `python sample.py "rain on a roof"` is traced in-process
and the method files its data passes through are read off the trace, in the order they are entered.

What is counted: every Python call into one of the root's method files (clap.py, specmaskgit.py, vqgan.py,
mel.py, vocoder.py) or the driver (pipeline.py, sample.py), between sample.py handing the prompt to
pipeline.text_to_audio and the waveform coming back to sample.py. Consecutive calls into one file are one
visit; a return goes back to where the data came from and is not a new visit. Loading the models before and
writing the files after are not on the data's way. Calls into the folders (the step observer in pictures/,
autocast in ground/, the chunked vocoder in speed/) are not counted: they are not the method's files.
"""

import os
import sys

import pipeline
import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_FILES = ("clap.py", "specmaskgit.py", "vqgan.py", "mel.py", "vocoder.py")
COUNTED = set(METHOD_FILES) | {"pipeline.py", "sample.py"}


def counted(code) -> str | None:
    path = os.path.abspath(code.co_filename)
    return os.path.basename(path) if os.path.dirname(path) == ROOT and os.path.basename(path) in COUNTED else None


def trace_text_to_audio(argv: list[str]) -> list[tuple[str, str]]:
    """(file, function) of every counted call from sample.py's call of pipeline.text_to_audio to its return."""
    calls, inside = [], [False]

    def profile(frame, event, arg):
        if event == "call" and counted(frame.f_code):
            if frame.f_code is pipeline.text_to_audio.__code__ and counted(frame.f_back.f_code) == "sample.py":
                inside[0] = True
            if inside[0]:
                calls.append((counted(frame.f_code), frame.f_code.co_name))
        elif event == "return" and frame.f_code is pipeline.text_to_audio.__code__:
            inside[0] = False

    sys.setprofile(profile)
    try:
        assert sample.main(argv) == 0
    finally:
        sys.setprofile(None)
    return calls


def visits(calls: list[tuple[str, str]]) -> list[str]:
    """sample.py, then each file entered (consecutive calls into one file collapsed), then sample.py again."""
    way = ["sample.py"]
    for file, _ in calls:
        if file != way[-1]:
            way.append(file)
    return way + ["sample.py"]


def test_rain_on_a_roof_goes_clap_specmaskgit_vqgan_mel_then_the_vocoder_each_file_once(tmp_path):
    calls = trace_text_to_audio(["rain on a roof", "--out", str(tmp_path / "out"), "--dtype", "fp32",
                                 "--device", "cpu", "--steps", "2"])
    way = visits(calls)
    method = [f for f in way if f in METHOD_FILES]
    first = sorted(set(method), key=method.index)
    bundle_has_vocoder = "vocoder.py" in method
    # the bundle has no neural vocoder (README): Griffin-Lim in mel.py is the last stage, so mel.py is the last file
    assert first == ["clap.py", "specmaskgit.py", "vqgan.py", "mel.py"] + (["vocoder.py"] if bundle_has_vocoder else [])
    assert method == first, f"a method file is visited twice: {' -> '.join(way)}"
    if not bundle_has_vocoder:
        in_mel = [name for file, name in calls if file == "mel.py"]
        assert in_mel.index("denormalize") < in_mel.index("griffin_lim")      # the mel, then the sound
    assert way[1] == "pipeline.py" and (tmp_path / "out" / "rain_on_a_roof.wav").exists()
    # sample -> pipeline -> clap -> specmaskgit -> vqgan -> mel (-> vocoder) -> sample
    assert len(way) - 1 <= 8, " -> ".join(way)
