"""
speed/benchmark.py — how fast is text-to-audio here, and what each speed-up buys.

Paper: Sec. 1, Sec. 5.1 and Fig. 2: a 9.85 s clip in 16 sampling steps runs in real time on 4 Xeon
cores and 30x faster than real time on one RTX A6000.

What is timed: one clip, 16 MaskGIT steps with classifier-free guidance (Eq. 2, the ramp from 0 to 3),
then the SpecVQGAN decoder, then the HiFiGAN generator, all with random weights of the named preset
(speed does not depend on the weights; full = 170 M transformer, SpecVQGAN, HiFiGAN V1). The CLAP
text tower is left out: it runs once per prompt, a small part of the whole.

The table starts from the plain fp32 path, the code a first implementation would run, and switches on
one speed-up per row, cumulatively. Each of the three stages is timed on its own after a warm-up, in
a fresh Python process per row, once per round; a row's figure is its median over --runs rounds and
its total the sum of its stages; a stage a row does not change is not timed again. On CUDA two more rows
follow: the sampler on the device (the plain rows bring the logits to the host every step) and the
transformer's blocks as a CUDA graph (speed/fast.py); the chunked vocoder's row is a CPU's only (pipeline.py
does not chunk on CUDA). The last lines time the fast path end to end (the calls sample.py makes: generate,
decode, vocode), again in a fresh process: its first call (cold: kernel choice, allocator, graph capture)
beside the steady state, its peak memory, and the throughput of batches of clips (--batches).

  python -m speed.benchmark tiny                       # the toy demo's sizes
  python -m speed.benchmark full                       # the paper's sizes (3 runs per row)
  python -m speed.benchmark full --device cuda --batches 16,64   # the same, with batched throughput
  python -m speed.benchmark full --train --batch 4     # training throughput of the transformer stage
  python -m speed.benchmark tiny --train --batch 32 --cols 32   # the demo recipe's 8-frame tokens
  python -m speed.benchmark full --gpu-check           # speed/gpu_check.py's table (its docstring says what each row is)
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ground import audio_io
from speed import fast
from formats import hifigan_format
import magnet
import mel
import pipeline
import specmaskgit
import vocoder
import vqgan
from speed.fast import inference_dtype
from ground.runtime import (DTYPES, ArgumentParser, UserError, autocast, make_output_folder, pick_device, run_command,
                     training_dtype)

STEPS, CFG, TEMPERATURE = 16, 3.0, 1.5          # 16 iterations and CFG 3.0 (Sec. 5.1), Gumbel 1.5 (Fig. 7 left)
CLIP_SAMPLES = {"full": mel.CLIP_SAMPLES, "tiny": mel.TOY_SAMPLES}


@dataclass
class Tricks:
    """Which speed-ups are on. Each row of the table turns on one more."""
    inference_mode: bool = False      # no autograd bookkeeping at all (a first implementation often forgets)
    skip_zero_scale: bool = False     # the ramp's first step has scale 0: Eq. 2 is then l_u alone
    batched_cfg: bool = False         # conditional + unconditional as one batch of 2 (one weight read)
    fold_weight_norm: bool = False    # HiFiGAN: g v / ||v|| computed once, not on every call
    chunked_vocoder: bool = False     # HiFiGAN over 128-frame chunks that fit in cache (fast.vocode_chunked)
    dtype: torch.dtype = torch.float32  # bf16 (CUDA, AMX) or int8 transformer linears (AVX2-only CPUs)
    device_sampler: bool = False      # CUDA: drawing and ranking stay on the GPU (no host round trip per step)
    cuda_graph: bool = False          # CUDA: the transformer's blocks replayed as one graph (fast.GraphedTransformer)


def rows(dtype: torch.dtype, device: str = "cpu") -> list:
    """(label, Tricks) from the plain path to the fast one. Only the rows that change something on `device`:
    the chunked vocoder on a CPU, the device sampler and the CUDA graph on CUDA, a dtype other than fp32."""
    shown = "int8 transformer linears" if dtype == torch.qint8 else str(dtype).replace("torch.", "")
    steps = [("plain fp32: autograd on, two CFG passes per step, weight norm", {}),
             ("+ inference_mode", {"inference_mode": True}),
             ("+ no conditional pass while the CFG scale is 0", {"skip_zero_scale": True}),
             ("+ conditional and unconditional in one batch", {"batched_cfg": True}),
             ("+ vocoder weight norm folded", {"fold_weight_norm": True})]
    if device != "cuda":              # pipeline.py chunks on a CPU only: the row would time nothing new
        steps += [("+ vocoder in cache-sized chunks", {"chunked_vocoder": True})]
    if dtype != torch.float32:
        steps += [(f"+ {shown}", {"dtype": dtype})]
    if device == "cuda":
        steps += [("+ sampler on the GPU (no host round trip per step)", {"device_sampler": True}),
                  ("+ transformer blocks as a CUDA graph", {"cuda_graph": True})]
    out, tricks = [], Tricks()
    for label, change in steps:
        tricks = dataclasses.replace(tricks, **change)
        out.append((label, tricks))
    return out


def grad_mode(tricks: Tricks):
    return torch.inference_mode() if tricks.inference_mode else torch.enable_grad()


def float_dtype(tricks: Tricks) -> torch.dtype:
    """The dtype of the stages int8 does not touch (the decoder and the vocoder stay fp32 then)."""
    return torch.float32 if tricks.dtype == torch.qint8 else tricks.dtype


# ---------------------------------------------------------------------------------------------------
# The plain rows' sampler: specmaskgit.generate as a first implementation writes it, each shortcut a switch.
# ---------------------------------------------------------------------------------------------------

def plain_guided_logits(model, tokens, cond, masked, t, batched_cfg=False, skip_zero_scale=False):
    """Eq. 2, l_u + t (l_c - l_u), as a first implementation computes it: l_u and l_c one pass after the other
    (each reads every weight), and l_c even at t = 0, where Eq. 2 is l_u alone, unless skip_zero_scale.
    batched_cfg: specmaskgit.guided_logits itself (one batch of 2B, and l_u alone at t = 0)."""
    if batched_cfg:
        return specmaskgit.guided_logits(model, tokens, cond, masked, t)
    B, n = tokens.shape
    grid = tokens.view(B, model.cfg.rows, model.cfg.cols)
    mask = masked.view_as(grid)
    if cond is None or (t == 0 and skip_zero_scale):
        return model(grid, None, mask)                                          # l_u only
    l_u = model(grid, None, mask)                                               # (B, n, K)
    l_c = model(grid, cond, mask)                                               # (B, n, K)
    return l_u + t * (l_c - l_u)                                                # Eq. 2


def plain_generate(model, cond, steps=STEPS, guidance=CFG, temperature=TEMPERATURE, seed=0, batched_cfg=False,
                   skip_zero_scale=False, loop_device=None):
    """specmaskgit.generate's loop (text prompts, the CFG ramp; no known tokens, no on_step) with
    plain_guided_logits's switches, and loop_device="cpu": drawing and ranking on the host, the logits
    copied there every step. The same random numbers in the same order as generate draws them, so the tokens
    are generate's wherever the logits agree (tests/test_benchmark.py). No @torch.no_grad(): the caller's
    grad mode decides (the plain row records every operation for autograd)."""
    c = model.cfg
    n = c.rows * c.cols
    model_device = next(model.parameters()).device
    device = model_device if loop_device is None else torch.device(loop_device)   # where drawing and ranking run
    g = torch.Generator(device).manual_seed(seed)
    tokens, known = specmaskgit.start_grid(n, cond, device=device)             # (B, n), (B, n)
    B = tokens.shape[0]
    masked = ~known                                                             # (B, n)
    n_unknown = masked.sum(1).tolist()
    counts = specmaskgit.masked_counts(n_unknown, steps, c.mask_schedule)      # [B][S]
    n_masked_after = torch.tensor(counts, dtype=torch.long, device=device).view(B, steps)  # (B, S)
    total_before = [sum(n_unknown)] + [sum(row[s] for row in counts) for s in range(steps - 1)]
    for s in range(steps):
        if total_before[s] == 0:
            break
        t = guidance * s / max(1, steps - 1)                                    # Eq. 2 ramp: 0 -> guidance
        t_g = temperature * (1 - (s + 1) / steps)                               # Eq. 3 anneal: -> 0
        logits = plain_guided_logits(model, tokens.to(model_device), cond, masked.to(model_device), t,
                                     batched_cfg, skip_zero_scale)
        logp = logits.to(device).float().log_softmax(-1)                        # (B, n, K)
        drawn = (logp + specmaskgit.gumbel(logp.shape, g, device)).argmax(-1)  # Gumbel-max: a draw from softmax
        drawn = torch.where(masked, drawn, tokens)                              # (B, n)
        logp_drawn = logp.gather(-1, drawn[..., None])[..., 0]                  # (B, n)
        confidence = logp_drawn + t_g * specmaskgit.gumbel((B, n), g, device)   # Eq. 3
        confidence = confidence.masked_fill(~masked, float("inf"))
        rank = confidence.argsort(dim=1).argsort(dim=1)                         # (B, n): 0 = least confident
        remask = rank < n_masked_after[:, s, None]
        tokens = drawn
        masked = remask & masked
    return tokens.view(B, c.rows, c.cols)


# ---------------------------------------------------------------------------------------------------
# The three stages, each a function of the tricks that concern it.
# ---------------------------------------------------------------------------------------------------

class Models:
    """Random-weight models of one preset, plus the variants some rows need, made once."""

    def __init__(self, preset: str, device: str, dtype: torch.dtype = torch.float32):
        torch.manual_seed(0)
        int8 = dtype == torch.qint8
        self.transformer = specmaskgit.SpecMaskGIT(specmaskgit.PRESETS[preset]).to(device).eval()
        self.vq = vqgan.VQGAN(vqgan.PRESETS[preset]).to(device).eval()
        self.vocoder = vocoder.Generator(vocoder.PRESETS[preset]).to(device).eval()   # weight norm on, as trained
        # A second generator with the same weights, folded (not copy.deepcopy: a deep copy of a weight-normed
        # module shares its parametrisation class, and folding the copy would break the original).
        self.folded = vocoder.Generator(vocoder.PRESETS[preset]).to(device).eval()
        self.folded.load_state_dict(self.vocoder.state_dict())
        hifigan_format.remove_weight_norm(self.folded)
        self.int8 = fast.quantize_int8(copy.deepcopy(self.transformer)) if int8 else None
        fast.hold_weights_in(self.transformer, dtype)                  # bf16 rows: weights converted once, as
        fast.hold_weights_in(self.folded, dtype)                       # sample.py holds them
        self.device = device


def run_transformer(m: Models, cond, tricks: Tricks, steps: int = STEPS):
    model = m.int8 if tricks.dtype == torch.qint8 else m.transformer
    if tricks.cuda_graph:
        model = m.graphed = getattr(m, "graphed", None) or fast.GraphedTransformer(model)   # graphs recorded once
    # the plain CUDA rows draw and rank on the host, the logits copied there every step
    loop_device = "cpu" if m.device == "cuda" and not tricks.device_sampler else None
    with grad_mode(tricks), autocast(m.device, tricks.dtype):
        if tricks.batched_cfg and loop_device is None:          # the sampler sample.py runs
            # generate() is decorated with @torch.no_grad(); its __wrapped__ is the undecorated function, so
            # a row without inference_mode really runs with autograd recording every operation
            sampler = specmaskgit.generate if tricks.inference_mode else specmaskgit.generate.__wrapped__
            tokens = sampler(model, cond, steps=steps, guidance=CFG, temperature=TEMPERATURE, seed=0)
        else:                                                    # a first implementation's (below)
            tokens = plain_generate(model, cond, steps=steps, guidance=CFG, temperature=TEMPERATURE, seed=0,
                                    batched_cfg=tricks.batched_cfg, skip_zero_scale=tricks.skip_zero_scale,
                                    loop_device=loop_device)
    return tokens.to(m.device)


def run_decoder(m: Models, tokens, tricks: Tricks):
    with grad_mode(tricks), autocast(m.device, float_dtype(tricks)):
        return mel.denormalize(m.vq.decode(tokens).float())                       # (1, 80, F)


def run_vocoder(m: Models, log_mel, tricks: Tricks):
    gen = m.folded if tricks.fold_weight_norm else m.vocoder
    if tricks.chunked_vocoder:
        return fast.vocode_chunked(gen, log_mel, float_dtype(tricks), chunk=128)   # (1, 256 F), inference_mode inside
    with grad_mode(tricks), autocast(m.device, float_dtype(tricks)):
        return gen(log_mel)[:, 0]


def median_seconds(fn, runs: int, device: str, warm_up=None) -> float:
    """Warm up once (allocator, kernel choice, caches), then the median of `runs` timed calls."""
    (warm_up or fn)()
    return statistics.median(seconds_of(fn, device) for _ in range(runs))


# ---------------------------------------------------------------------------------------------------
# The table. Every measurement runs in a fresh Python process: the plain rows leave a heap of several
# GB behind (autograd graphs) that would slow the rows after them in the same process. A fresh process
# per row makes the rows comparable, and its peak memory is its own.
# ---------------------------------------------------------------------------------------------------

STAGE_KEYS = {   # what each stage's time depends on: rows with the same key share one measurement
    "transformer": lambda tr: (tr.inference_mode, tr.skip_zero_scale, tr.batched_cfg, str(tr.dtype),
                               tr.device_sampler, tr.cuda_graph),
    "decoder": lambda tr: (tr.inference_mode, str(float_dtype(tr))),
    "vocoder": lambda tr: (tr.inference_mode, tr.fold_weight_norm, tr.chunked_vocoder, str(float_dtype(tr))),
}
DTYPE_NAMES = {**{dtype: name for name, dtype in DTYPES.items()}, torch.qint8: "int8"}   # runtime's names


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6                # Linux: kB -> GB


def time_stages(preset: str, device: str, tricks: Tricks, stages: list, runs: int) -> dict:
    """Median seconds of the named stages with these tricks. Inputs are random: speed does not depend on them."""
    m = Models(preset, device, tricks.dtype)
    cfg = m.transformer.cfg
    cond = torch.randn(1, cfg.cond_dim, device=device)
    tokens = torch.randint(0, cfg.n_codes, (1, cfg.rows, cfg.cols), device=device)
    log_mel = mel.denormalize(torch.rand(1, 80, 16 * cfg.cols, device=device) * 2 - 1)   # (1, 80, F)
    run = {"transformer": lambda: run_transformer(m, cond, tricks),
           "decoder": lambda: run_decoder(m, tokens, tricks),
           "vocoder": lambda: run_vocoder(m, log_mel, tricks)}
    warm_up = {"transformer": lambda: run_transformer(m, cond, tricks, steps=2)}   # 2 of 16 steps warm it up
    return {stage: median_seconds(run[stage], runs, device, warm_up.get(stage)) for stage in stages}


@dataclass
class FastPath:
    """The models of the fast path (sample.py's calls with every speed-up on), built once: the transformer
    as sampled (a GraphedTransformer on CUDA) and `plain`, the same model without graphs."""
    transformer: torch.nn.Module
    plain: torch.nn.Module
    vq: torch.nn.Module
    vocoder: torch.nn.Module
    amp: torch.dtype                   # the autocast dtype of the stages int8 does not touch
    device: str


def build_fast_path(preset: str, device: str, dtype: torch.dtype) -> FastPath:
    """Random-weight models of `preset` on `device`, held in `dtype` as pipeline.load_pipeline holds them."""
    torch.manual_seed(0)
    transformer = specmaskgit.SpecMaskGIT(specmaskgit.PRESETS[preset]).to(device).eval()
    if dtype == torch.qint8:              # first, so that its fp32 weights are gone before the rest is built
        fast.quantize_int8(transformer)
    fast.hold_weights_in(transformer, dtype)
    graphed = fast.GraphedTransformer(transformer) if device == "cuda" else transformer
    vq = vqgan.VQGAN(vqgan.PRESETS[preset]).to(device).eval()
    gen = hifigan_format.remove_weight_norm(vocoder.Generator(vocoder.PRESETS[preset]).to(device).eval())
    fast.hold_weights_in(gen, dtype)
    return FastPath(graphed, transformer, vq, gen, float_dtype(Tricks(dtype=dtype)), device)


def run_fast_path(fp: FastPath, cond: torch.Tensor) -> torch.Tensor:
    """CLAP embeddings (B, 512) -> waveforms (B, 256 F) on the host: generate, decode, vocode."""
    with torch.inference_mode(), autocast(fp.device, fp.amp):
        tokens = specmaskgit.generate(fp.transformer, cond, steps=STEPS, guidance=CFG, temperature=TEMPERATURE, seed=0)
        log_mel = mel.denormalize(fp.vq.decode(tokens).float())                   # (B, 80, F)
    vocode = fast.vocode_chunked if log_mel.device.type == "cpu" else vocoder.vocode   # as pipeline.py chooses
    return vocode(fp.vocoder, log_mel, fp.amp).cpu()                               # (B, 256 F)


def seconds_of(fn, device: str) -> float:
    """Wall-clock seconds of one call of `fn`, the device's queue drained before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_end_to_end(preset: str, device: str, dtype: torch.dtype, runs: int, batch: int = 1) -> dict:
    """The fast path for `batch` clips: the first call's seconds (cold: kernel choice, allocator, CUDA-graph
    capture), the median of `runs` calls after it (warm), and the peak memory."""
    fp = build_fast_path(preset, device, dtype)
    cond = torch.randn(batch, fp.plain.cfg.cond_dim, device=device)
    first = seconds_of(lambda: run_fast_path(fp, cond), device)
    seconds = median_seconds(lambda: run_fast_path(fp, cond), runs, device, warm_up=lambda: None)
    return {"seconds": seconds, "first_seconds": first, "peak_gb": peak_memory_gb(device)}


def in_fresh_process(argv: list) -> dict:
    """Run `python -m speed.benchmark <argv>` and return the JSON dict it prints last."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))                 # the repository
    done = subprocess.run([sys.executable, "-m", "speed.benchmark", *argv], capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"speed/benchmark.py {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(preset: str, device: str, dtype_name: str | None, runs: int, batches=None) -> None:
    """Print the table. A machine's speed can drift over minutes (shared cloud CPUs), so the rows are not
    timed one after another: each round times every row once, each in a fresh process, and a row's
    figure is its median over `runs` rounds. Slow minutes then hit every row alike.
    batches: the batch sizes whose throughput (clips per second) is timed end to end; by default 16 and
    64 on CUDA, 4 for the tiny preset on a CPU, none for the full one there (too slow per batch)."""
    if preset not in CLIP_SAMPLES:
        raise UserError(f"--benchmark takes full or tiny, not {preset!r}.")
    if runs < 1:
        raise UserError(f"--runs must be 1 or more, not {runs}.")
    dtype = inference_dtype(device, dtype_name, specmaskgit.PRESETS[preset].width)
    name = DTYPE_NAMES[dtype]
    audio_seconds = CLIP_SAMPLES[preset] / mel.SR
    print(f"benchmark: preset {preset}, one {audio_seconds:.3f} s clip, {STEPS} steps with CFG, "
          f"{torch.get_num_threads()} threads on {device}; medians of {runs} rounds, each row in a fresh process")
    common = [preset, "--device", device, "--dtype", name, "--runs", "1"]
    table = rows(dtype, device)
    if batches is None:
        batches = (16, 64) if device == "cuda" else (4,) if preset == "tiny" else ()
    samples, fast_path, batched = {}, [], {b: [] for b in batches}   # (stage, key) -> seconds of each round
    for r in range(runs):
        for i, (label, tr) in enumerate(table):
            todo = [stage for stage, key in STAGE_KEYS.items() if len(samples.get((stage, key(tr)), [])) == r]
            if todo:
                got = in_fresh_process(common + ["--row", str(i), "--stages", ",".join(todo)])
                for stage in todo:
                    samples.setdefault((stage, STAGE_KEYS[stage](tr)), []).append(got[stage])
        fast_path.append(in_fresh_process(common + ["--end-to-end", "--batch", "1"]))
        for b in batches:
            batched[b].append(in_fresh_process(common + ["--end-to-end", "--batch", str(b)])["seconds"])
        print(f"  round {r + 1}/{runs} done", flush=True)

    print(f"\n| {'step':<62} | transformer | decoder | vocoder | total s | speed-up |")
    print(f"| {'-' * 62} | ---: | ---: | ---: | ---: | ---: |")
    baseline = None
    for label, tr in table:
        t, d, v = (statistics.median(samples[(stage, key(tr))]) for stage, key in STAGE_KEYS.items())
        total = t + d + v
        baseline = baseline or total
        print(f"| {label:<62} | {t:.2f} | {d:.2f} | {v:.2f} | {total:.2f} | {baseline / total:.2f}x |")
    seconds = statistics.median(f["seconds"] for f in fast_path)
    first = statistics.median(f["first_seconds"] for f in fast_path)
    peak = max(f["peak_gb"] for f in fast_path)
    where = "max allocated on the GPU" if device == "cuda" else "resident, the whole process"
    print(f"\nfast path end to end (generate, decode, vocode): {seconds:.2f} s warm, {baseline / seconds:.2f}x "
          f"the plain path; first call in the process {first:.2f} s (cold); peak memory {peak:.2f} GB ({where})")
    for b, times in batched.items():
        print(f"batch of {b}: {statistics.median(times):.3f} s, {b / statistics.median(times):.2f} clips per second")
    print(f"rtf={seconds / audio_seconds:.4f} seconds={seconds:.3f} "
          f"audio_seconds={audio_seconds:.3f} device={device} dtype={name}")


def speed_against_threads(preset: str, device: str, dtype_name: str | None, runs: int, threads: list[int]) -> list:
    """Fig. 2 in miniature: the fast path end to end (one clip, 16 steps with CFG, decoder, vocoder) with
    torch limited to each number of CPU threads in turn, one fresh process per count (a process's thread
    pool is fixed once it has run an operation). Prints one row per count and returns (threads, seconds, RTF).
    The paper: real time (RTF <= 1) from 4 Xeon cores on, with its standard Python implementation."""
    if device != "cpu":
        raise UserError("--threads measures CPU cores; run it with --device cpu.")
    dtype = inference_dtype(device, dtype_name, specmaskgit.PRESETS[preset].width, verbose=False)
    audio_seconds = CLIP_SAMPLES[preset] / mel.SR
    print(f"speed against CPU threads: preset {preset}, one {audio_seconds:.3f} s clip, {STEPS} steps with CFG, "
          f"{DTYPE_NAMES[dtype]}; median of {runs} runs each, a fresh process per thread count")
    print("\n| threads | seconds per clip | real-time factor (RTF) | real time? |\n| ---: | ---: | ---: | --- |")
    rows = []
    for n in threads:
        got = in_fresh_process([preset, "--device", device, "--dtype", DTYPE_NAMES[dtype], "--runs", str(runs),
                                "--end-to-end", "--batch", "1", "--threads", str(n)])
        rtf = got["seconds"] / audio_seconds
        rows.append((got["threads"], got["seconds"], rtf))                      # as the worker ran it
        print(f"| {n} | {got['seconds']:.2f} | {rtf:.3f} | {'yes' if rtf <= 1 else 'no'} |", flush=True)
    print("\nRTF = seconds of computing per second of audio; the real-time line is RTF 1.")
    return rows


# ---------------------------------------------------------------------------------------------------
# Training throughput of the transformer stage (Sec. 4: batch 48, 250k steps on AudioCaps).
# ---------------------------------------------------------------------------------------------------

def seconds_per_training_step(preset: str, device: str, amp: torch.dtype, batch: int, runs: int,
                              cols: int | None = None) -> float:
    """Median seconds of one transformer Trainer.step (forward, backward, AdamW) on random token grids
    (`cols` token columns per clip: 32 for the demo recipe's 8-frame tokens; default the preset's)."""
    cfg = dataclasses.replace(specmaskgit.PRESETS[preset], cols=cols or specmaskgit.PRESETS[preset].cols)
    trainer = specmaskgit.Trainer(cfg, device=device, amp_dtype=amp)
    g = torch.Generator().manual_seed(0)
    data = {"tokens": torch.randint(0, cfg.n_codes, (batch, cfg.rows, cfg.cols), generator=g),
            "cond": torch.randn(batch, cfg.cond_dim, generator=g)}
    step = [0]

    def one():
        step[0] += 1
        trainer.step(data, step[0])
    return median_seconds(one, runs, device)


def train_throughput(preset: str, device: str, dtype_name: str | None, batch: int, runs: int,
                     cols: int | None = None) -> None:
    amp = training_dtype(preset, device, dtype_name)
    cfg = dataclasses.replace(specmaskgit.PRESETS[preset], cols=cols or specmaskgit.PRESETS[preset].cols)
    seconds = seconds_per_training_step(preset, device, amp, batch, runs, cfg.cols)
    tokens_per_s = batch * cfg.rows * cfg.cols / seconds
    paper = 250_000 * 48 * cfg.rows * cfg.cols / tokens_per_s / 3600
    print(f"train: preset {preset}, {cfg.rows} x {cfg.cols} tokens, batch {batch}, {device}, {str(amp).replace('torch.', '')}: {seconds:.3f} s/step, "
          f"{tokens_per_s:,.0f} tokens/s; the paper's 250k steps of batch 48 would take {paper:,.1f} h at this rate")


# ---------------------------------------------------------------------------------------------------
# The GPU check (python -m speed.gpu_check, which runs this file with --gpu-check in a process of its own):
# the figures that say whether the GPU path works and pays, in one table. Its docstring says what
# each row measures.
# ---------------------------------------------------------------------------------------------------

TRAIN_BATCH = 48          # the paper's batch for the transformer (Sec. 4)
GRAPH_CALLS = 24          # calls of the graphed transformer timed: its eager passes, the capture, the replays
SYNC_OPS = {"_local_scalar_dense", "item"}


class HostSyncs(TorchDispatchMode):
    """Counts the operations that read a device value back to the host (tests/test_host_sync.py's way)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in SYNC_OPS
        return func(*args, **(kwargs or {}))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device == "cuda" else fast.cpu_name()


def host_syncs(sampler: str, model, cond: torch.Tensor, amp: torch.dtype) -> tuple[int, int]:
    """(host reads, sampling steps) of one sampling of `cond` with `sampler` ("specmaskgit" | "magnet").
    The plain model: the sampler's reads are what is counted, and a graph is not recorded under a mode."""
    with HostSyncs() as mode, torch.inference_mode(), autocast(cond.device, amp):
        if sampler == "magnet":
            magnet.generate(model, cond, seed=0)
            steps = sum(magnet.ROW_STEPS)
        else:
            specmaskgit.generate(model, cond, steps=STEPS, guidance=CFG, temperature=TEMPERATURE, seed=0)
            steps = STEPS
    return mode.count, steps


def magnet_sample(fp: FastPath, preset: str, cond: torch.Tensor, out: str) -> str:
    """One clip with MAGNeT's decoding (its defaults) through pipeline.py, written to out/magnet_sample.wav."""
    pipe = pipeline.Pipeline(fp.vq, fp.transformer, None, fp.vocoder, CLIP_SAMPLES[preset], fp.device, fp.amp)
    tokens, _ = pipeline.sample_tokens(pipe, cond, STEPS, CFG, TEMPERATURE, seed=0, verbose=False, magnet_options={})
    _, wav = pipeline.tokens_to_audio(pipe, tokens)                                  # (1, T) on the host
    path = os.path.join(out, "magnet_sample.wav")
    audio_io.save_wav(path, pipeline.peak_normalised(wav[0]))
    return path


def graph_cost(fp: FastPath, runs: int) -> dict:
    """Seconds of an eager pass of one clip's CFG batch (2), of a replayed one, and the extra of the call that
    records the graph (its slowest call, less an eager pass); the passes after which the graph has paid."""
    cfg = fp.plain.cfg
    tokens = torch.randint(0, cfg.n_codes, (2, cfg.rows, cfg.cols), device=fp.device)
    mask = torch.ones(2, cfg.rows, cfg.cols, dtype=torch.bool, device=fp.device)
    cond = torch.randn(2, cfg.cond_dim, device=fp.device)
    with torch.inference_mode(), autocast(fp.device, fp.amp):
        eager = median_seconds(lambda: fp.plain(tokens, cond, mask), runs, fp.device)
        graphed = fast.GraphedTransformer(fp.plain)
        times = [seconds_of(lambda: graphed(tokens, cond, mask), fp.device) for _ in range(GRAPH_CALLS)]
    capture_call = max(range(len(times)), key=times.__getitem__)
    replay = statistics.median(times[capture_call + 1:] or times)
    extra = max(0.0, times[capture_call] - eager)
    saved = eager - replay
    return {"eager": eager, "replay": replay, "capture": extra,
            "break_even": math.ceil(extra / saved) if saved > 0 else None}


def gpu_check(preset: str, device: str, dtype_name: str, batch: int, runs: int, out: str) -> list:
    """Run every measurement and return the table's rows: (figure, value, device, dtype)."""
    make_output_folder(out)
    where = device_name(device)
    audio_seconds = CLIP_SAMPLES[preset] / mel.SR
    width = specmaskgit.PRESETS[preset].width

    start = time.perf_counter()                                    # cold: the dtype choice counts
    dtype = inference_dtype(device, dtype_name, width)
    chosen = time.perf_counter() - start
    fp = build_fast_path(preset, device, dtype)                    # building the models is not a call
    cond = torch.randn(1, fp.plain.cfg.cond_dim, device=device)
    cold = chosen + seconds_of(lambda: run_fast_path(fp, cond), device)
    warm = median_seconds(lambda: run_fast_path(fp, cond), runs, device, warm_up=lambda: None)
    conds = torch.randn(batch, fp.plain.cfg.cond_dim, device=device)
    batched = median_seconds(lambda: run_fast_path(fp, conds), runs, device)
    inference_peak = peak_memory_gb(device)
    syncs = {name: host_syncs(name, fp.plain, cond, fp.amp) for name in ("specmaskgit", "magnet")}
    wav_path = magnet_sample(fp, preset, cond, out)
    graph = graph_cost(fp, runs) if device == "cuda" else None
    del fp
    train_amp = training_dtype(preset, device, None if dtype_name in ("auto", "int8") else dtype_name)
    step = seconds_per_training_step(preset, device, train_amp, TRAIN_BATCH, runs)
    grid = specmaskgit.PRESETS[preset].rows * specmaskgit.PRESETS[preset].cols

    name, train_name = DTYPE_NAMES[dtype], DTYPE_NAMES[train_amp]
    clip = f"rtf, one {audio_seconds:.2f} s clip"
    table = [(f"{clip}, cold (first call: dtype choice, any graph capture)", f"{cold / audio_seconds:.4f}"),
             (f"{clip}, warm (median of {runs})", f"{warm / audio_seconds:.4f}"),
             (f"clips/s, batch of {batch}", f"{batch / batched:.3f}"),
             ("peak memory GB, inference", f"{inference_peak:.3f}")]
    table = [(label, value, where, name) for label, value in table]
    table.append((f"training tokens/s, batch {TRAIN_BATCH}", f"{TRAIN_BATCH * grid / step:.0f}", where, train_name))
    table.append(("peak memory GB, whole check", f"{peak_memory_gb(device):.3f}", where,
                 f"{name}, training {train_name}"))
    for sampler, (count, steps) in syncs.items():
        table.append((f"host syncs per step, {sampler}.generate", f"{count / steps:.2f} ({count} in {steps} steps)",
                     where, name))
    table.append(("MAGNeT sample (magnet.generate via pipeline.py)", wav_path, where, name))
    if graph is None:
        table.append(("CUDA graph: capture s, eager / replay s per pass, break-even passes",
                     "n/a (no CUDA graphs on the CPU)", where, name))
    else:
        paid = "never (a replay is not faster)" if graph["break_even"] is None else f"{graph['break_even']} passes"
        table.append(("CUDA graph: capture s, eager / replay s per pass, break-even passes",
                     f"{graph['capture']:.4f}, {graph['eager']:.5f} / {graph['replay']:.5f}, {paid}", where, name))
    return table


def print_table(rows: list) -> None:
    print("\n| figure | value | device | dtype |\n| --- | ---: | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


MAX_RUNS = 1000         # timed runs per measurement
MAX_BATCH = 1024        # clips per batch: beyond any GPU's memory at the full preset
MAX_COLS = 4096         # token columns: the paper's 53 per 9.85 s clip, 80 times over


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("preset", choices=["full", "tiny"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 | int8")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (after one warm-up)")
    p.add_argument("--train", action="store_true", help="time training steps of the transformer instead")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: 4 with --train, and with --gpu-check on a CPU; 16 with --gpu-check on CUDA)")
    p.add_argument("--cols", type=int, default=None, metavar="N",
                   help="--train: token columns per clip (default the preset's; 32 = the demo recipe's 8-frame tokens)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes for the throughput lines "
                   "(default 16,64 on CUDA; 4 for tiny on a CPU; none for full on a CPU)")
    p.add_argument("--thread-counts", default=None, metavar="N,N,...", help="Fig. 2: instead of the table, the fast "
                   "path's speed on each number of CPU threads, against the real-time line (sample.py --threads)")
    p.add_argument("--gpu-check", action="store_true", help="the GPU check's table instead (speed/gpu_check.py runs this)")
    p.add_argument("--out", default="gpu_check_out", help="--gpu-check: the folder for its MAGNeT sample")
    p.add_argument("--row", type=int, default=None, help=argparse.SUPPRESS)          # the table's workers:
    p.add_argument("--stages", default="", help=argparse.SUPPRESS)                   # one row's stages ...
    p.add_argument("--end-to-end", action="store_true", help=argparse.SUPPRESS)      # ... or the fast path
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)      # ... on this many threads
    args = p.parse_args(argv)
    if args.thread_counts is not None:
        most = os.cpu_count() or 1
        try:
            args.thread_counts = [int(t) for t in args.thread_counts.split(",") if t.strip()]
        except ValueError:
            raise UserError(f"--thread-counts takes thread counts like 1,2,4, not {args.thread_counts!r}.") from None
        if not args.thread_counts or any(not 1 <= c <= most for c in args.thread_counts):
            raise UserError(f"--thread-counts takes thread counts from 1 to {most} (this machine's CPUs).")
    if not 1 <= args.runs <= MAX_RUNS:
        raise UserError(f"--runs must be from 1 to {MAX_RUNS}, not {args.runs}.")
    check_worker_flags(args)
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise UserError(f"--batch must be from 1 to {MAX_BATCH}, not {args.batch}.")
    if args.cols is not None and not (args.train and 1 <= args.cols <= MAX_COLS):
        raise UserError(f"--cols goes with --train and must be from 1 to {MAX_COLS}, not {args.cols}.")
    if args.batches is not None:
        try:
            args.batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
        except ValueError:
            raise UserError(f"--batches takes batch sizes like 16,64, not {args.batches!r}.") from None
        if any(not 1 <= b <= MAX_BATCH for b in args.batches):
            raise UserError(f"--batches must be from 1 to {MAX_BATCH} each, not {args.batches}.")
    return args


WORKER_STAGES = ("transformer", "decoder", "vocoder")   # what one table worker (--row, --stages) times


def check_worker_flags(args) -> None:
    """The hidden flags the table passes to its worker processes (--row, --stages, --threads), checked like
    the others: someone who finds them in the code and types them gets one sentence, not a traceback."""
    if args.row is not None:                          # its upper end depends on the dtype: run() checks it
        if args.row < 0:
            raise UserError(f"--row must be a row of the table, from 0, not {args.row}.")
        stages = [s for s in args.stages.split(",") if s.strip()]
        if not stages or any(s not in WORKER_STAGES for s in stages):
            raise UserError(f"--row needs --stages, a comma-separated list of {', '.join(WORKER_STAGES)}, "
                            f"not {args.stages!r}.")
    if args.threads is not None and not 1 <= args.threads <= (os.cpu_count() or 1):
        raise UserError(f"--threads must be from 1 to {os.cpu_count() or 1} (this machine's CPUs), not {args.threads}.")


def run(args) -> None:
    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.row is not None or args.end_to_end:
        dtype = inference_dtype(device, args.dtype, specmaskgit.PRESETS[args.preset].width, verbose=False)
        if args.end_to_end:
            result = {**time_end_to_end(args.preset, device, dtype, args.runs, args.batch or 1),
                      "threads": torch.get_num_threads()}
        else:
            table = rows(dtype, device)
            if args.row >= len(table):
                raise UserError(f"--row must be from 0 to {len(table) - 1} (the table's rows here), not {args.row}.")
            result = time_stages(args.preset, device, table[args.row][1], args.stages.split(","), args.runs)
        print(json.dumps(result))
    elif args.gpu_check:
        print_table(gpu_check(args.preset, device, args.dtype, args.batch or (16 if device == "cuda" else 4),
                              args.runs, args.out))
    elif args.thread_counts:
        speed_against_threads(args.preset, device, args.dtype, args.runs, args.thread_counts)
    elif args.train:
        train_throughput(args.preset, device, None if args.dtype == "auto" else args.dtype, args.batch or 4, args.runs,
                         args.cols)
    else:
        benchmark(args.preset, device, args.dtype, args.runs, args.batches)


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
