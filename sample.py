"""
sample.py — text to audio with a trained SpecMaskGIT, zero-shot inpainting and bandwidth extension.

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 3.3-3.4 and the zero-shot tasks of Sec. 4, 5.2 and Table 7:
the path itself (text -> tokens -> mel -> wav, inpainting, bandwidth extension) is pipeline.py's; this
file is the command around it, read like nanoGPT's sample.py: the flags, then run() loads the pipeline,
generates and writes the takes. The flags' ranges, the output names and the decoding page's plumbing are
ground/sample_edges.py's.

In:  prompts, or an audio file (any length, rate, channel count) for --inpaint / --bwe
Out: one 22050 Hz wav per prompt and take; with --png a labelled picture of its mel and of the MaskGIT
     decoding order (the step at which each token was committed); with --html a self-contained page
     that plays the sampling steps (pictures/decoding_page.py)

  python sample.py "rain on a roof"                       # the bundled toy model, on a CPU
  python sample.py "a dog barking" "a siren" --n 4 --png
  python sample.py "a church bell" --html                 # samples/a_church_bell.html: the 16 steps
  python sample.py "rain on a roof" --out rain.wav        # exactly that file
  python sample.py --inpaint clip.wav --start 1.0 --end 2.0 "birds chirping"
  python sample.py --bwe band_limited.wav --lfr
  python sample.py --benchmark full                       # speed, plain path to fast path (runs speed/benchmark.py)
  python sample.py --benchmark full --threads 1,2,4       # Fig. 2: speed against CPU threads
"""

import os
import re
import signal
import subprocess
import sys

import torch

import mel
from ground import audio_io
import pipeline
from ground.runtime import ArgumentParser, UserError, pick_device, run_command
from ground.sample_edges import (OUTPUT_EXTS, SPECMASKGIT_DEFAULTS, check_args, magnet_options, output_names,
                                 page_settings, remove_claims, same_take, save_page, valid_text)


def parse_args(argv=None):
    p = ArgumentParser(description="SpecMaskGIT: text to audio, inpainting, bandwidth extension.")
    p.add_argument("prompts", nargs="*", help="one or more text prompts")
    p.add_argument("--ckpt", default=pipeline.DEFAULT_CKPT, help="a bundle written by train.py --bundle")
    p.add_argument("--vocoder-ckpt", default=None, help="a HiFiGAN checkpoint (ours or the official one)")
    p.add_argument("--clap", default=None, choices=["tiny", "laion"],
                   help="conditioner: the bundle's TinyCLAP, or LAION-CLAP (default: laion when --clap-ckpt is given)")
    p.add_argument("--clap-ckpt", default=None, help="LAION-CLAP 630k-audioset-best.pt instead of the bundled CLAP")
    d = SPECMASKGIT_DEFAULTS                             # the paper's sampler; --sampler magnet has its own flags
    p.add_argument("--steps", type=int, default=d["steps"], help="MaskGIT iterations (Sec. 3.4)")
    p.add_argument("--cfg", type=float, default=d["cfg"], help="final classifier-free guidance scale (Eq. 2)")
    p.add_argument("--no-cfg-ramp", action="store_true", help="text to audio with the guidance scale at --cfg from "
                   "the first step instead of the paper's ramp from 0 (Table 1's 'w/o CFG linear scheduler'; "
                   "the toy model's judges prefer it)")
    p.add_argument("--temperature", type=float, default=d["temperature"], help="initial Gumbel temperature (Eq. 3)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's random draws: the same seed, prompt and settings "
                   "give the same take; another seed, another take")
    p.add_argument("--n", type=int, default=1, help="takes per prompt (batched)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto (what pays on this machine, printed) | fp32 | bf16 | fp16 | int8")
    p.add_argument("--out", default="samples",
                   help="output folder (a name already there is not overwritten: the new take gets -2, -3, ...); "
                        "or, for a single take, the .wav file itself")
    p.add_argument("--png", action="store_true", help="also write the mel and the decoding order as a labelled PNG")
    p.add_argument("--html", action="store_true",
                   help="also write a self-contained page that plays the sampling steps (pictures/decoding_page.py)")
    p.add_argument("--inpaint", metavar="FILE", help="regenerate [--start, --end] seconds of FILE")
    p.add_argument("--start", type=float, default=None)
    p.add_argument("--end", type=float, default=None)
    p.add_argument("--bwe", metavar="FILE", help="bandwidth extension of FILE (regenerate above ~4.3 kHz)")
    p.add_argument("--lfr", action="store_true", help="with --bwe: put the input's own low band back (Table 7)")
    p.add_argument("--benchmark", metavar="PRESET", choices=["full", "tiny"],
                   help="time the pipeline at the preset's size, plain path to fast path (runs speed/benchmark.py)")
    p.add_argument("--runs", type=int, default=3, help="with --benchmark: timed runs per measurement")
    p.add_argument("--threads", default=None, metavar="N,N,...", help="with --benchmark: instead of the table, the "
                   "fast path's speed on each number of CPU threads, against the real-time line (Fig. 2)")
    m = p.add_argument_group("MAGNeT's decoding (--sampler magnet, magnet.py; text to audio)")
    m.add_argument("--sampler", default="specmaskgit", choices=["specmaskgit", "magnet"])
    m.add_argument("--span-len", type=int, default=None, help="decoding span in token columns (default: the model's span_len)")
    m.add_argument("--span-scoring", default="max", choices=["max", "prod"], help="a span's confidence (MAGNeT's span decoding)")
    m.add_argument("--guidance", default="10,1", help="HIGH,LOW: guidance annealed from HIGH to LOW as the mask shrinks (MAGNeT's CFG annealing)")
    m.add_argument("--magnet-temperature", type=float, default=3.0, help="softmax temperature at the start, annealed to 0")
    m.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (1 = off)")
    m.add_argument("--row-steps", default="8,4,4,4,4", help="steps per token row, low band first; one number = all rows together")
    m.add_argument("--context", type=int, default=None, help="restricted attention in the rows above the first: +-K token columns (MAGNeT's restricted context; default: the model's own, -1 = none)")
    m.add_argument("--rescore-ckpt", default=None, help="a second transformer (bundle or transformer.pt) that rescores each draw (MAGNeT's rescoring)")
    m.add_argument("--rescore-weight", type=float, default=0.7, help="the rescorer's weight in the confidence")
    m.add_argument("--prefix-cols", type=int, default=0, help="hybrid: decode the first K columns one after another (MAGNeT's hybrid, as a sampling-time stand-in)")
    return check_args(p.parse_args(argv))                # the ranges: ground/sample_edges.py


def run(args) -> None:
    """Load the pipeline, turn the prompts into audio, write the takes (the zero-shot tasks: zero_shot)."""
    device = pick_device(args.device)
    if args.device == "auto":                           # say which one auto chose, as train.py's dtype line does
        print(f"device: {device} ({'a CUDA GPU is here' if device == 'cuda' else 'no CUDA GPU here'}; "
              f"--device cpu or cuda to choose)")
    if args.benchmark:
        return benchmark(args, device)
    torch.manual_seed(args.seed)
    pipe = pipeline.load_pipeline(args.ckpt, args.vocoder_ckpt, args.clap_ckpt, device, args.dtype)
    exts = OUTPUT_EXTS[:1] + ((".png",) if args.png else ()) + ((".html",) if args.html else ())
    common = dict(steps=args.steps, guidance=args.cfg, temperature=args.temperature, seed=args.seed)
    record = [] if args.html else None                   # generate's per-step record, for the page
    claimed = []                                         # placeholders of the names chosen (output_names)
    try:
        if args.inpaint or args.bwe:
            return zero_shot(args, pipe, exts, common, record, claimed)
        takes = [(p, k) for p in args.prompts for k in range(args.n)]
        paths = output_names(args.out, [slug(p) + (f"_{k + 1}" if args.n > 1 else "") for p, k in takes], exts, claimed)
        options = magnet_options(args, pipe) if args.sampler == "magnet" else None
        wav, log_mel, order, _ = pipeline.text_to_audio(pipe, args.prompts, args.n, record=record, cfg_ramp=not args.no_cfg_ramp,
                                                        magnet_options=options, **common)
        for j, ((prompt, k), names) in enumerate(zip(takes, paths)):
            written = save_outputs(names[".wav"], wav[j], log_mel[j], order[j], args.png)
            say_if_same_take(names[".wav"], args.seed)
            if record is not None:
                save_page(names[".html"], pipe, record, j, written,
                          page_settings(args, pipe, "text to audio", prompt, **{"take": f"{k + 1} of {args.n}"}))
    finally:                                             # a failure or Ctrl-C: no empty file is left behind
        remove_claims(claimed)


def zero_shot(args, pipe, exts, common, record, claimed: list) -> None:
    """--inpaint or --bwe: the input file's clips regenerated where masked (Sec. 4), written as one take."""
    path = args.inpaint or args.bwe
    base = os.path.splitext(os.path.basename(path))[0]
    suffix = "_inpainted" if args.inpaint else "_bwe" + ("_lfr" if args.lfr else "")
    names, = output_names(args.out, [base + suffix], exts, claimed)
    wav = audio_io.load_audio(path, report=True)
    prompt = args.prompts[0] if args.prompts else None
    clip, length = pipe.num_samples, wav.shape[-1]
    if args.inpaint:
        out, _, _, log_mel, order = pipeline.inpaint(pipe, wav, args.start, args.end, prompt, record=record, **common)
        offset = pipeline.clip_window(length, clip, int(args.start * mel.SR), int(args.end * mel.SR),
                                      pipeline.column_samples(pipe.vq))
        task = f"inpainting {args.start:g}-{args.end:g} s of {valid_text(os.path.basename(path))}"
    else:
        out, _, _, log_mel, order = pipeline.bandwidth_extension(pipe, wav, prompt, args.lfr, record=record, **common)
        offset = (length - 1) // clip * clip                                       # the last clip's window
        task = f"bandwidth extension{' + LFR' if args.lfr else ''} of {valid_text(os.path.basename(path))}"
    written = save_outputs(names[".wav"], out, log_mel[0], order[0], args.png)
    say_if_same_take(names[".wav"], args.seed)
    if record is not None:
        window = written[offset:offset + clip]
        shown = f"{offset / mel.SR:.2f}-{min(length, offset + clip) / mel.SR:.2f} s of {length / mel.SR:.2f} s"
        save_page(names[".html"], pipe, record, 0, window,
                  page_settings(args, pipe, task, prompt, **{"window shown": shown}))


def benchmark(args, device: str) -> None:
    """--benchmark: speed/benchmark.py in its own process (no command imports another)."""
    command = [sys.executable, "-m", "speed.benchmark", args.benchmark, "--device", device, "--dtype", args.dtype, "--runs", str(args.runs)]
    if args.threads:
        command += ["--thread-counts", ",".join(map(str, args.threads))]
    code = subprocess.call(command, cwd=os.path.dirname(os.path.abspath(__file__)))
    if code:
        raise UserError(f"speed/benchmark.py stopped with exit code {code} (its message is above).")


def slug(prompt: str) -> str:
    """A prompt as the start of its takes' file names: its words, lower-cased, joined by _ (60 characters at most)."""
    s = re.sub(r"[^\w]+", "_", prompt.lower(), flags=re.UNICODE).strip("_")
    return (s[:60] or "sample").rstrip("_")


def save_outputs(path_wav, wav, log_mel=None, order=None, png=False) -> torch.Tensor:
    """The take's wav (peak-normalised if it would clip) and, with png, its labelled mel and decoding order.
    Returns the waveform as written."""
    from pictures import decoding_page
    wav = pipeline.peak_normalised(wav, path_wav)
    audio_io.save_wav(path_wav, wav)
    if png and log_mel is not None:
        decoding_page.save_figure(os.path.splitext(path_wav)[0] + ".png", log_mel, order)
    print(f"wrote {path_wav}" + (" (+ .png)" if png else ""))
    return wav


def say_if_same_take(path_wav: str, seed: int) -> None:
    """A second run with the same prompt and --seed writes the same sound under a new name: say so."""
    other = same_take(path_wav)
    if other:
        print(f"{os.path.basename(path_wav)} is the same take as {os.path.basename(other)} (--seed {seed} with the "
              f"same prompt and settings gives the same sound); give another --seed for another take")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, CI, kill): raised where the run is, so it ends through the same clean-up as Ctrl-C."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)        # a second SIGTERM must not interrupt the clean-up
    raise Terminated


def main(argv=None) -> int:
    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:                                   # not the main thread: signals cannot be caught here
        previous = None
    try:
        return run_command(lambda: run(parse_args(argv)))
    except KeyboardInterrupt as e:                       # Ctrl-C: the takes already written stay, nothing partial
        stopped = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"{stopped}; no partial file is left", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
