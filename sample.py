"""
sample.py — text to audio with a trained SpecMaskGIT, zero-shot inpainting and bandwidth extension.

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 3.3-3.4  prompt -> CLAP text embedding -> MaskGIT sampling of a token grid (Eq. 2, 3)
                -> SpecVQGAN decoder -> mel -> HiFiGAN -> waveform
  Sec. 4, 5.2   zero-shot tasks: time inpainting (regenerate the token columns of a gap) and bandwidth
                extension (regenerate the top token row, mel bins 64-79, optionally followed by
                low-frequency replacement, Table 7). "Zero-shot" because the model was never trained
                for them: they are just sampling with some tokens given.

In:  prompts, or an audio file (any length, rate, channel count) for --inpaint / --bwe
Out: one 22050 Hz wav per prompt and take; with --png a picture of its mel and of the MaskGIT
     decoding order (the step at which each token was committed)

  python sample.py "rain on a roof"                       # the bundled toy model, a few seconds on a CPU
  python sample.py "a dog barking" "a siren" --n 4 --png
  python sample.py --inpaint clip.wav --start 1.0 --end 2.0 "birds chirping"
  python sample.py --bwe band_limited.wav --lfr
  python sample.py --benchmark full                       # speed, plain path to fast path (benchmark.py)
"""

import argparse
import math
import os
import re
import sys
import time

import torch

import mel
from runtime import (ArgumentParser, UserError, load_checkpoint, make_output_folder, pick_device, pick_inference_dtype,
                     run_command)

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "toy.pt")
BWE_CUTOFF_HZ = 4300.0    # ~ mel bin 63's top edge (= bin 64's centre, 4327 Hz); top token row = bins 64-79 (Table 7)


# ---------------------------------------------------------------------------------------------------
# Loading the four models: one bundle file (train.py --bundle), or separate checkpoints.
# ---------------------------------------------------------------------------------------------------

class Pipeline:
    """The trained pieces side by side: vq (SpecVQGAN), transformer, clap, vocoder (None = Griffin-Lim)."""

    def __init__(self, vq, transformer, clap, vocoder, num_samples, device="cpu", dtype=torch.float32):
        self.vq, self.transformer, self.clap, self.vocoder = vq, transformer, clap, vocoder
        self.num_samples, self.device, self.dtype = num_samples, device, dtype


def load_pipeline(ckpt=DEFAULT_CKPT, vocoder_ckpt=None, clap_ckpt=None, device="cpu", dtype="fp32",
                  verbose=True) -> Pipeline:
    """dtype: "fp32" | "bf16" | "fp16" | "int8" | "auto" (runtime.pick_inference_dtype: the machine's fast one)."""
    import clap
    import specmaskgit
    import vocoder
    import vqgan
    bundle = load_checkpoint(ckpt, "bundle")
    for stage in ("vqgan", "transformer"):
        if stage not in bundle:
            raise UserError(f"{ckpt} holds no {stage} checkpoint; train it with train.py --stage {stage}.")
    vq = vqgan.from_checkpoint(bundle["vqgan"]).to(device).eval()
    transformer = specmaskgit.from_checkpoint(bundle["transformer"]).to(device).eval()
    # Stages of two runs in one file (a transformer trained on another codebook or clip length, bundled by
    # hand or by an older train.py): the sampler drew ids the VQGAN does not have, an IndexError in decode.
    grid = (vq.cfg.n_codes, vq.cfg.n_mels // 16, bundle.get("num_samples", mel.CLIP_SAMPLES) // (16 * mel.HOP))
    if (transformer.cfg.n_codes, transformer.cfg.rows, transformer.cfg.cols) != grid:
        raise UserError(f"{ckpt}'s transformer ({transformer.cfg.n_codes} codes, {transformer.cfg.rows} x "
                        f"{transformer.cfg.cols} tokens) does not fit its VQGAN and clip ({grid[0]} codes, "
                        f"{grid[1]} x {grid[2]}); retrain it with train.py --stage transformer.")
    dtype = pick_inference_dtype(device, dtype, transformer.cfg.width, verbose)
    if dtype == torch.qint8:                                   # int8 linears in the transformer, fp32 elsewhere
        transformer, dtype = specmaskgit.quantize_int8(transformer), torch.float32
    if clap_ckpt:
        conditioner = clap.load_clap("laion", clap_ckpt, device=device)
    elif "clap" in bundle:
        conditioner = clap.from_checkpoint(bundle["clap"]).to(device).eval()
    else:
        raise UserError(f"{ckpt} holds no CLAP model; pass --clap-ckpt 630k-audioset-best.pt.")
    if vocoder_ckpt:
        voc = vocoder.load_vocoder(vocoder_ckpt)
    elif "vocoder" in bundle:
        voc = vocoder.load_vocoder(bundle["vocoder"])
    else:
        voc = None
        if verbose:
            print("vocoder: none given, using Griffin-Lim (pass --vocoder-ckpt for a HiFiGAN)")
    if voc is not None:
        voc = voc.to(device).eval()
    return Pipeline(vq, transformer, conditioner, voc, bundle.get("num_samples", mel.CLIP_SAMPLES), device, dtype)


# ---------------------------------------------------------------------------------------------------
# Tokens -> waveform, and waveform -> tokens.
# ---------------------------------------------------------------------------------------------------

@torch.inference_mode()
def tokens_to_audio(pipe: Pipeline, tokens: torch.Tensor):
    """(B, rows, cols) token ids -> log-mels (B, 80, 16 cols) -> waveforms (B, 256 x frames)."""
    with torch.autocast(pipe.device, dtype=pipe.dtype, enabled=pipe.dtype != torch.float32):
        log_mel = mel.denormalize(pipe.vq.decode(tokens).float())                     # (B, 80, F)
    if pipe.vocoder is None:
        return log_mel, mel.griffin_lim(log_mel.cpu())                                  # (B, 256 F), 32 iterations
    return log_mel, pipe.vocoder.vocode(log_mel, pipe.dtype).cpu()                     # (B, 256 F)


@torch.inference_mode()
def audio_to_tokens(pipe: Pipeline, wav: torch.Tensor) -> torch.Tensor:
    return pipe.vq.encode(mel.normalize(mel.mel_spectrogram(wav.to(pipe.device))))


def embed_prompts(pipe: Pipeline, prompts: list[str]) -> torch.Tensor:
    """CLAP text embeddings (B, 512). The toy model knows only its world's words: say which were ignored."""
    import clap
    import data
    for p in prompts:
        if not p.strip():
            raise UserError("the prompt is empty; describe a sound, e.g. \"rain on a roof\".")
        if not isinstance(pipe.clap, clap.TinyCLAP):
            continue                                           # LAION-CLAP's tokenizer reads any text
        words, unknown = clap.words_of(p), pipe.clap.unknown_words(p)
        if len(unknown) == len(set(words)):
            raise UserError(f"no word of {p[:60]!r} is known to this CLAP model; the demo model only knows the "
                            f"toy sounds: {', '.join(data.KINDS)}.")
        if unknown:
            print(f"ignored words the model does not know: {', '.join(unknown[:10])}")
    return pipe.clap.embed_text(prompts).to(pipe.device)


def sample_tokens(pipe, cond, steps, cfg, temperature, seed, known_tokens=None, known_mask=None, verbose=True,
                  cfg_ramp=True):
    """Run the MaskGIT sampler (specmaskgit.generate), printing one progress line per step."""
    import specmaskgit
    t0 = time.time()

    def progress(step, total, n_masked):
        if verbose:
            print(f"  step {step + 1:2d}/{total}: {n_masked:4d} tokens still masked ({time.time() - t0:.1f} s)", flush=True)

    with torch.inference_mode(), torch.autocast(pipe.device, dtype=pipe.dtype, enabled=pipe.dtype != torch.float32):
        return specmaskgit.generate(pipe.transformer, cond, steps=steps, cfg=cfg, temperature=temperature,
                                    known_tokens=known_tokens, known_mask=known_mask, seed=seed,
                                    on_step=progress, record_order=True, cfg_ramp=cfg_ramp)


# ---------------------------------------------------------------------------------------------------
# The three tasks.
# ---------------------------------------------------------------------------------------------------

def text_to_audio(pipe, prompts, n=1, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True, cfg_ramp=True):
    """Every prompt n times, in one batch: returns waveforms (P*n, T), log-mels, decoding orders."""
    cond = embed_prompts(pipe, prompts).repeat_interleave(n, dim=0)                   # (P n, 512)
    tokens, order = sample_tokens(pipe, cond, steps, cfg, temperature, seed, verbose=verbose, cfg_ramp=cfg_ramp)
    log_mel, wav = tokens_to_audio(pipe, tokens)
    return wav, log_mel, order, tokens


def clip_window(length: int, clip: int, start: int, end: int) -> int:
    """Where the model's clip-long window goes in a longer input: centred on [start, end), inside the
    input, on a token-column boundary (16 frames x 256 samples = 4096 samples)."""
    col = 16 * mel.HOP
    offset = (start + end) // 2 - clip // 2
    offset = max(0, min(offset, length - clip))
    return offset // col * col


def inpaint(pipe, wav, start_s, end_s, prompt=None, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True):
    """Regenerate the token columns that cover [start_s, end_s] seconds; keep every other token.

    The model sees a clip of pipe.num_samples samples: a shorter input is zero-padded (and the output
    cropped back), a longer one is processed in the clip-long window around the gap and the rest of the
    input is kept as it was. Returns (output waveform as long as the input, tokens before, tokens after).
    """
    clip, length = pipe.num_samples, wav.shape[-1]
    start, end = int(start_s * mel.SR), int(end_s * mel.SR)
    if not 0 <= start < end <= length:
        raise UserError(f"--start {start_s} and --end {end_s} must satisfy 0 <= start < end <= {length / mel.SR:.2f} s "
                        f"(the input's length).")
    offset = clip_window(length, clip, start, end)
    segment = torch.nn.functional.pad(wav[offset:offset + clip], (0, max(0, offset + clip - length)))
    if end - offset > clip:
        raise UserError(f"the gap {start_s}-{end_s} s is longer than the model's clip ({clip / mel.SR:.2f} s).")
    before = audio_to_tokens(pipe, segment[None])                                     # (1, rows, cols)
    frames_per_col = 16
    first = (start - offset) // mel.HOP // frames_per_col
    last = -(-(end - offset) // mel.HOP // frames_per_col)                            # ceil: cover the whole gap
    known = torch.ones_like(before, dtype=torch.bool)
    known[:, :, first:last] = False
    if verbose:
        print(f"inpainting token columns {first}-{last - 1} ({first * 4096 / mel.SR + offset / mel.SR:.2f}-"
              f"{last * 4096 / mel.SR + offset / mel.SR:.2f} s) of {before.shape[-1]}")
    cond = embed_prompts(pipe, [prompt]) if prompt else None
    after, order = sample_tokens(pipe, cond, steps, cfg if cond is not None else 0.0, temperature, seed,
                                 known_tokens=before, known_mask=known, verbose=verbose)
    log_mel, out = tokens_to_audio(pipe, after)
    result = wav.clone()
    n = min(clip, length - offset)
    result[offset:offset + n] = out[0, :n]
    return result, before, after, log_mel, order


def low_frequency_replacement(generated: torch.Tensor, original: torch.Tensor, cutoff_hz: float = BWE_CUTOFF_HZ):
    """LFR (Table 7): below `cutoff_hz` use the input's own spectrum, above it the generated one."""
    n = original.shape[-1]
    g, o = torch.fft.rfft(generated[..., :n]), torch.fft.rfft(original)
    hz = torch.fft.rfftfreq(n, 1 / mel.SR)
    return torch.fft.irfft(torch.where(hz < cutoff_hz, o, g), n=n)


def bandwidth_extension(pipe, wav, prompt=None, lfr=False, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True):
    """Keep the low token rows, regenerate the top row (mel bins 64-79, above ~4.3 kHz)."""
    clip, length = pipe.num_samples, wav.shape[-1]
    out = wav.clone()
    before = after = log_mel = order = None
    for offset in range(0, length, clip):                                              # clip by clip
        segment = torch.nn.functional.pad(wav[offset:offset + clip], (0, max(0, offset + clip - length)))
        before = audio_to_tokens(pipe, segment[None])
        known = torch.ones_like(before, dtype=torch.bool)
        known[:, -1, :] = False                                                         # the top row: bins 64-79
        cond = embed_prompts(pipe, [prompt]) if prompt else None
        after, order = sample_tokens(pipe, cond, steps, cfg if cond is not None else 0.0, temperature, seed,
                                     known_tokens=before, known_mask=known, verbose=verbose)
        log_mel, gen = tokens_to_audio(pipe, after)
        n = min(clip, length - offset)
        piece = gen[0, :n]
        if lfr:
            piece = low_frequency_replacement(piece, wav[offset:offset + n])
        out[offset:offset + n] = piece
    return out, before, after, log_mel, order


# ---------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------

def slug(prompt: str) -> str:
    s = re.sub(r"[^\w]+", "_", prompt.lower(), flags=re.UNICODE).strip("_")
    return (s[:60] or "sample").rstrip("_")


def parse_args(argv=None):
    p = ArgumentParser(description="SpecMaskGIT: text to audio, inpainting, bandwidth extension.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompts", nargs="*", help="one or more text prompts")
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="a bundle written by train.py --bundle")
    p.add_argument("--vocoder-ckpt", default=None, help="a HiFiGAN checkpoint (ours or the official one)")
    p.add_argument("--clap", default=None, choices=["tiny", "laion"],
                   help="conditioner: the bundle's TinyCLAP, or LAION-CLAP (default: laion when --clap-ckpt is given)")
    p.add_argument("--clap-ckpt", default=None, help="LAION-CLAP 630k-audioset-best.pt instead of the bundled CLAP")
    p.add_argument("--steps", type=int, default=16, help="MaskGIT iterations (Sec. 3.4)")
    p.add_argument("--cfg", type=float, default=3.0, help="final classifier-free guidance scale (Eq. 2)")
    p.add_argument("--temperature", type=float, default=1.5, help="initial Gumbel temperature (Eq. 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="takes per prompt (batched)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--dtype", default="auto", help="auto (what pays on this machine, printed) | fp32 | bf16 | fp16 | int8")
    p.add_argument("--out", default="samples", help="output folder")
    p.add_argument("--png", action="store_true", help="also write the mel and the decoding order as a PNG")
    p.add_argument("--inpaint", metavar="FILE", help="regenerate [--start, --end] seconds of FILE")
    p.add_argument("--start", type=float, default=None)
    p.add_argument("--end", type=float, default=None)
    p.add_argument("--bwe", metavar="FILE", help="bandwidth extension of FILE (regenerate above ~4.3 kHz)")
    p.add_argument("--lfr", action="store_true", help="with --bwe: put the input's own low band back (Table 7)")
    p.add_argument("--benchmark", metavar="PRESET", choices=["full", "tiny"],
                   help="time the pipeline at the preset's size, plain path to fast path (benchmark.py)")
    p.add_argument("--runs", type=int, default=3, help="with --benchmark: timed runs per measurement")
    args = p.parse_args(argv)
    if args.steps < 1 or args.steps > 256:
        raise UserError(f"--steps must be between 1 and 256, not {args.steps}.")
    # written so that NaN fails too (every comparison with NaN is False); an infinite scale or temperature
    # made NaN logits (a traceback in torch.multinomial) or NaN confidences (a silent run in no order)
    if not 0 <= args.cfg < math.inf:
        raise UserError(f"--cfg must be a finite number, 0 or more (0 = no guidance), not {args.cfg}.")
    if not 0 <= args.temperature < math.inf:
        raise UserError(f"--temperature must be a finite number, 0 or more, not {args.temperature}.")
    if not 0 <= args.seed < 2 ** 63:                            # torch.Generator.manual_seed's range
        raise UserError(f"--seed must be a whole number from 0 to 2**63 - 1, not {args.seed}.")
    if not 1 <= args.n <= 64:
        raise UserError(f"--n must be between 1 and 64, not {args.n}.")
    if args.inpaint and args.bwe:
        raise UserError("choose one of --inpaint and --bwe.")
    if args.inpaint:
        if args.start is None or args.end is None:
            raise UserError("--inpaint needs --start and --end (seconds).")
        if not 0 <= args.start < args.end < math.inf:          # an infinite --end overflowed int() in inpaint
            raise UserError(f"--start must be >= 0 and below --end, got {args.start} and {args.end}.")
        if len(args.prompts) > 1:
            raise UserError("--inpaint takes at most one prompt.")
    elif args.start is not None or args.end is not None:
        raise UserError("--start and --end only make sense with --inpaint.")
    if args.clap == "laion" and not args.clap_ckpt:
        raise UserError("--clap laion needs --clap-ckpt 630k-audioset-best.pt (LAION-CLAP's checkpoint).")
    if args.clap == "tiny":
        args.clap_ckpt = None                                   # the bundle's TinyCLAP
    if args.lfr and not args.bwe:
        raise UserError("--lfr only makes sense with --bwe.")
    if args.runs < 1:
        raise UserError(f"--runs must be 1 or more, not {args.runs}.")
    if not (args.inpaint or args.bwe or args.benchmark) and not args.prompts:
        raise UserError("give a prompt, e.g. python sample.py \"rain on a roof\" (or --inpaint / --bwe FILE).")
    return args


def save_outputs(path_wav, wav, log_mel=None, order=None, png=False):
    mel.save_wav(path_wav, wav)
    if png and log_mel is not None:
        panels = [log_mel.float()] + ([order.float()] if order is not None else [])
        mel.save_png(os.path.splitext(path_wav)[0] + ".png", panels)
    print(f"wrote {path_wav}" + (" (+ .png)" if png else ""))


def run(args) -> None:
    device = pick_device(args.device)
    if args.benchmark:
        import benchmark
        benchmark.benchmark(args.benchmark, device, args.dtype, args.runs)
        return
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.ckpt, args.vocoder_ckpt, args.clap_ckpt, device, args.dtype)
    make_output_folder(args.out)
    common = dict(steps=args.steps, cfg=args.cfg, temperature=args.temperature, seed=args.seed)
    if args.inpaint or args.bwe:
        path = args.inpaint or args.bwe
        wav = mel.load_audio(path, report=True)
        prompt = args.prompts[0] if args.prompts else None
        if args.inpaint:
            out, _, _, log_mel, order = inpaint(pipe, wav, args.start, args.end, prompt, **common)
            name = f"{os.path.splitext(os.path.basename(path))[0]}_inpainted.wav"
        else:
            out, _, _, log_mel, order = bandwidth_extension(pipe, wav, prompt, args.lfr, **common)
            name = f"{os.path.splitext(os.path.basename(path))[0]}_bwe{'_lfr' if args.lfr else ''}.wav"
        save_outputs(os.path.join(args.out, name), out, log_mel[0], order[0], args.png)
        return
    wav, log_mel, order, _ = text_to_audio(pipe, args.prompts, args.n, **common)
    for i, prompt in enumerate(args.prompts):
        for k in range(args.n):
            j = i * args.n + k
            name = slug(prompt) + (f"_{k + 1}" if args.n > 1 else "") + ".wav"
            save_outputs(os.path.join(args.out, name), wav[j], log_mel[j], order[j], args.png)


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
