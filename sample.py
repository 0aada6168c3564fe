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
Out: one 22050 Hz wav per prompt and take; with --png a labelled picture of its mel and of the MaskGIT
     decoding order (the step at which each token was committed); with --html a self-contained page
     that plays the sampling steps (decoding_page.py)

  python sample.py "rain on a roof"                       # the bundled toy model, a few seconds on a CPU
  python sample.py "a dog barking" "a siren" --n 4 --png
  python sample.py "a church bell" --html                 # samples/a_church_bell.html: the 16 steps
  python sample.py "rain on a roof" --out rain.wav        # exactly that file
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

import fast
import mel
from runtime import (ArgumentParser, UserError, build_model, load_checkpoint, make_output_folder, pick_device,
                     pick_inference_dtype, run_command, vqgan_hash)

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "toy.pt")
BWE_CUTOFF_HZ = 4300.0    # ~ mel bin 63's top edge (= bin 64's centre, 4327 Hz); top token row = bins 64-79 (Table 7)
MAX_TAKES = 64            # prompts x --n in one call: they run as one batch
MAX_CFG = 100.0           # guidance scales beyond this only saturate the softmax (the paper uses 3)
MAX_TEMPERATURE = 100.0   # Gumbel temperatures beyond this make the order random already (the paper uses 1.5)
MAX_SECONDS = 86400.0     # --start / --end: a day of audio
MAX_CLIP_SAMPLES = 64 * mel.CLIP_SAMPLES   # a bundle's clip length beyond this is a broken file, not a model
MAX_RUNS = 1000          # --benchmark's timed runs per measurement
PREVIEW_GL_ITERATIONS = 8  # the page's per-step sounds without a vocoder: a quarter of the cost of the final take's


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
    import hifigan_format
    import specmaskgit
    import vqgan
    bundle = load_checkpoint(ckpt, "bundle")
    for stage in ("vqgan", "transformer"):
        if stage not in bundle:
            raise UserError(f"{ckpt} holds no {stage} checkpoint; train it with train.py --stage {stage}.")
    for stage in ("vqgan", "transformer", "clap", "vocoder"):
        if stage in bundle and not isinstance(bundle[stage], dict):
            raise UserError(f"{ckpt}'s {stage} entry is a {type(bundle[stage]).__name__}, not a checkpoint; "
                            f"re-bundle it with train.py --bundle.")
    learnt = bundle["transformer"].get("vqgan_hash")           # None: bundled before it was stored
    if learnt is not None and learnt != vqgan_hash(bundle["vqgan"]):
        raise UserError(f"{ckpt}'s transformer learnt the tokens of another VQGAN than the one bundled with it; "
                        f"retrain it with train.py --stage transformer and --bundle again.")
    num_samples = bundle.get("num_samples", mel.CLIP_SAMPLES)
    if (not isinstance(num_samples, int) or isinstance(num_samples, bool) or not 0 < num_samples <= MAX_CLIP_SAMPLES
            or num_samples % (16 * mel.HOP)):
        raise UserError(f"{ckpt}'s num_samples is {str(num_samples)[:40]!r}; it must be a whole number of token "
                        f"columns (a multiple of {16 * mel.HOP} samples) up to {MAX_CLIP_SAMPLES}.")
    vq = rebuild(ckpt, "vqgan", vqgan.from_checkpoint, bundle["vqgan"]).to(device).eval()
    transformer = rebuild(ckpt, "transformer", lambda e: build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config, e,
                                                                     "transformer"), bundle["transformer"]).to(device)
    # Stages of two runs in one file (a transformer trained on another codebook or clip length, bundled by
    # hand or by an older train.py): the sampler drew ids the VQGAN does not have, an IndexError in decode.
    grid = (vq.cfg.n_codes, vq.cfg.n_mels // 16, num_samples // (16 * mel.HOP))
    if (transformer.cfg.n_codes, transformer.cfg.rows, transformer.cfg.cols) != grid:
        raise UserError(f"{ckpt}'s transformer ({transformer.cfg.n_codes} codes, {transformer.cfg.rows} x "
                        f"{transformer.cfg.cols} tokens) does not fit its VQGAN and clip ({grid[0]} codes, "
                        f"{grid[1]} x {grid[2]}); retrain it with train.py --stage transformer.")
    dtype = pick_inference_dtype(device, dtype, transformer.cfg.width, verbose)
    if dtype == torch.qint8:                                   # int8 linears in the transformer, fp32 elsewhere
        transformer, dtype = fast.quantize_int8(transformer), torch.float32
    if device == "cuda":                                       # the 24 blocks replayed as one CUDA graph per shape
        transformer = fast.GraphedTransformer(transformer)
    if clap_ckpt:
        conditioner = clap.load_clap("laion", clap_ckpt, device=device)
    elif "clap" in bundle:
        conditioner = rebuild(ckpt, "clap", clap.from_checkpoint, bundle["clap"]).to(device).eval()
    else:
        raise UserError(f"{ckpt} holds no CLAP model; pass --clap-ckpt 630k-audioset-best.pt.")
    if vocoder_ckpt:
        voc = rebuild(vocoder_ckpt, "vocoder", hifigan_format.load_vocoder, vocoder_ckpt)
    elif "vocoder" in bundle:
        voc = rebuild(ckpt, "vocoder", hifigan_format.load_vocoder, bundle["vocoder"])
    else:
        voc = None
        if verbose:
            print("vocoder: none given, using Griffin-Lim (pass --vocoder-ckpt for a HiFiGAN)")
    if voc is not None:
        voc = voc.to(device).eval()
    return Pipeline(vq, transformer, conditioner, voc, num_samples, device, dtype)


def rebuild(ckpt: str, stage: str, build, entry):
    """build(entry), with a hand-edited or truncated checkpoint as one sentence naming what is wrong.

    The model files check what they know to check (runtime.config_from_dict); what slips past them (a
    missing entry, a string where a number belongs, a weight of the wrong shape) surfaces here as the
    Python error it causes, and is named instead of shown as a traceback.
    """
    try:
        return build(entry)
    except UserError as e:
        raise (e if ckpt in str(e) else UserError(f"{ckpt}: {e}")) from None
    except KeyError as e:
        raise UserError(f"{ckpt}'s {stage} checkpoint has no entry {e.args[0]!r}; re-bundle it with train.py "
                        f"--bundle.") from None
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{ckpt}'s {stage} checkpoint cannot be rebuilt ({type(e).__name__}: {first}); its "
                        f"config or weights were edited or cut short.") from None


# ---------------------------------------------------------------------------------------------------
# Tokens -> waveform, and waveform -> tokens.
# ---------------------------------------------------------------------------------------------------

@torch.inference_mode()
def tokens_to_audio(pipe: Pipeline, tokens: torch.Tensor, gl_iterations: int | None = None):
    """(B, rows, cols) token ids -> log-mels (B, 80, 16 cols) -> waveforms (B, 256 x frames).
    gl_iterations: Griffin-Lim's iterations when there is no vocoder (None = mel.griffin_lim's default)."""
    with torch.autocast(pipe.device, dtype=pipe.dtype, enabled=pipe.dtype != torch.float32):
        log_mel = mel.denormalize(pipe.vq.decode(tokens).float())                     # (B, 80, F)
    return log_mel, mel_to_audio(pipe, log_mel, gl_iterations)


def mel_to_audio(pipe: Pipeline, log_mel: torch.Tensor, gl_iterations: int | None = None) -> torch.Tensor:
    """Log-mels (B, 80, F) -> waveforms (B, 256 F) on the CPU: the pipeline's vocoder, or Griffin-Lim."""
    if pipe.vocoder is None:
        iterations = {} if gl_iterations is None else {"n_iter": gl_iterations}
        return mel.griffin_lim(log_mel.cpu(), **iterations)
    return fast.vocode_chunked(pipe.vocoder, log_mel, pipe.dtype).cpu()


def peak_normalised(wav: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """`wav` scaled down to a peak of 1 if it would clip (telling the user when `name` is given).

    A 16-bit file holds [-1, 1]; clipping a louder waveform flattens its peaks into a harsh distortion,
    while one gain for the whole take keeps its shape. NaN or infinite samples (broken weights) are refused.
    """
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if not math.isfinite(peak):
        raise UserError(f"the audio for {name or 'this take'} holds NaN or infinite samples, so nothing was written "
                        f"for it; the model's weights are probably broken.")
    if peak <= 1.0:
        return wav
    if name is not None:
        print(f"{os.path.basename(name)}: the peak is {peak:.2f} x full scale; scaled down by "
              f"{20 * math.log10(peak):.1f} dB instead of clipping")
    return wav / peak


@torch.inference_mode()
def audio_to_tokens(pipe: Pipeline, wav: torch.Tensor) -> torch.Tensor:
    return pipe.vq.encode(mel.normalize(mel.mel_spectrogram(wav.to(pipe.device))))


def embed_prompts(pipe: Pipeline, prompts: list[str]) -> torch.Tensor:
    """CLAP text embeddings (B, 512). The toy model knows only its world's words: say which were ignored."""
    import clap
    import toyworld
    for p in prompts:
        if not p.strip():
            raise UserError("the prompt is empty; describe a sound, e.g. \"rain on a roof\".")
        if not isinstance(pipe.clap, clap.TinyCLAP):
            continue                                           # LAION-CLAP's tokenizer reads any text
        # every word unknown, or no word at all (a script whose words the tokenizer does not split out)
        words, unknown = clap.words_of(p), pipe.clap.unknown_words(p)
        if not set(words) - set(unknown):
            raise UserError(f"no word of {p[:60]!r} is known to this CLAP model; the demo model only knows the "
                            f"toy sounds, in the English words of their captions: {', '.join(toyworld.KINDS)}.")
        if unknown:
            print(f"ignored words the model does not know: {', '.join(unknown[:10])}")
    return pipe.clap.embed_text(prompts).to(pipe.device)


def sample_tokens(pipe, cond, steps, cfg, temperature, seed, known_tokens=None, known_mask=None, verbose=True,
                  cfg_ramp=True, record=None):
    """Run the MaskGIT sampler (specmaskgit.generate), printing one progress line per step.
    `record`: a list that receives decoding_page.step_record of every step (for the page), or None."""
    import decoding_page
    import specmaskgit
    t0 = time.time()

    def on_step(info):
        if verbose:
            print(f"  step {info['step'] + 1:2d}/{info['steps']}: {info['left']:4d} tokens still masked "
                  f"({time.time() - t0:.1f} s)", flush=True)
        if record is not None:
            record.append(decoding_page.step_record(info))

    with torch.inference_mode(), torch.autocast(pipe.device, dtype=pipe.dtype, enabled=pipe.dtype != torch.float32):
        return specmaskgit.generate(pipe.transformer, cond, steps=steps, cfg=cfg, temperature=temperature,
                                    known_tokens=known_tokens, known_mask=known_mask, seed=seed,
                                    on_step=on_step, record_order=True, cfg_ramp=cfg_ramp)


# ---------------------------------------------------------------------------------------------------
# The three tasks.
# ---------------------------------------------------------------------------------------------------

def text_to_audio(pipe, prompts, n=1, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True, cfg_ramp=True,
                  record=None):
    """Every prompt n times, in one batch: returns waveforms (P*n, T), log-mels, decoding orders, tokens."""
    cond = embed_prompts(pipe, prompts).repeat_interleave(n, dim=0)                   # (P n, 512)
    tokens, order = sample_tokens(pipe, cond, steps, cfg, temperature, seed, verbose=verbose, cfg_ramp=cfg_ramp,
                                  record=record)
    log_mel, wav = tokens_to_audio(pipe, tokens)
    return wav, log_mel, order, tokens


def clip_window(length: int, clip: int, start: int, end: int) -> int:
    """Where the model's clip-long window goes in a longer input: centred on [start, end), inside the
    input, on a token-column boundary (16 frames x 256 samples = 4096 samples). Near the input's end
    the boundary below could cut the gap off; then the window starts on the boundary above and its
    last few thousand samples are the zero padding after the input."""
    col = 16 * mel.HOP
    offset = (start + end) // 2 - clip // 2
    offset = max(0, min(offset, length - clip))
    offset = offset // col * col
    return offset + col if end - offset > clip else offset


def inpaint(pipe, wav, start_s, end_s, prompt=None, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True,
            record=None):
    """Regenerate the token columns that cover [start_s, end_s] seconds; keep every other token.

    The model sees a clip of pipe.num_samples samples: a shorter input is zero-padded (and the output
    cropped back), a longer one is processed in the clip-long window around the gap and the rest of the
    input is kept as it was, sample for sample: a window that would exceed full scale is scaled down
    before it is put back. Returns (output as long as the input, tokens before, tokens after, mel, order).
    """
    clip, length = pipe.num_samples, wav.shape[-1]
    start, end = int(start_s * mel.SR), int(end_s * mel.SR)
    if start == end and start_s < end_s:
        raise UserError(f"--start {start_s} and --end {end_s} lie within one sample (1/{mel.SR} s); the gap must "
                        f"cover at least one sample.")
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
                                 known_tokens=before, known_mask=known, verbose=verbose, record=record)
    log_mel, out = tokens_to_audio(pipe, after)
    out = peak_normalised(out, "the inpainted window" if verbose else None)     # the input around it stays as it is
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


def bandwidth_extension(pipe, wav, prompt=None, lfr=False, steps=16, cfg=3.0, temperature=1.5, seed=0, verbose=True,
                        record=None):
    """Keep the low token rows, regenerate the top row (mel bins 64-79, above ~4.3 kHz).
    A long input goes clip by clip; the tokens, mel, order and `record` returned are the last clip's."""
    clip, length = pipe.num_samples, wav.shape[-1]
    out = wav.clone()
    before = after = log_mel = order = None
    n_clips = -(-length // clip)
    for i, offset in enumerate(range(0, length, clip)):                                # clip by clip
        if verbose and n_clips > 1:
            print(f"clip {i + 1} of {n_clips} ({offset / mel.SR:.1f}-{min(length, offset + clip) / mel.SR:.1f} s "
                  f"of {length / mel.SR:.1f} s)", flush=True)
        if record is not None:
            record.clear()
        segment = torch.nn.functional.pad(wav[offset:offset + clip], (0, max(0, offset + clip - length)))
        before = audio_to_tokens(pipe, segment[None])
        known = torch.ones_like(before, dtype=torch.bool)
        known[:, -1, :] = False                                                         # the top row: bins 64-79
        cond = embed_prompts(pipe, [prompt]) if prompt else None
        after, order = sample_tokens(pipe, cond, steps, cfg if cond is not None else 0.0, temperature, seed,
                                     known_tokens=before, known_mask=known, verbose=verbose, record=record)
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


def valid_text(text: str) -> str:
    """`text` with the bytes that were not UTF-8 (which Python keeps as lone surrogates in sys.argv) as
    U+FFFD, so that printing it and writing it into a UTF-8 page cannot fail."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:                           # a surrogate that no byte stands for
        return text.encode("utf-8", "replace").decode("utf-8")


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
    p.add_argument("--no-cfg-ramp", action="store_true", help="text to audio with the guidance scale at --cfg from "
                   "the first step instead of the paper's ramp from 0 (Table 1's 'w/o CFG linear scheduler'; "
                   "the toy model's judges prefer it)")
    p.add_argument("--temperature", type=float, default=1.5, help="initial Gumbel temperature (Eq. 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="takes per prompt (batched)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--dtype", default="auto", help="auto (what pays on this machine, printed) | fp32 | bf16 | fp16 | int8")
    p.add_argument("--out", default="samples",
                   help="output folder (a name already there is not overwritten: the new take gets -2, -3, ...); "
                        "or, for a single take, the .wav file itself")
    p.add_argument("--png", action="store_true", help="also write the mel and the decoding order as a labelled PNG")
    p.add_argument("--html", action="store_true",
                   help="also write a self-contained page that plays the sampling steps (decoding_page.py)")
    p.add_argument("--inpaint", metavar="FILE", help="regenerate [--start, --end] seconds of FILE")
    p.add_argument("--start", type=float, default=None)
    p.add_argument("--end", type=float, default=None)
    p.add_argument("--bwe", metavar="FILE", help="bandwidth extension of FILE (regenerate above ~4.3 kHz)")
    p.add_argument("--lfr", action="store_true", help="with --bwe: put the input's own low band back (Table 7)")
    p.add_argument("--benchmark", metavar="PRESET", choices=["full", "tiny"],
                   help="time the pipeline at the preset's size, plain path to fast path (benchmark.py)")
    p.add_argument("--runs", type=int, default=3, help="with --benchmark: timed runs per measurement")
    args = p.parse_args(argv)
    args.prompts = [valid_text(prompt) for prompt in args.prompts]
    if args.steps < 1 or args.steps > 256:
        raise UserError(f"--steps must be between 1 and 256, not {args.steps}.")
    # written so that NaN fails too (every comparison with NaN is False); an infinite scale or temperature
    # made NaN logits (a traceback in torch.multinomial) or NaN confidences (a silent run in no order)
    if args.no_cfg_ramp and (args.inpaint or args.bwe):
        raise UserError("--no-cfg-ramp is for text to audio; inpainting and bandwidth extension use the ramp.")
    if not 0 <= args.cfg <= MAX_CFG:
        raise UserError(f"--cfg must be between 0 (no guidance) and {MAX_CFG:g} (the paper uses 3), not {args.cfg}.")
    if not 0 <= args.temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature must be between 0 and {MAX_TEMPERATURE:g} (the paper uses 1.5), "
                        f"not {args.temperature}.")
    if not 0 <= args.seed < 2 ** 63:                            # torch.Generator.manual_seed's range
        raise UserError(f"--seed must be a whole number from 0 to 2**63 - 1, not {args.seed}.")
    if not 1 <= args.n <= MAX_TAKES:
        raise UserError(f"--n must be between 1 and {MAX_TAKES}, not {args.n}.")
    if len(args.prompts) * args.n > MAX_TAKES:
        raise UserError(f"{len(args.prompts)} prompts x --n {args.n} make {len(args.prompts) * args.n} takes; at most "
                        f"{MAX_TAKES} run in one call (one batch), so split them over several calls.")
    if args.inpaint and args.bwe:
        raise UserError("choose one of --inpaint and --bwe.")
    if args.inpaint:
        if args.start is None or args.end is None:
            raise UserError("--inpaint needs --start and --end (seconds).")
        if not 0 <= args.start < args.end:
            raise UserError(f"--start must be >= 0 and below --end, got {args.start} and {args.end}.")
        if not args.end <= MAX_SECONDS:                         # also NaN and inf; int() of them raises
            raise UserError(f"--start and --end must be at most {MAX_SECONDS:g} s (a day of audio), not {args.end}.")
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
    if not 1 <= args.runs <= MAX_RUNS:
        raise UserError(f"--runs must be from 1 to {MAX_RUNS}, not {args.runs}.")
    if not (args.inpaint or args.bwe or args.benchmark) and not args.prompts:
        raise UserError("give a prompt, e.g. python sample.py \"rain on a roof\" (or --inpaint / --bwe FILE).")
    return args


OUTPUT_EXTS = (".wav", ".png", ".html")   # what one take may write; they share one name


def output_names(out: str, stems: list[str], exts=(".wav",), claimed: list | None = None) -> list[dict]:
    """Where each take goes: {".wav": path, ".png": path, ...} for the extensions in `exts` (the wav first).

    An --out ending in .wav names one file: exactly that one (in the case given), for exactly one take
    (replaced if it exists, and said; a symbolic link there is refused, never replaced). Its .png and
    .html go beside it and must not exist yet. Otherwise --out is a folder, and no take overwrites
    another one or anything already there: a taken name (by an earlier take of this call, or by any file
    or link in the folder, compared without regard to case, as macOS and Windows compare them) gets the
    first free "-2", "-3", ... and the user is told.

    Names are claimed as they are chosen: an empty placeholder per file, created only where nothing
    exists (O_EXCL), so that a second run writing into the same folder at the same time picks other
    names; the take's atomic rename fills it. Each placeholder goes into `claimed`, for remove_claims.
    """
    claimed = [] if claimed is None else claimed
    if out.lower().endswith(".wav") and not os.path.isdir(out):
        if len(stems) != 1:
            raise UserError(f"--out {out} names one file, but this call makes {len(stems)} takes; give a folder.")
        make_output_folder(os.path.dirname(os.path.abspath(out)))
        if os.path.islink(out):
            raise UserError(f"--out {out} is a symbolic link; name the file itself (a link is never replaced).")
        names = {ext: os.path.splitext(out)[0] + ext for ext in exts[1:]}
        taken = existing_names(os.path.dirname(os.path.abspath(out)))
        for path in names.values():
            there = taken.get(os.path.basename(path).lower())
            if there or not claim(path, claimed):
                case = "" if there in (None, os.path.basename(path)) else \
                    " (names that differ only in case are one file on macOS and Windows)"
                raise UserError(f"--out {out} would also write {path}, and {there or path} exists there{case}; "
                                f"move it away or give another --out.")
        if os.path.exists(out):
            print(f"{out} exists and is replaced (--out names it)")
        return [{exts[0]: out, **names}]
    make_output_folder(out)
    taken, result = existing_names(out), []
    for stem in stems:
        name, k = stem, 1
        while not claim_all([os.path.join(out, name + ext) for ext in exts], taken, claimed):
            k += 1
            name = f"{stem}-{k}"
        if name != stem:
            print(f"the name {stem} is taken (by a file in {out} or an earlier take of this call): writing "
                  f"{name}{exts[0]} instead (nothing is overwritten)")
        result.append({ext: os.path.join(out, name + ext) for ext in exts})
    return result


def existing_names(folder: str) -> dict:
    """Everything in `folder` (files, folders, links, dangling ones too), by lower-cased name."""
    try:
        return {n.lower(): n for n in os.listdir(folder)}
    except OSError as e:
        raise UserError(f"cannot read the output folder {folder}: {e.strerror or e}.") from None


def claim(path: str, claimed: list) -> bool:
    """Create an empty placeholder at `path` if nothing is there (atomically: O_CREAT | O_EXCL)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    except FileExistsError:
        return False
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}.") from None
    claimed.append(path)
    return True


def claim_all(paths: list, taken: set, claimed: list) -> bool:
    """Claim every one of `paths` (one take's files), or none of them."""
    mine = []
    if any(os.path.basename(p).lower() in taken for p in paths):
        return False
    for p in paths:
        if not claim(p, mine):
            remove_claims(mine)
            return False
    taken.update((os.path.basename(p).lower(), os.path.basename(p)) for p in paths)
    claimed += mine
    return True


def remove_claims(claimed: list) -> None:
    """Delete the placeholders that are still empty (a finished take has replaced its own by then)."""
    for path in claimed:
        try:
            if os.lstat(path).st_size == 0 and not os.path.islink(path):
                os.remove(path)
        except OSError:
            pass


def save_outputs(path_wav, wav, log_mel=None, order=None, png=False) -> torch.Tensor:
    """The take's wav (peak-normalised if it would clip) and, with png, its labelled mel and decoding order.
    Returns the waveform as written."""
    import decoding_page
    wav = peak_normalised(wav, path_wav)
    mel.save_wav(path_wav, wav)
    if png and log_mel is not None:
        decoding_page.save_figure(os.path.splitext(path_wav)[0] + ".png", log_mel, order)
    print(f"wrote {path_wav}" + (" (+ .png)" if png else ""))
    return wav


@torch.inference_mode()
def save_page(path_html, pipe, record, b, final_wav, settings) -> None:
    """The decoding page of take `b`: each step's belief (record[s]["belief"]) decoded by the SpecVQGAN
    into a mel and by the vocoder into sound (a preview: Griffin-Lim with few iterations when the
    bundle has no vocoder), then laid out by decoding_page."""
    import decoding_page
    rows = pipe.vq.cfg.n_mels // 16
    beliefs = torch.stack([r["belief"][b] for r in record]).view(len(record), rows, -1)    # (S, rows, cols)
    mels, wavs = [], []
    for chunk in beliefs.split(4):                                                        # bounded memory
        log_mel, wav = tokens_to_audio(pipe, chunk.to(pipe.device), gl_iterations=PREVIEW_GL_ITERATIONS)
        mels.append(log_mel.float().cpu())
        wavs.append(wav.float().cpu())
    small = mel.resample(torch.cat(wavs), mel.SR, decoding_page.PAGE_SR)                  # (S, T / 2)
    small = small / small.abs().amax(-1, keepdim=True).clamp_min(1.0)                     # no clipping
    title = settings["prompt"] if settings["task"] == "text to audio" else settings["task"]
    page = decoding_page.page_html(record, b, rows, beliefs.shape[-1], torch.cat(mels), final_wav, settings, small,
                                   title)
    decoding_page.write_page(path_html, page)
    print(f"wrote {path_html} ({len(page) / 1e6:.1f} MB)")


def page_settings(args, pipe, task: str, prompt: str | None, **more) -> dict:
    """What made a take, for the page: the prompt, every sampling setting and the model file."""
    ckpt = os.path.abspath(args.ckpt)
    rows = pipe.vq.cfg.n_mels // 16
    return {"prompt": prompt if prompt else "(none: unconditional)", "task": task, **more,
            "steps (--steps)": args.steps,
            f"final guidance scale (--cfg, {'constant' if args.no_cfg_ramp else 'ramped from 0'})":
                args.cfg if prompt else "0 (no prompt)",
            "initial Gumbel temperature (--temperature, annealed to 0)": args.temperature, "seed (--seed)": args.seed,
            "model": f"{ckpt} ({os.path.getsize(ckpt) / 1e6:.1f} MB, "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(ckpt)))})",
            "conditioner": type(pipe.clap).__name__ + (f" ({args.clap_ckpt})" if args.clap_ckpt else ""),
            "vocoder": (args.vocoder_ckpt or "the bundle's HiFiGAN") if pipe.vocoder is not None else
                       f"Griffin-Lim (the steps' sounds: {PREVIEW_GL_ITERATIONS} iterations)",
            "clip": f"{pipe.num_samples / mel.SR:.2f} s = {rows} x {pipe.num_samples // (16 * mel.HOP)} tokens",
            "device, dtype": f"{pipe.device}, {str(pipe.dtype).replace('torch.', '')}"}


def run(args) -> None:
    device = pick_device(args.device)
    if args.benchmark:
        import benchmark
        benchmark.benchmark(args.benchmark, device, args.dtype, args.runs)
        return
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.ckpt, args.vocoder_ckpt, args.clap_ckpt, device, args.dtype)
    claimed = []                                         # placeholders of the names chosen (output_names)
    try:
        make_takes(args, pipe, claimed)
    finally:                                             # a failure or Ctrl-C: no empty file is left behind
        remove_claims(claimed)


def make_takes(args, pipe, claimed: list) -> None:
    exts = OUTPUT_EXTS[:1] + ((".png",) if args.png else ()) + ((".html",) if args.html else ())
    common = dict(steps=args.steps, cfg=args.cfg, temperature=args.temperature, seed=args.seed)
    record = [] if args.html else None                   # generate's per-step record, for the page
    if args.inpaint or args.bwe:
        path = args.inpaint or args.bwe
        base = os.path.splitext(os.path.basename(path))[0]
        suffix = "_inpainted" if args.inpaint else "_bwe" + ("_lfr" if args.lfr else "")
        names, = output_names(args.out, [base + suffix], exts, claimed)
        wav = mel.load_audio(path, report=True)
        prompt = args.prompts[0] if args.prompts else None
        clip, length = pipe.num_samples, wav.shape[-1]
        if args.inpaint:
            out, _, _, log_mel, order = inpaint(pipe, wav, args.start, args.end, prompt, record=record, **common)
            offset = clip_window(length, clip, int(args.start * mel.SR), int(args.end * mel.SR))
            task = f"inpainting {args.start:g}-{args.end:g} s of {valid_text(os.path.basename(path))}"
        else:
            out, _, _, log_mel, order = bandwidth_extension(pipe, wav, prompt, args.lfr, record=record, **common)
            offset = (length - 1) // clip * clip                                       # the last clip's window
            task = f"bandwidth extension{' + LFR' if args.lfr else ''} of {valid_text(os.path.basename(path))}"
        written = save_outputs(names[".wav"], out, log_mel[0], order[0], args.png)
        if record is not None:
            window = written[offset:offset + clip]
            shown = f"{offset / mel.SR:.2f}-{min(length, offset + clip) / mel.SR:.2f} s of {length / mel.SR:.2f} s"
            save_page(names[".html"], pipe, record, 0, window,
                      page_settings(args, pipe, task, prompt, **{"window shown": shown}))
        return
    takes = [(p, k) for p in args.prompts for k in range(args.n)]
    paths = output_names(args.out, [slug(p) + (f"_{k + 1}" if args.n > 1 else "") for p, k in takes], exts, claimed)
    wav, log_mel, order, _ = text_to_audio(pipe, args.prompts, args.n, record=record, cfg_ramp=not args.no_cfg_ramp,
                                           **common)
    for j, ((prompt, k), names) in enumerate(zip(takes, paths)):
        written = save_outputs(names[".wav"], wav[j], log_mel[j], order[j], args.png)
        if record is not None:
            save_page(names[".html"], pipe, record, j, written,
                      page_settings(args, pipe, "text to audio", prompt, **{"take": f"{k + 1} of {args.n}"}))


def main(argv=None) -> int:
    try:
        return run_command(lambda: run(parse_args(argv)))
    except KeyboardInterrupt:                            # Ctrl-C: the takes already written stay, nothing partial
        print("interrupted; no partial file is left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
