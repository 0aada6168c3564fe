"""speed/benchmark.py and the fast path's pieces: every speed-up must compute the same thing as the plain path.

Speed itself is not asserted (a benchmark command prints it); what is checked is that the slow variants
the benchmark times are faithful, that the int8 transformer stays close to fp32, that the dtype choice
follows the CPU, and that the benchmark's table and its final line come out.
"""

import dataclasses
import os
import re

import pytest
import torch

from speed import benchmark
from speed import fast
from formats import hifigan_format
from ground import runtime
import pipeline
import sample
import specmaskgit
import vocoder
from conftest import small_model

DEMO = pipeline.DEFAULT_CKPT


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    cfg = specmaskgit.Config(n_layers=2, width=64, n_heads=2, mlp=128, n_codes=64, rows=5, cols=8)
    return specmaskgit.SpecMaskGIT(cfg).eval()


def test_separate_cfg_passes_give_the_batched_guided_logits():
    model = tiny_transformer()
    tokens = torch.randint(0, 64, (3, 40))
    masked = torch.rand(3, 40) < 0.5
    cond = torch.randn(3, 512)
    with torch.no_grad():
        for t in (0.0, 1.0, 3.0):
            batched = specmaskgit.guided_logits(model, tokens, cond, masked, t)
            plain = benchmark.plain_guided_logits(model, tokens, cond, masked, t)
            skipped = benchmark.plain_guided_logits(model, tokens, cond, masked, t, skip_zero_scale=True)
            assert torch.equal(benchmark.plain_guided_logits(model, tokens, cond, masked, t, batched_cfg=True), batched)
            assert torch.allclose(batched, plain, atol=1e-4), t
            assert torch.allclose(batched, skipped, atol=1e-4), t


def test_the_benchmarks_plain_variants_draw_the_same_tokens_as_generate():
    model = small_model()
    cond = torch.randn(2, 16)
    calls = []

    def counting_forward(*args, **kwargs):
        calls.append(args[0].shape[0])                                # the batch of each forward pass
        return forward(*args, **kwargs)
    forward, model.forward = model.forward, counting_forward
    with torch.no_grad():
        plain = benchmark.plain_generate(model, cond, steps=4, seed=1, loop_device="cpu")
    assert calls == [2] * 8                                           # two passes of B = 2 per step, t = 0 included
    calls.clear()
    fast_one = specmaskgit.generate(model, cond, steps=4, seed=1)
    assert calls == [2] + [4] * 3                                     # l_u alone at t = 0, then one batch of 2B
    assert torch.equal(plain, fast_one)


def test_a_sampler_loop_on_the_host_commits_the_same_tokens():
    model = small_model()
    cond = torch.randn(2, 16)
    with torch.no_grad():
        host = benchmark.plain_generate(model, cond, steps=5, seed=4, guidance=3.0, temperature=1.5,
                                        batched_cfg=True, skip_zero_scale=True, loop_device="cpu")
    assert host.device.type == "cpu" and torch.equal(host, specmaskgit.generate(model, cond, steps=5, seed=4))


def test_the_plain_sampler_with_autograd_on_draws_the_same_tokens_as_the_fast_one():
    model = tiny_transformer()
    cond = torch.randn(2, 512)
    m = benchmark.Models.__new__(benchmark.Models)              # only the fields run_transformer reads
    m.transformer, m.int8, m.device = model, None, "cpu"
    plain = benchmark.run_transformer(m, cond, benchmark.Tricks(), steps=6)
    quick = benchmark.run_transformer(m, cond, benchmark.Tricks(inference_mode=True, skip_zero_scale=True,
                                                                batched_cfg=True), steps=6)
    assert torch.equal(plain, quick)


def test_rows_switch_on_one_trick_more_each_and_end_at_the_chosen_dtype():
    defaults = {f.name: f.default for f in dataclasses.fields(benchmark.Tricks)}
    for dtype, device in ((torch.qint8, "cpu"), (torch.float32, "cpu"), (torch.bfloat16, "cuda")):
        table = benchmark.rows(dtype, device)
        on = [sum(getattr(t, name) != value for name, value in defaults.items()) for _, t in table]
        assert on == list(range(len(table)))                     # 0, 1, 2, ... tricks: cumulative, one per row
    cpu, gpu = benchmark.rows(torch.qint8), benchmark.rows(torch.bfloat16, "cuda")
    assert cpu[-1][1].dtype == torch.qint8 and not any(t.device_sampler or t.cuda_graph for _, t in cpu)
    assert gpu[-1][1].cuda_graph and gpu[-1][1].device_sampler and gpu[-1][1].dtype == torch.bfloat16
    assert len(benchmark.rows(torch.float32)) == len(cpu) - 1    # fp32 is no extra row


def test_no_row_times_what_its_device_does_not_change():
    """vocode chunks on a CPU only, so CUDA has no chunked-vocoder row; the GPU's rows are CUDA's only."""
    for dtype in (torch.float32, torch.bfloat16):
        gpu = [label for label, _ in benchmark.rows(dtype, "cuda")]
        assert not any(t.chunked_vocoder for _, t in benchmark.rows(dtype, "cuda"))
        assert "+ vocoder in cache-sized chunks" not in gpu and "+ transformer blocks as a CUDA graph" in gpu
    assert any(t.chunked_vocoder for _, t in benchmark.rows(torch.float32, "cpu"))


def test_benchmark_does_not_import_sample():
    import ast
    tree = ast.parse(open(benchmark.__file__).read())
    names = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for a in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sample" not in names


def test_folding_weight_norm_and_chunking_keep_the_vocoders_output():
    torch.manual_seed(0)
    cfg = dataclasses.replace(vocoder.PRESETS["tiny"], upsample_initial_channel=32)
    gen = vocoder.Generator(cfg).eval()
    log_mel = torch.randn(1, 80, 300)
    with torch.no_grad():
        plain = gen(log_mel)[:, 0]
    folded = vocoder.Generator(cfg).eval()
    folded.load_state_dict(gen.state_dict())
    chunked = fast.vocode_chunked(hifigan_format.remove_weight_norm(folded), log_mel, torch.float32, chunk=128)
    assert hifigan_format.has_weight_norm(gen) and not hifigan_format.has_weight_norm(folded)
    assert torch.allclose(plain, chunked, atol=1e-5)


def test_int8_transformer_logits_stay_close_to_fp32_on_the_trained_demo_model():
    ckpt = runtime.load_checkpoint(DEMO, "bundle")["transformer"]
    fp32 = runtime.build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config, ckpt, "transformer").eval()
    int8 = fast.quantize_int8(runtime.build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config, ckpt, "transformer").eval())
    assert type(int8.blocks[0].mlp[0]) is not torch.nn.Linear                # replaced by the int8 layer
    assert type(int8.cond_proj) is torch.nn.Linear                           # the CLAP projection stays fp32
    g = torch.Generator().manual_seed(0)
    cfg = fp32.cfg
    tokens = torch.randint(0, cfg.n_codes, (4, cfg.rows, cfg.cols), generator=g)
    mask = torch.rand(4, cfg.rows, cfg.cols, generator=g) < 0.5
    cond = torch.nn.functional.normalize(torch.randn(4, cfg.cond_dim, generator=g), dim=-1)
    with torch.no_grad():
        a, b = fp32(tokens, cond, mask), int8(tokens, cond, mask)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1                                                     # changed, but by little
    same = a.argmax(-1) == b.argmax(-1)                                      # (4, 80)
    assert same.float().mean() > 0.85                                        # the rest: near-ties between codes ...
    confident = a.softmax(-1).amax(-1) > 0.2                                 # ... where fp32 itself hesitates
    assert confident.any() and same[confident].float().mean() > 0.95


def test_auto_dtype_is_measured_on_a_cpu_for_large_models_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))   # an A100: bf16
    widths = []
    choice = ["int8"]
    monkeypatch.setattr(fast, "measure_cpu_dtype", lambda width, verbose=True: widths.append(width) or choice[0])
    assert fast.inference_dtype("cpu", "auto", 768, verbose=False) == torch.qint8
    choice[0] = "bf16"
    assert fast.inference_dtype("cpu", None, 768, verbose=False) == torch.bfloat16
    assert widths == [768, 768]
    assert fast.inference_dtype("cpu", "auto", 192, verbose=False) == torch.float32   # the toy stays fp32
    assert fast.inference_dtype("cuda", "auto", 768, verbose=False) == torch.bfloat16
    assert fast.inference_dtype("cpu", "fp32", 768, verbose=False) == torch.float32   # --dtype overrides
    assert fast.inference_dtype("cpu", "int8", 192, verbose=False) == torch.qint8
    assert widths == [768, 768]                                  # none of those measured
    with pytest.raises(runtime.UserError, match="--dtype must be one of"):
        fast.inference_dtype("cpu", "int4", 768, verbose=False)
    with pytest.raises(runtime.UserError, match="for CPUs"):
        fast.inference_dtype("cuda", "int8", 768, verbose=False)


def test_sample_py_int8_writes_a_clip_like_fp32(tmp_path):
    for dtype in ("fp32", "int8"):
        assert sample.main(["rain on a roof", "--steps", "4", "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    import soundfile as sf
    a, sr_a = sf.read(tmp_path / "fp32" / "rain_on_a_roof.wav")
    b, sr_b = sf.read(tmp_path / "int8" / "rain_on_a_roof.wav")
    assert sr_a == sr_b and a.shape == b.shape


def test_benchmark_tiny_prints_the_table_and_the_rtf_line(capsys):
    assert benchmark.main(["tiny", "--runs", "1", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(table) == len(benchmark.rows(torch.float32))
    assert table[0].rstrip().endswith("1.00x |")
    batch = re.search(r"batch of 4: ([\d.]+) s, ([\d.]+) clips per second", out)   # the throughput line
    assert batch and float(batch.group(2)) == pytest.approx(4 / float(batch.group(1)), rel=0.05, abs=0.01)
    last = out.strip().splitlines()[-1]
    assert re.search(r"[\d.]+ s warm, .* first call in the process [\d.]+ s \(cold\)", out)
    m = re.fullmatch(r"rtf=([\d.]+) seconds=([\d.]+) audio_seconds=2\.972 device=cpu dtype=fp32", last)
    assert m, last
    assert float(m.group(1)) == pytest.approx(float(m.group(2)) / 2.972, rel=0.01)


def test_threads_time_the_fast_path_once_per_thread_count_in_its_own_process(capsys):
    counts = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    rows = benchmark.speed_against_threads("tiny", "cpu", "fp32", 1, counts)
    assert [threads for threads, _, _ in rows] == counts                    # each worker ran on its count
    assert all(rtf == pytest.approx(seconds / (65536 / 22050)) for _, seconds, rtf in rows)
    out = capsys.readouterr().out
    assert out.count("\n| 1 |") == 1 and "real-time line" in out


def test_threads_need_benchmark_and_whole_counts(capsys):
    for argv in (["rain", "--threads", "1"], ["--benchmark", "tiny", "--threads", "0"],
                 ["--benchmark", "tiny", "--threads", "one"]):
        assert sample.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "--threads" in err and "\n" not in err


def test_sample_benchmark_runs_benchmark_py_in_its_own_process_with_the_thread_counts(monkeypatch):
    """sample.py --benchmark hands over to speed/benchmark.py as a process (a command never imports another)."""
    calls = []
    monkeypatch.setattr(sample.subprocess, "call", lambda argv, cwd: calls.append((argv, cwd)) or 0)
    assert sample.main(["--benchmark", "tiny", "--threads", "1", "--device", "cpu", "--dtype", "fp32", "--runs", "2"]) == 0
    ((argv, cwd),) = calls
    assert argv[1:3] == ["-m", "speed.benchmark"] and os.path.isfile(os.path.join(cwd, "speed", "benchmark.py"))
    assert argv[3:] == ["tiny", "--device", "cpu", "--dtype", "fp32", "--runs", "2", "--thread-counts", "1"]
    assert benchmark.parse_args(argv[3:]).thread_counts == [1]                # and speed/benchmark.py reads them back
    monkeypatch.setattr(sample.subprocess, "call", lambda argv, cwd: 3)
    assert sample.main(["--benchmark", "tiny", "--device", "cpu"]) == 2       # a failed benchmark is not a success


def test_train_throughput_times_grids_of_the_asked_columns_and_counts_their_tokens(monkeypatch, capsys):
    seen = []

    def step(self, batch, step):
        seen.append(tuple(batch["tokens"].shape))
    monkeypatch.setattr(specmaskgit.Trainer, "step", step)
    monkeypatch.setattr(benchmark, "median_seconds", lambda fn, runs, device: [fn() for _ in range(2)] and 0.5)
    assert benchmark.main(["tiny", "--train", "--batch", "3", "--cols", "32", "--runs", "1"]) == 0
    assert set(seen) == {(3, 5, 32)}
    out = capsys.readouterr().out
    assert "5 x 32 tokens" in out and f"0.500 s/step, {3 * 5 * 32 / 0.5:,.0f} tokens/s" in out
    for argv in (["tiny", "--cols", "32"], ["tiny", "--train", "--cols", "0"]):
        assert benchmark.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "--cols" in err and "\n" not in err
