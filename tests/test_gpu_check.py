"""speed/gpu_check.py on a CPU, at the tiny preset: every figure of its table comes out, finite, naming the device
and dtype; the CUDA-graph row says n/a (the one figure a CPU cannot have); the MAGNeT sample is a readable
wav of one clip; and the host reads it prints are what the dispatch-mode counter finds.

One thread (OMP_NUM_THREADS=1): on a CPU shared with other processes, a 2-thread pool waits at every
operation's barrier, many times slower for these small models.
"""

import math
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from speed import benchmark
from speed import fast
from speed import gpu_check
import mel
import specmaskgit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ["rtf, one 2.97 s clip, cold", "rtf, one 2.97 s clip, warm", "clips/s, batch of 2",
           "training tokens/s, batch 48", "peak memory GB, inference", "peak memory GB, whole check",
           "host syncs per step, specmaskgit.generate", "host syncs per step, magnet.generate",
           "MAGNeT sample", "CUDA graph"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """{figure: (value, device, dtype)} from one run of the command, and its --out folder."""
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, "-m", "speed.gpu_check", "--preset", "tiny", "--device", "cpu",
                           "--out", str(out), "--runs", "1", "--batch", "2"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "figure":
            rows[cells[0]] = tuple(cells[1:])
    return rows, out


def row(rows, start):
    (found,) = [v for k, v in rows.items() if k.startswith(start)]
    return found


def test_every_figure_is_printed_finite_with_its_device_and_dtype(table):
    rows, _ = table
    for figure in FIGURES:
        value, device, dtype = row(rows, figure)
        assert device == fast.cpu_name() and dtype.startswith("fp32"), figure
        if figure in ("MAGNeT sample", "CUDA graph"):
            continue
        number = float(value.split()[0])
        assert math.isfinite(number) and number >= 0, (figure, value)
        if not figure.startswith("host syncs"):
            assert number > 0, (figure, value)


def test_the_graph_row_is_not_available_on_a_cpu(table):
    rows, _ = table
    assert row(rows, "CUDA graph")[0] == "n/a (no CUDA graphs on the CPU)"


def test_the_magnet_sample_is_one_clip_at_the_projects_rate(table):
    rows, out = table
    path = row(rows, "MAGNeT sample")[0]
    assert path == str(out / "magnet_sample.wav")
    wav, sr = sf.read(path)
    assert sr == mel.SR and wav.shape == (mel.TOY_SAMPLES,) and abs(wav).max() > 0


def test_the_host_syncs_printed_are_the_dispatch_modes_count(table):
    rows, _ = table
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(specmaskgit.PRESETS["tiny"]).eval()
    cond = torch.randn(1, model.cfg.cond_dim)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = {name: benchmark.host_syncs(name, model, cond, torch.float32) for name in ("specmaskgit", "magnet")}
    finally:
        torch.set_num_threads(threads)
    assert counts["specmaskgit"] == (0, 16)                       # the sampler never reads a value back
    for name, (count, steps) in counts.items():
        assert row(rows, f"host syncs per step, {name}.generate")[0] == f"{count / steps:.2f} ({count} in {steps} steps)"


def test_the_counter_sees_item_and_scalar_reads():
    x = torch.ones(3)
    with benchmark.HostSyncs() as mode:
        x.sum().item()
        bool(x.any())
        x * 2
    assert mode.count == 2


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--runs", "0"], ["--dtype", "fp16"], ["--preset", "huge"]])
def test_bad_flags_are_one_sentence_and_exit_2(argv, capsys):
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
