"""
ground/sample_edges.py — sample.py's edges: the ranges of its flags, the output names it claims, and the
decoding page of a take (its settings, each step decoded into a mel and a sound).

sample.py keeps its flags (the argparse parser: the command's face) and its path, load -> generate ->
write. What guards that path lives here: every flag checked once parsed, one sentence per mistake (NaN and
infinity included); MAGNeT's flags checked against the model's token grid; the output names claimed with
empty placeholders so that no take overwrites another or a file already there (O_EXCL, case-insensitive),
and the placeholders removed when a run fails; the page's settings and per-step sounds.

In:  sample.py's parsed flags, the loaded pipeline, the sampler's per-step record
Out: checked flags; {".wav": path, ...} per take; the page written by pictures/decoding_page.py
"""

import os
import re
import stat
import time

import torch

import mel
from ground import audio_io
import pipeline
from ground.runtime import UserError, make_output_folder

SPECMASKGIT_DEFAULTS = dict(steps=16, cfg=3.0, temperature=1.5)   # sample.py's: the paper's sampler (Sec. 3.4)
MAX_TAKES = 64            # prompts x --n in one call: they run as one batch
MAX_SECONDS = 86400.0     # --start / --end: a day of audio
MAX_RUNS = 1000          # --benchmark's timed runs per measurement
PREVIEW_GL_ITERATIONS = 8  # the page's per-step sounds without a vocoder: a quarter of the cost of the final take's


# ---------------------------------------------------------------------------------------------------
# The flags' ranges.
# ---------------------------------------------------------------------------------------------------

def valid_text(text: str) -> str:
    """`text` with the bytes that were not UTF-8 (which Python keeps as lone surrogates in sys.argv) as
    U+FFFD, so that printing it and writing it into a UTF-8 page cannot fail."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:                           # a surrogate that no byte stands for
        return text.encode("utf-8", "replace").decode("utf-8")


def check_args(args):
    """The parsed flags, each checked against its range and against the others (sample.py's parse_args
    calls it); the prompts' undecodable bytes become U+FFFD, --threads a list, --clap tiny drops --clap-ckpt."""
    args.prompts = [valid_text(prompt) for prompt in args.prompts]
    check_magnet_args(args)
    if not 1 <= args.steps <= pipeline.MAX_STEPS:
        raise UserError(f"--steps must be between 1 and {pipeline.MAX_STEPS}, not {args.steps}.")
    if args.no_cfg_ramp and (args.inpaint or args.bwe):
        raise UserError("--no-cfg-ramp is for text to audio; inpainting and bandwidth extension use the ramp.")
    # written so that NaN fails too (every comparison with NaN is False): an infinite or NaN scale or
    # temperature would make NaN logits or confidences, and the decoding order would be arbitrary
    if not 0 <= args.cfg <= pipeline.MAX_CFG:
        raise UserError(f"--cfg must be between 0 (no guidance) and {pipeline.MAX_CFG:g} (the paper uses 3), "
                        f"not {args.cfg}.")
    if not 0 <= args.temperature <= pipeline.MAX_TEMPERATURE:
        raise UserError(f"--temperature must be between 0 and {pipeline.MAX_TEMPERATURE:g} (the paper uses 1.5), "
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
    if args.threads is not None:
        args.threads = thread_counts(args.threads, bool(args.benchmark))
    if not (args.inpaint or args.bwe or args.benchmark) and not args.prompts:
        raise UserError("give a prompt, e.g. python sample.py \"rain on a roof\" (or --inpaint / --bwe FILE).")
    return args


def check_magnet_args(args) -> None:
    """--sampler magnet's flags: parsed and range-checked (the grid-dependent ones in magnet_options)."""
    if args.sampler != "magnet":
        return
    if args.inpaint or args.bwe or args.no_cfg_ramp:
        raise UserError("--sampler magnet is for text to audio (without --no-cfg-ramp).")
    try:
        args.guidance = tuple(float(x) for x in args.guidance.split(","))
        args.row_steps = tuple(int(x) for x in args.row_steps.split(","))
    except ValueError:
        raise UserError(f"--guidance takes two numbers and --row-steps whole numbers, separated by commas, "
                        f"not {args.guidance!r} and {args.row_steps!r}.") from None
    if len(args.guidance) != 2 or not all(0 <= x <= pipeline.MAX_CFG for x in args.guidance):
        raise UserError(f"--guidance must be two scales between 0 and {pipeline.MAX_CFG:g}, like 10,1.")
    if not all(1 <= x <= pipeline.MAX_STEPS for x in args.row_steps):
        raise UserError(f"--row-steps must each be between 1 and {pipeline.MAX_STEPS}, not {args.row_steps}.")
    if not 0 <= args.magnet_temperature <= pipeline.MAX_TEMPERATURE:
        raise UserError(f"--magnet-temperature must be between 0 and {pipeline.MAX_TEMPERATURE:g}, "
                        f"not {args.magnet_temperature}.")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be above 0 and at most 1, not {args.top_p}.")
    if not 0 <= args.rescore_weight <= 1:
        raise UserError(f"--rescore-weight must be between 0 and 1, not {args.rescore_weight}.")
    for name, low in (("span_len", 1), ("context", -1), ("prefix_cols", 0)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise UserError(f"--{name.replace('_', '-')} must be {low} or more, not {v}.")
    if args.context is not None and args.context >= 0 and len(args.row_steps) == 1:
        raise UserError("--context restricts the rows above the first, and one --row-steps number decodes every "
                        "row in one phase: give one number per row (e.g. 8,4,4,4,4).")


def magnet_options(args, pipe) -> dict:
    """magnet.generate's settings from the flags, checked against the model's grid; loads the rescorer."""
    c = pipe.transformer.cfg
    if len(args.row_steps) not in (1, c.rows):
        raise UserError(f"--row-steps needs one number or one per token row ({c.rows}), not {len(args.row_steps)}.")
    for name in ("span_len", "prefix_cols", "context"):             # +-cols already reaches every column
        if (getattr(args, name) or 0) > c.cols:
            raise UserError(f"--{name.replace('_', '-')} must be at most the grid's {c.cols} columns.")
    rescorer = pipeline.load_second_transformer(args.rescore_ckpt, pipe, "--rescore-ckpt") if args.rescore_ckpt else None
    # last, so that a bad value of MAGNeT's own flags is named first
    unused = [f"--{name}" for name, default in SPECMASKGIT_DEFAULTS.items() if getattr(args, name) != default]
    if unused:
        raise UserError(f"--sampler magnet does not use {' '.join(unused)} (SpecMaskGIT's sampler); its own are "
                        f"--row-steps (steps per row), --guidance (HIGH,LOW) and --magnet-temperature.")
    return dict(row_steps=args.row_steps, guidance=args.guidance, temperature_start=args.magnet_temperature,
                top_p=args.top_p, span_len=args.span_len, scoring=args.span_scoring, context=args.context,
                rescorer=rescorer, rescore_weight=args.rescore_weight, prefix_cols=args.prefix_cols)


def thread_counts(text: str, benchmark: bool) -> list[int]:
    """--threads "1,2,4" -> [1, 2, 4]: each a whole number from 1 to the machine's CPU count."""
    if not benchmark:
        raise UserError("--threads goes with --benchmark (e.g. --benchmark full --threads 1,2,4).")
    most = os.cpu_count() or 1
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--threads takes thread counts like 1,2,4, not {text!r}.") from None
    if not counts or any(not 1 <= c <= most for c in counts):
        raise UserError(f"--threads takes thread counts from 1 to {most} (this machine's CPUs), not {text!r}.")
    return counts


# ---------------------------------------------------------------------------------------------------
# The output names: claimed before the takes are made, released if a run fails.
# ---------------------------------------------------------------------------------------------------

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
    single = out.lower().endswith(".wav") and not os.path.isdir(out)
    if os.path.isdir(os.path.dirname(os.path.abspath(out)) if single else out):
        reclaim_dead_claims(os.path.dirname(os.path.abspath(out)) if single else out)
    if single:
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
    """Create an empty placeholder at `path` if nothing is there (atomically: O_CREAT | O_EXCL), stamped with
    this process's id as its modification time in nanoseconds (a moment in January 1970 that no real file
    has): after a SIGKILL the next run can tell whose claim it was (reclaim_dead_claims)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except FileExistsError:
        return False
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}.") from None
    claimed.append(path)
    try:
        os.utime(fd, ns=(os.getpid(), os.getpid()))
    except OSError:                                      # a file system without that: the claim is unstamped
        pass
    finally:
        os.close(fd)
    return True


MAX_PID = 2 ** 32         # a stamp below this many nanoseconds after 1970 is a claimer's process id


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs. Our own id counts as running: a claim stamped with it may be this process's
    (an earlier output_names call), and one of a dead process that had our id only stays, as before."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:                              # another user's process
        return True
    return True


def reclaim_dead_claims(folder: str) -> None:
    """Free the names a sample.py killed with SIGKILL (or a power cut) claimed in `folder`: the placeholders
    still empty and stamped with the id of a process that no longer runs. A running process's claims are
    never touched, nor a file that holds anything, nor one without a claim's stamp."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        pid = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode) and st.st_size == 0 and 0 < pid < MAX_PID and not process_alive(pid):
            try:
                os.remove(entry.path)
            except OSError:
                pass


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


def same_take(path_wav: str) -> str | None:
    """The earlier take that `path_wav` (a renamed "<stem>-<k>.wav") repeats byte for byte: <stem>.wav,
    <stem>-2.wav, ... (the same prompt, settings and --seed give the same sound), or None."""
    folder, name = os.path.split(path_wav)
    m = re.fullmatch(r"(.+)-(\d+)\.wav", name)
    if not m:
        return None
    with open(path_wav, "rb") as f:
        data = f.read()
    for j in range(1, int(m.group(2))):
        other = os.path.join(folder, m.group(1) + ("" if j == 1 else f"-{j}") + ".wav")
        if os.path.isfile(other) and os.path.getsize(other) == len(data):
            with open(other, "rb") as f:
                if f.read() == data:
                    return other
    return None


# ---------------------------------------------------------------------------------------------------
# The decoding page of one take.
# ---------------------------------------------------------------------------------------------------

@torch.inference_mode()
def save_page(path_html, pipe, record, b, final_wav, settings) -> None:
    """The decoding page of take `b`: each step's belief (record[s]["belief"]) decoded by the SpecVQGAN
    into a mel and by the vocoder into sound (a preview: Griffin-Lim with few iterations when the
    bundle has no vocoder), then laid out by decoding_page."""
    from pictures import decoding_page
    rows = pipe.vq.cfg.n_mels // 16
    beliefs = torch.stack([r["belief"][b] for r in record]).view(len(record), rows, -1)    # (S, rows, cols)
    mels, wavs = [], []
    for chunk in beliefs.split(4):                                                        # bounded memory
        log_mel, wav = pipeline.tokens_to_audio(pipe, chunk.to(pipe.device), gl_iterations=PREVIEW_GL_ITERATIONS)
        mels.append(log_mel.float().cpu())
        wavs.append(wav.float().cpu())
    small = audio_io.resample(torch.cat(wavs), mel.SR, decoding_page.PAGE_SR)                  # (S, T / 2)
    small = small / small.abs().amax(-1, keepdim=True).clamp_min(1.0)                     # no clipping
    title = settings["prompt"] if settings["task"] == "text to audio" else settings["task"]
    page = decoding_page.page_html(record, b, rows, beliefs.shape[-1], torch.cat(mels), final_wav, settings, small,
                                   title)
    decoding_page.write_page(path_html, page)
    print(f"wrote {path_html} ({len(page) / 1e6:.1f} MB)")


def page_settings(args, pipe, task: str, prompt: str | None, **more) -> dict:
    """What made a take, for the page: the prompt, every sampling setting and the model file."""
    ckpt = args.ckpt                                                    # the page shows its file name only
    rows = pipe.vq.cfg.n_mels // 16
    if getattr(args, "sampler", "specmaskgit") == "magnet":             # --steps, --cfg, --temperature unused
        more["sampler (--sampler magnet)"] = (
            f"MAGNeT: span {args.span_len or pipe.transformer.cfg.span_len} ({args.span_scoring}), guidance "
            f"{args.guidance[0]:g} -> {args.guidance[1]:g}, temperature {args.magnet_temperature:g} -> 0, top-p "
            f"{args.top_p:g}, row steps {','.join(map(str, args.row_steps))}, context "
            f"{'all' if args.context is None else args.context}, rescorer "
            f"{os.path.basename(args.rescore_ckpt or 'none')}, "
            f"prefix {args.prefix_cols} columns")
    return {"prompt": prompt if prompt else "(none: unconditional)", "task": task, **more,
            "steps (--steps)": args.steps,
            f"final guidance scale (--cfg, {'constant' if args.no_cfg_ramp else 'ramped from 0'})":
                args.cfg if prompt else "0 (no prompt)",
            "initial Gumbel temperature (--temperature, annealed to 0)": args.temperature, "seed (--seed)": args.seed,
            "model": f"{os.path.basename(ckpt)} ({os.path.getsize(ckpt) / 1e6:.1f} MB, "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(ckpt)))})",
            "conditioner": type(pipe.clap).__name__ + (f" ({os.path.basename(args.clap_ckpt)})" if args.clap_ckpt
                                                       else ""),
            "vocoder": os.path.basename(args.vocoder_ckpt or "") or "the bundle's HiFiGAN" if pipe.vocoder is not None else
                       f"Griffin-Lim (the steps' sounds: {PREVIEW_GL_ITERATIONS} iterations)",
            "clip": f"{pipe.num_samples / mel.SR:.2f} s = {rows} x "
                    f"{pipe.num_samples // pipeline.column_samples(pipe.vq)} tokens",
            "device, dtype": f"{pipe.device}, {str(pipe.dtype).replace('torch.', '')}"}
