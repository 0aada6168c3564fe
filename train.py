"""
train.py — train every stage of SpecMaskGIT, on one CPU, one GPU, or many GPUs (torchrun).

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 4 (experimental setup) and Fig. 3 (the two-stage pipeline).
The stages, in the order `--stage all` runs them (each reuses the previous stages' checkpoints):

  vqgan        SpecVQGAN tokenizer: log-mel 80 x F  <->  token grid 5 x F/16   (vqgan.py, Sec. 3.1)
  vocoder      HiFiGAN: log-mel -> waveform                                     (vocoder.py, Sec. 3.1)
  clap         the conditioner (TinyCLAP; LAION-CLAP is pretrained, nothing to train) (clap.py, Sec. 3.3)
  transformer  the masked transformer over tokens, conditioned on CLAP *audio* embeddings
               (specmaskgit.py, Sec. 3.2-3.3). The dataset is tokenised once and cached with its CLAP
               embeddings; training then reads only that cache.

Every stage shares one loop (below): deterministic batches per step (so --resume replays the same data
order), linear warm-up then cosine decay of the learning rate, gradient clipping inside each Trainer,
a progress line every --log-every steps, a JSON-lines log, and atomic checkpoints.

Examples:
  python train.py --data toy --stage all                      # the bundled demo model: 42.5 min on 2 CPU cores
  python train.py --data audiocaps --root AUDIOCAPS --clap-ckpt 630k-audioset-best.pt --preset full
  torchrun --nproc_per_node 4 train.py --data audiocaps ...   # several GPUs (DistributedDataParallel)
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch

from runtime import (ArgumentParser, UserError, check_config, load_checkpoint, make_output_folder, pick_device,
                     pick_dtype, run_command, save_checkpoint)

STAGES = ["vqgan", "vocoder", "clap", "transformer"]


# ---------------------------------------------------------------------------------------------------
# Command line. Model flags are generated from each Config dataclass, one flag per field, named
# --<stage>.<field>, so the command line can never drift from the configs.
# ---------------------------------------------------------------------------------------------------

def stage_module(stage: str):
    """The model file of a stage (imported lazily: `python train.py --stage clap` needs no vqgan code)."""
    import importlib
    return importlib.import_module({"transformer": "specmaskgit"}.get(stage, stage))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for stage in STAGES:
        group = parser.add_argument_group(f"{stage} config (defaults: the --preset)")
        for f in dataclasses.fields(stage_module(stage).Config):
            group.add_argument(f"--{stage}.{f.name}", dest=f"{stage}.{f.name}", default=None, metavar="V",
                               help=f"{stage_module(stage).__name__}.Config.{f.name}")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description="Train SpecMaskGIT stage by stage.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="toy", help="toy | audiocaps | a folder of audio files")
    p.add_argument("--root", default=None, help="the AudioCaps folder (CSV files + clips) for --data audiocaps")
    p.add_argument("--stage", default="all", choices=STAGES + ["all"])
    p.add_argument("--preset", default=None, choices=["tiny", "full"],
                   help="model sizes; default tiny for the toy world, full otherwise")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    p.add_argument("--resume", action="store_true", help="continue each stage from its last checkpoint")
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default: per stage, see STAGE_DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; transformer default = 1e-3 x batch / 256 (Sec. 4)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps")
    p.add_argument("--num-samples", type=int, default=None,
                   help="clip length in samples (default 65536 for toy, 217088 otherwise); a multiple of 4096")
    p.add_argument("--n-clips", type=int, default=4000,
                   help="toy world: training clips (2000 left the transformer ~0.3 nats better on them than on new ones)")
    p.add_argument("--clap", default=None, choices=["tiny", "laion"], help="conditioner; default tiny for toy")
    p.add_argument("--clap-ckpt", default=None, help="LAION-CLAP 630k-audioset-best.pt (for --clap laion)")
    p.add_argument("--vocoder-ckpt", default=None, help="an official HiFiGAN generator: skip the vocoder stage")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast precision; auto = fp32 for the tiny preset)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--preview-every", type=int, default=500, help="vqgan: PNG of input vs reconstruction")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", default=None, help="after the last stage, also write the one-file bundle here")
    add_config_flags(p)
    args = p.parse_args(argv)
    if args.preset is None:
        args.preset = "tiny" if args.data == "toy" else "full"
    if args.clap is None:
        args.clap = "tiny" if args.data == "toy" else "laion"
    if args.num_samples is None:
        from mel import CLIP_SAMPLES, TOY_SAMPLES
        args.num_samples = TOY_SAMPLES if args.data == "toy" else CLIP_SAMPLES
    if args.out is None:
        args.out = os.path.join("runs", "toy" if args.data == "toy" else os.path.basename(os.path.normpath(args.data)))
    for name in ("steps", "batch_size", "warmup", "n_clips", "log_every", "ckpt_every", "preview_every"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, not {v}.")
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, not {args.workers}.")
    # batch_indices seeds every epoch with seed * 1_000_003 + epoch, and torch's generators take seeds below
    # 2**64: a larger --seed passed this parser and crashed in the first batch with an overflow traceback.
    if not 0 <= args.seed < 2 ** 32:
        raise UserError(f"--seed must be a whole number from 0 to 2**32 - 1, not {args.seed}.")
    if args.lr is not None and not (0 < args.lr < 1):
        raise UserError(f"--lr must be between 0 and 1, not {args.lr}.")
    if args.num_samples % 4096 or args.num_samples <= 0:
        raise UserError(f"--num-samples must be a positive multiple of 4096 (16 mel frames of 256 samples), "
                        f"not {args.num_samples}.")
    return args


def stage_config(stage: str, args):
    """The preset's Config for `stage`, with any --<stage>.<field> flags applied (typed like the field)."""
    mod = stage_module(stage)
    if args.preset not in mod.PRESETS:
        raise UserError(f"{stage} has no preset {args.preset!r}; it has {', '.join(mod.PRESETS)}.")
    cfg = mod.PRESETS[args.preset]
    changes = {}
    for f in dataclasses.fields(cfg):
        raw = getattr(args, f"{stage}.{f.name}", None)
        if raw is None:
            continue
        default = getattr(cfg, f.name)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = raw.lower() in ("true", "1")
            elif isinstance(default, tuple):
                value = tuple(type(default[0])(x) for x in raw.split(",")) if default else tuple(raw.split(","))
            else:
                value = type(default)(raw)
        except ValueError:
            raise UserError(f"--{stage}.{f.name} expects a {type(default).__name__} like {default!r}, not {raw!r}.") from None
        changes[f.name] = value
    cfg = dataclasses.replace(cfg, **changes)
    check_config_values(stage, cfg)
    return cfg


# Whole-number config fields where 0 means something ("never re-seed", "the discriminator from the first
# step", "a bag of words"); every other whole number in a config is a size or a count and must be >= 1.
ZERO_ALLOWED = {"dead_code_steps", "disc_start", "text_layers"}


def check_config_values(stage: str, cfg) -> None:
    """One sentence for a config value the stage's model cannot be built, trained or sampled with.

    Why here: stage_config types each --<stage>.<field> flag like its preset value, but the model files
    check only what they must (vqgan's widths and n_mels, the vocoder's hop). A zero size, a NaN, a dropout
    of 2 or heads that do not divide the width ended in a traceback deep inside a layer at the first step,
    and a misspelt mask_schedule or resblock, read only when sampling or building the generator's blocks,
    passed training unnoticed: the schedule then failed in sample.py after the whole run.
    """
    def numbers(v):                                           # every number in a field, tuples of tuples included
        return [y for x in v for y in numbers(x)] if isinstance(v, tuple) else [v]

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for x in numbers(value):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            low = 0 if isinstance(x, float) or f.name in ZERO_ALLOWED else 1
            if not (math.isfinite(x) and x >= low) or (f.name.endswith("dropout") and x > 1):
                rule = "between 0 and 1" if f.name.endswith("dropout") else f"{low} or more"
                raise UserError(f"--{stage}.{f.name} must be {rule}, not {value!r}.")
    for width, heads in (("width", "n_heads"), ("text_width", "text_heads")):   # attention splits the width
        if hasattr(cfg, heads) and getattr(cfg, width) % getattr(cfg, heads):
            raise UserError(f"--{stage}.{width} ({getattr(cfg, width)}) must be divisible by "
                            f"--{stage}.{heads} ({getattr(cfg, heads)}).")
    if stage == "transformer":
        stage_module(stage).mask_schedule(0, 1, 1, cfg.mask_schedule)   # its own sentence for an unknown schedule
    if stage == "vocoder" and cfg.resblock not in ("1", "2"):
        raise UserError(f"--vocoder.resblock must be 1 or 2 (HiFiGAN's ResBlock1 or ResBlock2), not {cfg.resblock!r}.")


# Per-stage defaults for the toy world (tiny preset, 2 CPU cores; learning rates measured there; step counts
# chosen so that --stage all takes at most 45 minutes on the slowest 2-core machine seen, README) and for
# the full preset. The transformer's full-size numbers are the paper's (Sec. 4: batch 48, 250k steps,
# 5k warm-up); lr None = the stage's own default (the transformer's: 1e-3 x batch / 256).
STAGE_DEFAULTS = {
    ("vqgan", "tiny"): dict(steps=1600, batch_size=8, warmup=50, lr=1e-3),
    ("vocoder", "tiny"): dict(steps=250, batch_size=8, warmup=50, lr=2e-3),
    ("clap", "tiny"): dict(steps=750, batch_size=32, warmup=25, lr=1e-3),
    ("transformer", "tiny"): dict(steps=1600, batch_size=32, warmup=100, lr=1e-3),
    ("vqgan", "full"): dict(steps=100_000, batch_size=8, warmup=1000, lr=None),
    ("vocoder", "full"): dict(steps=500_000, batch_size=16, warmup=1000, lr=None),
    ("clap", "full"): dict(steps=20_000, batch_size=128, warmup=500, lr=None),
    ("transformer", "full"): dict(steps=250_000, batch_size=48, warmup=5000, lr=None),
}


# ---------------------------------------------------------------------------------------------------
# Distributed training: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; nothing else changes.
# ---------------------------------------------------------------------------------------------------

def setup_distributed(device: str):
    """Returns (rank, world_size, device). With torchrun, one process per GPU joins a NCCL group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def wrap_ddp(trainer, device: str, world: int) -> None:
    """Wrap each trained module of the Trainer in DistributedDataParallel (gradients all-reduced in backward).

    Trainers list their trained modules in `trainer.modules` (a dict name -> nn.Module, attribute names
    of the Trainer); DDP's wrapper forwards calls unchanged, and checkpoints save `.module` (see below).
    """
    if world == 1:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    for name in trainer.ddp_modules:
        setattr(trainer, name, DDP(getattr(trainer, name), device_ids=ids))


# ---------------------------------------------------------------------------------------------------
# Data: deterministic batches, so that step s always sees the same clips (resume = same data order).
# ---------------------------------------------------------------------------------------------------

def batch_indices(step: int, batch_size: int, n_items: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The dataset indices of batch `step`: epoch e is a permutation seeded by (seed, e); ranks take
    disjoint slices of the global batch."""
    per_epoch = max(1, n_items // (batch_size * world))
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = k * batch_size * world + rank * batch_size
    return perm[start:start + batch_size].tolist()


def collate(items: list[dict]) -> dict:
    return {"wav": torch.stack([it["wav"] for it in items]),
            "caption": [it["caption"] for it in items],
            "kind": torch.tensor([it["kind"] for it in items])}


def audio_batches(dataset, start_step, batch_size, seed, rank, world, workers):
    """Yield (step, batch) from `start_step` on; DataLoader workers read/synthesise clips in parallel."""
    class StepSampler(torch.utils.data.Sampler):
        def __iter__(self):
            step = start_step
            while True:
                yield batch_indices(step, batch_size, len(dataset), seed, rank, world)
                step += 1

    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(), collate_fn=collate,
                                         num_workers=workers, persistent_workers=workers > 0)
    return enumerate(loader, start=start_step)


def cache_batches(cache: dict, start_step, batch_size, seed, rank, world):
    """The transformer stage reads only the cache of token grids and CLAP embeddings."""
    step = start_step
    while True:
        idx = torch.tensor(batch_indices(step, batch_size, len(cache["tokens"]), seed, rank, world))
        yield step, {"tokens": cache["tokens"][idx].long(), "cond": cache["cond"][idx].float()}
        step += 1


# ---------------------------------------------------------------------------------------------------
# The learning-rate schedule (Sec. 4: linear warm-up, then cosine decay).
# ---------------------------------------------------------------------------------------------------

def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------------
# One generic loop for every stage.
# ---------------------------------------------------------------------------------------------------

def unwrap(trainer):
    """Strip DDP wrappers before saving (so checkpoints are the same with one GPU or eight)."""
    for name in getattr(trainer, "ddp_modules", []):
        m = getattr(trainer, name)
        if hasattr(m, "module"):
            setattr(trainer, name, m.module)


def save_state(path_state, path_ckpt, trainer, step, args, stage, rank):
    if rank != 0:
        return
    wrapped = {n: getattr(trainer, n) for n in getattr(trainer, "ddp_modules", [])}
    unwrap(trainer)
    try:
        save_checkpoint(trainer.checkpoint(), path_ckpt)
        save_checkpoint({"stage": stage, "step": step, "trainer": trainer.state_dict(), "seed": args.seed,
                         "preset": args.preset, "config": dataclasses.asdict(trainer.cfg)}, path_state)
    finally:
        for n, m in wrapped.items():
            setattr(trainer, n, m)


def train_stage(stage, trainer, batches, args, steps, warmup, rank=0, epoch_steps=None,
                audiocaps_epoch_steps=None):
    """Run `trainer` from its current step to `steps`, logging and checkpointing as it goes.

    At the end it projects, from the measured time per step, how long one epoch (`epoch_steps`) and the
    full schedule take on this device: with `--preset full --steps 2` that is the dry run that tells
    you what a real AudioCaps run costs before you start one."""
    out = args.out
    path_ckpt, path_state = os.path.join(out, f"{stage}.pt"), os.path.join(out, f"{stage}.state.pt")
    log = open(os.path.join(out, f"{stage}.log.jsonl"), "a") if rank == 0 else None
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            g.setdefault("peak_lr", g["lr"])
    t_start, window, wall, all_wall = time.time(), [], [], []
    t_last = time.time()
    step = trainer.start_step
    for step, batch in batches:
        if step >= steps:
            break
        factor = lr_factor(step, warmup, steps)
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["peak_lr"] * factor
        t0 = time.time()
        metrics = trainer.step(batch, step)
        window.append(time.time() - t0)                  # the optimisation step alone
        wall.append(time.time() - t_last)                # plus loading / synthesising the batch
        all_wall.append(wall[-1])
        t_last = time.time()
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            sec = sum(window) / len(window)
            eta = (steps - step - 1) * sum(wall) / len(wall)
            lr_now = trainer.optimizers[0].param_groups[0]["lr"]
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            if rank == 0:
                print(f"{stage} step {step + 1}/{steps} | {shown} | lr {lr_now:.2e} | {sec * 1000:.0f} ms/step "
                      f"| ETA {eta / 60:.1f} min", flush=True)
                log.write(json.dumps({"step": step + 1, "lr": lr_now, "sec_per_step": sec, **metrics}) + "\n")
                log.flush()
            window, wall = [], []
        if stage == "vqgan" and rank == 0 and (step + 1) % args.preview_every == 0:
            from mel import save_png
            x, y = trainer.preview(batch)
            save_png(os.path.join(out, f"vqgan_preview_{step + 1:06d}.png"), [x[0], y[0]], vmin=-1, vmax=1)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            save_state(path_state, path_ckpt, trainer, step + 1, args, stage, rank)
    if rank == 0:
        print(f"{stage}: done in {(time.time() - t_start) / 60:.1f} min; checkpoint {path_ckpt}")
        log.close()
        if all_wall and epoch_steps:
            # the first step pays for warm-up allocations; the median of the rest is the honest rate
            sec = sorted(all_wall[1:] or all_wall)[len(all_wall[1:] or all_wall) // 2]
            device = str(next(iter(trainer.optimizers[0].param_groups[0]["params"])).device)
            print(f"{stage}: {sec:.3f} s/step on {device}: one epoch ({epoch_steps} steps) takes "
                  f"{epoch_steps * sec / 3600:.2f} h and the schedule's {steps} steps {steps * sec / 3600:.1f} h here")
            if audiocaps_epoch_steps:                                         # a stand-in folder is smaller than the real thing
                from data import AUDIOCAPS_TRAIN_ROWS
                print(f"{stage}: a real AudioCaps epoch ({AUDIOCAPS_TRAIN_ROWS:,} clips, {audiocaps_epoch_steps:,} "
                      f"steps) would take {audiocaps_epoch_steps * sec / 3600:.2f} h at this rate")


def training_dtype(args, device: str, verbose: bool = True) -> torch.dtype:
    """The autocast dtype. fp16 is refused: its small range makes gradients underflow to zero unless the
    loss is scaled (a GradScaler), which this loop does not do; bf16 has fp32's range and needs none.
    The tiny preset trains in fp32 on every machine unless --dtype says otherwise, so that the toy recipe
    writes the same model on every CPU kind (bf16 rounding changes what 1600 steps learn)."""
    if args.dtype == "fp16":
        raise UserError("--dtype fp16 cannot train here: without loss scaling its gradients underflow; use bf16 or fp32.")
    if args.preset == "tiny" and args.dtype in (None, "auto"):
        if verbose:
            print(f"compute dtype: float32 on {device} (the tiny preset trains in fp32 everywhere)")
        return torch.float32
    return pick_dtype(device.split(":")[0], args.dtype, verbose)


def build_trainer(stage, cfg, args, device, amp_dtype, lr, extra=None):
    """Build the stage's Trainer and, with --resume, load its last state (step, models, optimisers)."""
    mod = stage_module(stage)
    kwargs = dict(device=device, amp_dtype=amp_dtype)
    if lr is not None:
        kwargs["lr"] = lr
    trainer = mod.Trainer(cfg, **kwargs, **(extra or {}))
    trainer.start_step = 0
    path_state = os.path.join(args.out, f"{stage}.state.pt")
    if args.resume and os.path.exists(path_state):
        state = load_checkpoint(path_state, stage)
        if state.get("preset") != args.preset:
            raise UserError(f"{path_state} was trained with --preset {state.get('preset')}, not {args.preset}.")
        check_config(cfg, state["config"], f"{stage} run in {path_state}")
        trainer.load_state_dict(state["trainer"])
        trainer.start_step = state["step"]
        print(f"{stage}: resuming at step {state['step']} from {path_state}")
    return trainer


def stage_hparams(stage, args):
    d = STAGE_DEFAULTS[(stage, args.preset)]
    steps = args.steps or d["steps"]
    batch = args.batch_size or d["batch_size"]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    lr = args.lr or d["lr"]                         # None = the Trainer's own default (the paper's)
    if stage == "transformer" and lr is None:
        lr = 1e-3 * batch / 256                     # Sec. 4: base lr 1e-3 scaled by batch / 256 (MAE convention)
    return steps, batch, min(warmup, steps), lr


# ---------------------------------------------------------------------------------------------------
# The transformer's cache: tokens + CLAP audio embeddings, computed once per dataset.
# ---------------------------------------------------------------------------------------------------

def training_captions(dataset) -> list[str]:
    """The captions TinyCLAP's vocabulary is read from (no audio is loaded for this)."""
    import data
    if isinstance(dataset, data.ToyDataset):
        return data.toy_caption_phrases()
    return [caption for _, caption, _ in dataset.items]


def load_conditioner(args, device):
    import clap
    if args.clap == "laion":
        return clap.load_clap("laion", args.clap_ckpt, device=device)
    return clap.load_clap("tiny", os.path.join(args.out, "clap.pt"), device=device)


@torch.inference_mode()
def build_cache(dataset, args, device, rank=0):
    """Tokenise every training clip with the trained VQGAN and embed it with CLAP's audio tower.

    This is what makes the transformer stage fast: the VQGAN encoder and CLAP run once per clip instead
    of once per step, and training reads two small tensors. The cache is keyed by the checkpoints' file
    times and the dataset size, so retraining a stage rebuilds it.
    """
    import mel
    import vqgan
    path_vq = os.path.join(args.out, "vqgan.pt")
    if not os.path.exists(path_vq):                  # the cache key reads its file time: a traceback otherwise
        raise UserError(f"{path_vq} does not exist: the transformer learns the VQGAN's tokens, so train "
                        f"--stage vqgan (and clap) into this --out first, or run --stage all.")
    # the file time to the nanosecond: rounded to whole seconds, a VQGAN retrained within the same second
    # (a tiny run, a script) kept the old cache, and the transformer learnt the previous codebook's ids
    key = f"{os.stat(path_vq).st_mtime_ns}-{len(dataset)}-{args.clap}-{args.num_samples}"
    path = os.path.join(args.out, "transformer_cache.pt")
    if os.path.exists(path):
        cache = load_checkpoint(path, "cache")
        if cache.get("key") == key:
            print(f"transformer: reading the token cache {path} ({len(cache['tokens'])} clips)")
            return cache
    vq = vqgan.from_checkpoint(load_checkpoint(path_vq, "vqgan")).to(device).eval()
    conditioner = load_conditioner(args, device)
    tokens, conds, t0 = [], [], time.time()
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate, num_workers=args.workers)
    for i, batch in enumerate(loader):
        wav = batch["wav"].to(device)
        tokens.append(vq.encode(mel.normalize(mel.mel_spectrogram(wav))).to(torch.int16).cpu())
        conds.append(conditioner.embed_audio(wav).float().cpu())
        if i % 10 == 0:
            print(f"transformer: caching tokens and CLAP embeddings {min((i + 1) * 32, len(dataset))}/{len(dataset)}"
                  f" ({time.time() - t0:.0f} s)", flush=True)
    cache = {"stage": "cache", "key": key, "tokens": torch.cat(tokens), "cond": torch.cat(conds)}
    if rank == 0:
        save_checkpoint(cache, path)
    return cache


# ---------------------------------------------------------------------------------------------------
# After the vocoder stage: does the vocoder beat Griffin-Lim? Only one that does goes into the bundle.
# ---------------------------------------------------------------------------------------------------

HELDOUT_CLIPS = 16


@torch.inference_mode()
def vocoder_against_griffin_lim(args, device) -> dict | None:
    """Mel L1 of the re-analysed output on held-out clips, for the trained vocoder and for Griffin-Lim.

    The measure is HiFiGAN's own (Eq. 3: L1 between log-mels of the target and of the output), on the
    first HELDOUT_CLIPS clips of the validation split. Griffin-Lim runs with mel.griffin_lim's default
    iterations, as in sample.py. The verdict is stored in vocoder.pt, so write_bundle can leave out a vocoder that would make
    sample.py sound worse than having none (a HiFiGAN needs days of training; a few minutes on a CPU
    give a vocoder that knows the spectral envelope but not yet the phase).
    """
    import data
    import mel
    import vocoder
    n = HELDOUT_CLIPS if args.data == "toy" else None
    try:
        heldout = data.make_dataset(args.data, "val", root=args.root, num_samples=args.num_samples, n=n)
    except UserError as e:                           # e.g. an AudioCaps folder without val.csv: keep the vocoder
        print(f"vocoder: not compared with Griffin-Lim, there are no held-out clips ({e})")
        return None
    wav = torch.stack([heldout[i]["wav"] for i in range(min(HELDOUT_CLIPS, len(heldout)))])  # (N, T)
    target = mel.mel_spectrogram(wav)                                                        # (N, 80, F)
    path = os.path.join(args.out, "vocoder.pt")
    ckpt = load_checkpoint(path, "vocoder")
    generator = vocoder.load_vocoder(ckpt).to(device)
    outputs = {"vocoder": generator.vocode(target.to(device)).cpu(), "griffin_lim": mel.griffin_lim(target)}
    result = {name: (mel.mel_spectrogram(out[:, :wav.shape[1]]) - target).abs().mean().item()
              for name, out in outputs.items()}
    result["clips"] = len(wav)
    ckpt["heldout_mel_l1"] = result
    save_checkpoint(ckpt, path)
    print(f"vocoder: mel L1 on {len(wav)} held-out clips {result['vocoder']:.3f}, Griffin-Lim's "
          f"{result['griffin_lim']:.3f} ({'better' if result['vocoder'] < result['griffin_lim'] else 'worse'})")
    return result


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------

def run(args) -> None:
    import data
    device = pick_device(args.device)
    rank, world, device = setup_distributed(device)
    amp_dtype = training_dtype(args, device, verbose=rank == 0)
    torch.manual_seed(args.seed + rank)
    make_output_folder(args.out)
    if rank == 0:                                    # a run killed mid-save leaves its temporary file behind
        for name in os.listdir(args.out):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(args.out, name))
    stages = STAGES if args.stage == "all" else [args.stage]
    if args.clap == "laion":
        import clap
        clap.load_clap("laion", args.clap_ckpt)      # fail now, in one sentence, not after hours of training
        stages = [s for s in stages if s != "clap"]  # LAION-CLAP comes pretrained
    if args.vocoder_ckpt:
        import vocoder
        vocoder.load_vocoder(args.vocoder_ckpt)      # the same: a wrong path or file is refused now, not ignored
        stages = [s for s in stages if s != "vocoder"]
    if args.bundle:                                  # and an unwritable --bundle before the training, not after it
        make_output_folder(os.path.dirname(os.path.abspath(args.bundle)))
    n = args.n_clips if args.data == "toy" else None
    dataset = data.make_dataset(args.data, "train", root=args.root, num_samples=args.num_samples, n=n)
    if rank == 0:
        print(f"data: {args.data}, {len(dataset)} training clips of {args.num_samples} samples; out: {args.out}")
    # every stage's config flags are checked before the first stage trains: a typo in --transformer.* is
    # one sentence now, not a traceback after the VQGAN's hours
    configs = {stage: stage_config(stage, args) for stage in stages}
    for stage in stages:
        cfg = configs[stage]
        steps, batch, warmup, lr = stage_hparams(stage, args)
        extra = {}
        if stage == "clap":
            import clap
            extra["vocab"] = clap.build_vocab(training_captions(dataset))
        if stage == "transformer":
            cache = build_cache(dataset, args, device, rank)
            vq_cfg = load_checkpoint(os.path.join(args.out, "vqgan.pt"), "vqgan")["config"]
            grid = tuple(cache["tokens"].shape[1:])
            cfg = dataclasses.replace(cfg, n_codes=vq_cfg["n_codes"], rows=grid[0], cols=grid[1],
                                      cond_dim=cache["cond"].shape[1])
        trainer = build_trainer(stage, cfg, args, device, amp_dtype, lr, extra)
        wrap_ddp(trainer, device, world)
        if rank == 0:
            n_params = sum(p.numel() for p in trainer.checkpoint_params()) if hasattr(trainer, "checkpoint_params") else None
            print(f"{stage}: {args.preset} preset, {steps} steps, batch {batch}, peak lr "
                  f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}, warm-up {warmup}"
                  + (f", {n_params / 1e6:.2f} M parameters" if n_params else ""))
        if stage == "transformer":
            batches = cache_batches(cache, trainer.start_step, batch, args.seed, rank, world)
        else:
            batches = audio_batches(dataset, trainer.start_step, batch, args.seed, rank, world, args.workers)
        epoch_steps = max(1, len(dataset) // (batch * world))
        audiocaps_epoch_steps = max(1, data.AUDIOCAPS_TRAIN_ROWS // (batch * world)) if args.data == "audiocaps" else None
        train_stage(stage, trainer, batches, args, steps, warmup, rank, epoch_steps, audiocaps_epoch_steps)
        if stage == "vocoder" and rank == 0:
            vocoder_against_griffin_lim(args, device)
    if rank == 0 and args.bundle:
        write_bundle(args)


def write_bundle(args) -> None:
    """One file with every stage's inference checkpoint: what sample.py loads by default."""
    bundle = {"stage": "bundle", "num_samples": args.num_samples, "data": args.data}
    for stage in STAGES:
        path = os.path.join(args.out, f"{stage}.pt")
        if os.path.exists(path):
            bundle[stage] = load_checkpoint(path, stage)
    heldout = bundle.get("vocoder", {}).get("heldout_mel_l1")
    if heldout and heldout["vocoder"] >= heldout["griffin_lim"]:      # measured after its stage (above)
        del bundle["vocoder"]
        print(f"bundle: the vocoder is left out, Griffin-Lim reconstructs the mels better (mel L1 "
              f"{heldout['griffin_lim']:.3f} against {heldout['vocoder']:.3f}); sample.py falls back to it, and "
              f"--vocoder-ckpt {os.path.join(args.out, 'vocoder.pt')} still uses the vocoder")
    # A stage retrained alone with another config (--stage vqgan --vqgan.n_codes 64, or another --num-samples)
    # leaves the old transformer.pt beside it; bundled together, sample.py drew token ids the VQGAN does not
    # have (an IndexError traceback) or grids of the wrong width. Refuse to write such a bundle.
    if "vqgan" in bundle and "transformer" in bundle:
        vq, tr = bundle["vqgan"]["config"], bundle["transformer"]["config"]
        grid = (vq["n_codes"], vq["n_mels"] // 16, args.num_samples // 4096)
        if (tr["n_codes"], tr["rows"], tr["cols"]) != grid:
            raise UserError(f"{os.path.join(args.out, 'transformer.pt')} was trained on other tokens ({tr['n_codes']} "
                            f"codes, a {tr['rows']} x {tr['cols']} grid) than this vqgan.pt and --num-samples give "
                            f"({grid[0]} codes, {grid[1]} x {grid[2]}); retrain it with --stage transformer.")
    save_checkpoint(bundle, args.bundle)
    print(f"bundle: {args.bundle} ({os.path.getsize(args.bundle) / 1e6:.1f} MB)")


def main(argv=None) -> int:
    try:
        return run_command(lambda: run(parse_args(argv)))
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
