"""
pipeline.py — the trained bundle as one object, and the way through it: text -> tokens -> mel -> wav.

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 3.3-3.4  prompt -> CLAP text embedding -> MaskGIT sampling of a token grid (Eq. 2, 3)
                -> SpecVQGAN decoder -> mel -> HiFiGAN -> waveform
  Sec. 4, 5.2   zero-shot tasks: time inpainting (regenerate the token columns of a gap) and bandwidth
                extension (regenerate the top token row, mel bins 64-79, optionally followed by
                low-frequency replacement, Table 7). "Zero-shot" because the model was never trained
                for them: they are just sampling with some tokens given.

Why a file of its own: three commands walk this path (sample.py for the user, evaluate.py for the
paper's tables, speed/benchmark.py for the speed table), and a command never imports another command.
So the loading of the four models and the three tasks live here, once; the commands keep only their
command lines and their output files.

In:  a bundle written by train.py --bundle (or separate checkpoints); prompts, or audio for the tasks
Out: waveforms (B, T) at 22050 Hz, their log-mels (B, 80, F), token grids and decoding orders
"""

import math
import os

import torch

from speed import fast
import mel
from ground.runtime import UserError, autocast, build_model, load_checkpoint, vqgan_hash


DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "toy.pt")
BWE_CUTOFF_HZ = 4300.0    # ~ mel bin 63's top edge (= bin 64's centre, 4327 Hz); top token row = bins 64-79 (Table 7)
MAX_CLIP_SAMPLES = 64 * mel.CLIP_SAMPLES   # a bundle's clip length beyond this is a broken file, not a model
MAX_CFG = 100.0           # guidance scales beyond this only saturate the softmax (the paper uses 3)
MAX_TEMPERATURE = 100.0   # Gumbel temperatures beyond this make the order random already (the paper uses 1.5)
MAX_STEPS = 256           # MaskGIT iterations (the paper uses 16); 256 commit about one token each on the full grid


# ---------------------------------------------------------------------------------------------------
# Loading the four models: one bundle file (train.py --bundle), or separate checkpoints.
# ---------------------------------------------------------------------------------------------------

class Pipeline:
    """The trained pieces side by side: vq (SpecVQGAN), transformer, clap, vocoder (None = Griffin-Lim)."""

    def __init__(self, vq, transformer, clap, vocoder, num_samples, device="cpu", dtype=torch.float32, vqgan_hash=None):
        self.vq, self.transformer, self.clap, self.vocoder = vq, transformer, clap, vocoder
        self.num_samples, self.device, self.dtype = num_samples, device, dtype
        self.vqgan_hash = vqgan_hash                  # runtime.vqgan_hash of the bundled VQGAN: its token ids


def load_pipeline(ckpt=DEFAULT_CKPT, vocoder_ckpt=None, clap_ckpt=None, device="cpu", dtype="fp32",
                  verbose=True) -> Pipeline:
    """dtype: "fp32" | "bf16" | "fp16" | "int8" | "auto" (fast.inference_dtype: the machine's fast one)."""
    from formats import clap_format
    from formats import hifigan_format
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
    learnt, ours = bundle["transformer"].get("vqgan_hash"), vqgan_hash(bundle["vqgan"])   # learnt None: bundled
    if learnt is not None and learnt != ours:                                                # before it was stored
        raise UserError(f"{ckpt}'s transformer learnt the tokens of another VQGAN than the one bundled with it; "
                        f"retrain it with train.py --stage transformer and --bundle again.")
    num_samples = bundle.get("num_samples", mel.CLIP_SAMPLES)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or not 0 < num_samples <= MAX_CLIP_SAMPLES:
        raise UserError(f"{ckpt}'s num_samples is {str(num_samples)[:40]!r}; it must be a whole number of samples "
                        f"up to {MAX_CLIP_SAMPLES}.")
    vq = build_or_explain(ckpt, "vqgan", lambda e: build_model(vqgan.VQGAN, vqgan.Config, e, "vqgan"), bundle["vqgan"]).to(device)
    transformer = build_or_explain(ckpt, "transformer", lambda e: build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config,
                                                                              e, "transformer"),
                                   bundle["transformer"]).to(device)
    if num_samples % column_samples(vq):
        raise UserError(f"{ckpt}'s num_samples is {num_samples}; it must be a whole number of its VQGAN's token "
                        f"columns (a multiple of {column_samples(vq)} samples).")
    # Stages of two runs in one file (a transformer trained on another codebook or clip length, bundled by
    # hand): the sampler would draw ids the VQGAN does not have, an IndexError in decode.
    grid = (vq.cfg.n_codes, vq.cfg.n_mels // vqgan.DOWNSAMPLE, num_samples // column_samples(vq))
    if (transformer.cfg.n_codes, transformer.cfg.rows, transformer.cfg.cols) != grid:
        raise UserError(f"{ckpt}'s transformer ({transformer.cfg.n_codes} codes, {transformer.cfg.rows} x "
                        f"{transformer.cfg.cols} tokens) does not fit its VQGAN and clip ({grid[0]} codes, "
                        f"{grid[1]} x {grid[2]}); retrain it with train.py --stage transformer.")
    dtype = fast.inference_dtype(device, dtype, transformer.cfg.width, verbose)
    if dtype == torch.qint8:                                   # int8 linears in the transformer, fp32 elsewhere
        transformer, dtype = fast.quantize_int8(transformer), torch.float32
    transformer = fast.hold_weights_in(transformer, dtype)    # bf16: converted once, not by autocast every pass
    if device == "cuda":                                       # the 24 blocks replayed as one CUDA graph per shape
        transformer = fast.GraphedTransformer(transformer)
    if clap_ckpt:
        conditioner = clap_format.load_clap("laion", clap_ckpt, device=device)
    elif "clap" in bundle:
        conditioner = build_or_explain(ckpt, "clap", clap_format.load_tiny, bundle["clap"]).to(device)
    else:
        raise UserError(f"{ckpt} holds no CLAP model; pass --clap-ckpt 630k-audioset-best.pt.")
    if vocoder_ckpt:
        voc = build_or_explain(vocoder_ckpt, "vocoder", hifigan_format.load_vocoder, vocoder_ckpt)
    elif "vocoder" in bundle:
        voc = build_or_explain(ckpt, "vocoder", hifigan_format.load_vocoder, bundle["vocoder"])
    else:
        voc = None
        if verbose:
            print("vocoder: none given, using Griffin-Lim (pass --vocoder-ckpt for a HiFiGAN)")
    if voc is not None:                                        # weight norm folded in fp32 before any conversion
        voc = fast.hold_weights_in(hifigan_format.remove_weight_norm(voc).to(device), dtype).eval()
    return Pipeline(vq, transformer, conditioner, voc, num_samples, device, dtype, ours)


def build_or_explain(ckpt: str, stage: str, build, entry):
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


def load_second_transformer(path: str, pipe: Pipeline, flag: str):
    """A transformer beside the bundle's (sample.py --rescore-ckpt, evaluate.py --magnet-ckpt), from a bundle or
    a transformer checkpoint, checked as --ckpt's is: finite weights (runtime.load_checkpoint), the bundle's
    grid and codebook size (from its config, before anything is built), and the token ids of the bundle's
    own VQGAN (its vqgan_hash; one stored before the hash existed passes this one check). Each refusal is
    one sentence naming `flag`."""
    import specmaskgit
    ckpt = load_checkpoint(path)
    entry = ckpt.get("transformer") if ckpt.get("stage") == "bundle" else ckpt
    if not isinstance(entry, dict) or entry.get("stage") != "transformer":
        raise UserError(f"{flag} {path} holds no transformer checkpoint (train one with train.py --stage transformer).")
    saved, mine = entry.get("config"), pipe.transformer.cfg
    grid = tuple(saved.get(k) for k in ("n_codes", "rows", "cols")) if isinstance(saved, dict) else (None,)
    if None not in grid and grid != (mine.n_codes, mine.rows, mine.cols):     # no config: build_or_explain says so
        raise UserError(f"{flag} {path}'s transformer ({grid[0]} codes, {grid[1]} x {grid[2]} tokens) does not fit "
                        f"the bundle's ({mine.n_codes} codes, {mine.rows} x {mine.cols}); train it on the same VQGAN "
                        f"and clip length.")
    learnt = entry.get("vqgan_hash")
    if learnt is None and ckpt.get("stage") == "bundle" and isinstance(ckpt.get("vqgan"), dict):
        learnt = vqgan_hash(ckpt["vqgan"])                                   # the VQGAN bundled with it
    if learnt is not None and pipe.vqgan_hash is not None and learnt != pipe.vqgan_hash:
        raise UserError(f"{flag} {path}'s transformer learnt the tokens of another VQGAN than the bundle's "
                        f"(VQGAN hash {learnt} against {pipe.vqgan_hash}); train it with the bundle's VQGAN.")
    model = build_or_explain(path, "transformer", lambda e: build_model(
        specmaskgit.SpecMaskGIT, specmaskgit.Config, e, "transformer"), entry)
    return model.to(pipe.device)


# ---------------------------------------------------------------------------------------------------
# Tokens -> waveform, and waveform -> tokens.
# ---------------------------------------------------------------------------------------------------

def column_samples(vq) -> int:
    """Samples of audio per token column: patch_frames mel frames of mel.HOP (16 x 256 = 4096; 8-frame tokens: 2048)."""
    return vq.cfg.patch_frames * mel.HOP


@torch.inference_mode()
def tokens_to_audio(pipe: Pipeline, tokens: torch.Tensor, gl_iterations: int | None = None):
    """(B, rows, cols) token ids -> log-mels (B, 80, patch_frames x cols) -> waveforms (B, 256 x frames).
    gl_iterations: Griffin-Lim's iterations when there is no vocoder (None = mel.griffin_lim's default)."""
    with autocast(pipe.device, pipe.dtype):
        log_mel = mel.denormalize(pipe.vq.decode(tokens).float())                     # (B, 80, F)
    return log_mel, mel_to_audio(pipe, log_mel, gl_iterations)


def mel_to_audio(pipe: Pipeline, log_mel: torch.Tensor, gl_iterations: int | None = None) -> torch.Tensor:
    """Log-mels (B, 80, F) -> waveforms (B, 256 F) on the CPU: the pipeline's vocoder, or Griffin-Lim (on
    the mels' device)."""
    import vocoder
    if pipe.vocoder is None:
        iterations = {} if gl_iterations is None else {"n_iter": gl_iterations}
        return mel.griffin_lim(log_mel, **iterations).cpu()
    if log_mel.device.type == "cpu":            # 128 frames at a time, while the activations fit in cache
        return fast.vocode_chunked(pipe.vocoder, log_mel, pipe.dtype, chunk=128).cpu()
    return vocoder.vocode(pipe.vocoder, log_mel, pipe.dtype).cpu()


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
        print(f"{os.path.basename(name)}: peak-normalised: scaled down by {20 * math.log10(peak):.1f} dB to full "
              f"scale (the model's output is not calibrated in level)")
    return wav / peak


@torch.inference_mode()
def audio_to_tokens(pipe: Pipeline, wav: torch.Tensor) -> torch.Tensor:
    return pipe.vq.encode(mel.normalize(mel.mel_spectrogram(wav.to(pipe.device))))


# Words that name no sound: a prompt whose only known words are these is refused like one with none known.
STOP_WORDS = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "is", "it", "its", "of", "on", "or",
              "the", "to", "with", "while", "are", "be", "some", "this", "that"}


def embed_prompts(pipe: Pipeline, prompts: list[str]) -> torch.Tensor:
    """CLAP text embeddings (B, 512) of prompts that check_prompts has let through."""
    check_prompts(pipe, prompts)
    return pipe.clap.embed_text(prompts).to(pipe.device)


def check_prompts(pipe: Pipeline, prompts: list[str]) -> None:
    """An empty prompt, or one the CLAP model knows no word of, is one sentence. The toy model knows only its
    world's words: say which were ignored."""
    import clap
    from data import toyworld
    for p in prompts:
        if not p.strip():
            raise UserError("the prompt is empty; describe a sound, e.g. \"rain on a roof\".")
        if not isinstance(pipe.clap, clap.TinyCLAP):
            continue                                           # LAION-CLAP's tokenizer reads any text
        # every word unknown, or no word at all (a script whose words the tokenizer does not split out)
        words, unknown = clap.words_of(p), pipe.clap.unknown_words(p)
        if not set(words) - set(unknown) - STOP_WORDS:          # "a cat meowing" would be a clip made from "a"
            said = f" ({', '.join(unknown[:10])[:120]} {'is' if len(unknown) == 1 else 'are'} not)" if unknown else ""
            raise UserError(f"no word of {p[:60]!r} that names a sound is known to this CLAP model{said}; the demo "
                            f"model only knows the toy sounds, in the English words of their captions: "
                            f"{', '.join(toyworld.KINDS)}.")
        if unknown:
            print(f"ignored words the model does not know: {', '.join(unknown[:10])}")


def sample_tokens(pipe, cond, steps, guidance, temperature, seed, known_tokens=None, known_mask=None, verbose=True,
                  cfg_ramp=True, record=None, magnet_options=None):
    """Run the MaskGIT sampler (specmaskgit.generate), printing one progress line per step.
    `record`: a list that receives decoding_page.step_record of every step (for the page), or None.
    magnet_options: a dict of magnet.generate's settings to sample with MAGNeT's decoding instead (then
    steps, guidance, temperature and cfg_ramp are unused). Returns the tokens (B, rows, cols) and the decoding
    order (B, rows, cols) on the host: the step that committed each position (-1 = known), read from on_step."""
    from pictures import decoding_page
    import specmaskgit
    on_step = decoding_page.StepLog(verbose, record)       # progress lines, the decoding order, the page's record
    with torch.inference_mode(), autocast(pipe.device, pipe.dtype):
        if magnet_options is not None:
            import magnet
            tokens = magnet.generate(pipe.transformer, cond, known_tokens=known_tokens, known_mask=known_mask, seed=seed,
                                     on_step=on_step, **magnet_options)
        else:
            tokens = specmaskgit.generate(pipe.transformer, cond, steps=steps, guidance=guidance,
                                          temperature=temperature, known_tokens=known_tokens, known_mask=known_mask,
                                          seed=seed, cfg_ramp=cfg_ramp, on_step=on_step)
    return tokens, on_step.decoding_order(tokens)


# ---------------------------------------------------------------------------------------------------
# The three tasks.
# ---------------------------------------------------------------------------------------------------

def text_to_audio(pipe, prompts, n=1, steps=16, guidance=3.0, temperature=1.5, seed=0, verbose=True, cfg_ramp=True,
                  record=None, magnet_options=None):
    """The data's way, forward, each method file once (Sec. 3.3-3.4, DESIGN.md): prompts -> CLAP text embeddings
    (clap.py) -> token grids (specmaskgit.py; magnet.py with magnet_options) -> the decoder's mels (vqgan.py)
    -> log-mels (mel.py) -> waveforms (vocoder.py, or mel.py's Griffin-Lim when the bundle has no vocoder).
    Every prompt n times, in one batch: returns waveforms (P*n, T), log-mels, decoding orders, tokens.
    The other tasks take the same steps through sample_tokens and tokens_to_audio."""
    from pictures import decoding_page
    import specmaskgit
    import vocoder
    check_prompts(pipe, prompts)
    cond = pipe.clap.embed_text(prompts).to(pipe.device).repeat_interleave(n, dim=0)  # (P n, 512): CLAP's text tower
    on_step = decoding_page.StepLog(verbose, record)        # progress lines, the decoding order, the page's record
    with torch.inference_mode():
        with autocast(pipe.device, pipe.dtype):
            if magnet_options is None:                                                # (P n, rows, cols)
                tokens = specmaskgit.generate(pipe.transformer, cond, steps=steps, guidance=guidance,
                                              temperature=temperature, seed=seed, cfg_ramp=cfg_ramp, on_step=on_step)
            else:
                import magnet
                tokens = magnet.generate(pipe.transformer, cond, seed=seed, on_step=on_step, **magnet_options)
            log_mel = mel.denormalize(pipe.vq.decode(tokens).float())                 # (P n, 80, F): [-1, 1] -> log
        if pipe.vocoder is None:                                                      # (P n, 256 F) on the host
            wav = mel.griffin_lim(log_mel).cpu()
        elif log_mel.device.type == "cpu":                   # 128 frames at a time, while the activations fit in cache
            wav = fast.vocode_chunked(pipe.vocoder, log_mel, pipe.dtype, chunk=128).cpu()
        else:
            wav = vocoder.vocode(pipe.vocoder, log_mel, pipe.dtype).cpu()
    return wav, log_mel, on_step.decoding_order(tokens), tokens


def clip_window(length: int, clip: int, start: int, end: int, col: int) -> int:
    """Where the model's clip-long window goes in a longer input: centred on [start, end), inside the
    input, on a token-column boundary (every `col` samples, column_samples). Near the input's end
    the boundary below could cut the gap off; then the window starts on the boundary above and its
    last few thousand samples are the zero padding after the input."""
    offset = (start + end) // 2 - clip // 2
    offset = max(0, min(offset, length - clip))
    offset = offset // col * col
    return offset + col if end - offset > clip else offset


def inpaint(pipe, wav, start_s, end_s, prompt=None, steps=16, guidance=3.0, temperature=1.5, seed=0, verbose=True,
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
    col = column_samples(pipe.vq)
    offset = clip_window(length, clip, start, end, col)
    segment = torch.nn.functional.pad(wav[offset:offset + clip], (0, max(0, offset + clip - length)))
    if end - offset > clip:
        raise UserError(f"the gap {start_s}-{end_s} s is longer than the model's clip ({clip / mel.SR:.2f} s).")
    before = audio_to_tokens(pipe, segment[None])                                     # (1, rows, cols)
    first = (start - offset) // col
    last = -(-(end - offset) // col)                                                  # ceil: cover the whole gap
    known = torch.ones_like(before, dtype=torch.bool)
    known[:, :, first:last] = False
    if verbose:
        print(f"inpainting token columns {first}-{last - 1} ({(first * col + offset) / mel.SR:.2f}-"
              f"{(last * col + offset) / mel.SR:.2f} s) of {before.shape[-1]}")
    cond = embed_prompts(pipe, [prompt]) if prompt else None
    after, order = sample_tokens(pipe, cond, steps, guidance if cond is not None else 0.0, temperature, seed,
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


def bandwidth_extension(pipe, wav, prompt=None, lfr=False, steps=16, guidance=3.0, temperature=1.5, seed=0, verbose=True,
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
        after, order = sample_tokens(pipe, cond, steps, guidance if cond is not None else 0.0, temperature, seed,
                                     known_tokens=before, known_mask=known, verbose=verbose, record=record)
        log_mel, gen = tokens_to_audio(pipe, after)
        n = min(clip, length - offset)
        piece = gen[0, :n]
        if lfr:
            piece = low_frequency_replacement(piece, wav[offset:offset + n])
        out[offset:offset + n] = piece
    return out, before, after, log_mel, order
