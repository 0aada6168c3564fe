"""
train.py — train every stage of SpecMaskGIT, on one CPU, one GPU, or many GPUs (torchrun).

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 4 (experimental setup) and Fig. 3 (the two-stage pipeline).
The stages, in the order `--stage all` runs them (each reuses the previous stages' checkpoints):

  vqgan        SpecVQGAN tokenizer: log-mel 80 x F  <->  token grid 5 x F/16   (vqgan.py, Sec. 3.1)
  vocoder      HiFiGAN: log-mel -> waveform                                     (vocoder.py, Sec. 3.1)
  clap         the conditioner (TinyCLAP; LAION-CLAP is pretrained, nothing to train) (clap.py, Sec. 3.3)
  transformer  the masked transformer over tokens, conditioned on CLAP *audio* embeddings
               (specmaskgit.py, Sec. 3.2-3.3). The dataset is tokenised once and cached with its CLAP
               audio embeddings (build_cache); training then reads only that cache.

The file reads in the order it runs: the command line and each stage's hyper-parameters, the Trainer,
the data order (deterministic batches per step, so --resume replays the same data), the transformer's token
cache (`build_cache`: tokens and CLAP *audio* embeddings, Sec. 3.3), then one loop for every stage,
`train_stage` (linear warm-up then cosine decay of the learning rate, or the stage's own schedule; a
progress line every --log-every steps, a JSON-lines log, atomic checkpoints), and `run`, which calls it
once per stage. What the loop stands on but need not be read first (the flags' ranges, the run folder's
lock and clean-up, resume, loading the run's conditioner, the vocoder-against-Griffin-Lim check, the
bundle, DDP) is training/edges.py, called as `edges.<name>`.

Examples:
  python train.py --data toy --stage all          # the bundled demo model (RESULTS.md: time on 2 CPU cores)
  python train.py --data audiocaps --root AUDIOCAPS --clap-ckpt 630k-audioset-best.pt --preset full
  torchrun --nproc_per_node 4 train.py --data audiocaps ...   # several GPUs (DistributedDataParallel)
"""

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time

import torch

from training import edges
from ground.runtime import (MODEL_STAGES, ArgumentParser, UserError, build_model, check_config_values, load_checkpoint,
                     make_output_folder, pick_device, run_command, save_checkpoint, vqgan_hash,
                     weights_hash)
from data.toyworld import P_MIX

STAGES = list(MODEL_STAGES)        # in the order --stage all trains them: each needs the ones before

# Per-stage defaults. The tiny preset's are for the toy world on 2 CPU cores: its learning rates were
# measured there (the paper's values are for batches 6-30x larger and days of training), and its step
# counts fit `--stage all` into the time budget RESULTS.md reports. The full preset's are the papers': the
# transformer's batch 48, 250k steps and 5k warm-up (Sec. 4); lr None = the stage's own rule
# (stage_hparams: MAE's 1e-3 x batch / 256 for the transformer, Taming's 4.5e-6 x batch for the VQGAN,
# the Trainer's default for the others, HiFiGAN's 2e-4 for the vocoder). schedule "constant": the lr stays at
# its peak, no warm-up and no decay: SpecVQGAN's configure_optimizers (Taming's) returns two Adams and no
# scheduler. The tiny VQGAN keeps warm-up + cosine: its lr of 1e-3 was measured with them on the toy world,
# and the bundled demo model was trained so.
STAGE_DEFAULTS = {
    ("vqgan", "tiny"): dict(steps=1600, batch_size=8, warmup=50, lr=1e-3),
    ("vocoder", "tiny"): dict(steps=250, batch_size=8, warmup=50, lr=2e-3),
    ("clap", "tiny"): dict(steps=750, batch_size=32, warmup=25, lr=1e-3),
    ("transformer", "tiny"): dict(steps=2400, batch_size=32, warmup=100, lr=1e-3),
    ("vqgan", "full"): dict(steps=100_000, batch_size=8, warmup=0, lr=None, schedule="constant"),
    ("vocoder", "full"): dict(steps=500_000, batch_size=16, warmup=1000, lr=None),
    ("clap", "full"): dict(steps=20_000, batch_size=128, warmup=500, lr=None),
    ("transformer", "full"): dict(steps=250_000, batch_size=48, warmup=5000, lr=None),
}

# The toy world's two recipes (--recipe), each one command. "classroom" is STAGE_DEFAULTS' tiny preset: every
# stage within 45 minutes on 2 CPU cores. "demo" trains as long as 2 CPU cores allow in an afternoon (at
# most 3 hours): tokens 8 frames wide (a finer codec, twice the tokens per clip) and a transformer trained
# 4 times the classroom's time (4800 steps of 5 x 32 tokens against 2400 of 5 x 16); RESULTS.md's scale
# curve measures what each budget buys. Its transformer uses the "wsd" schedule
# (warm-up, a stable peak, then a linear cool-down over the last COOLDOWN of the steps): the lr before the
# cool-down does not depend on the number of steps, so one long run can be branched at any budget and
# cooled down there, and each branch is exactly the run that budget would have been (Hägele et al. 2024,
# "Scaling laws and compute-optimal training beyond fixed training durations"; the curve's points).
RECIPES = {
    "classroom": {"config": {}, "stages": {}},
    "demo": {"config": {"vqgan.patch_frames": "8"},
             "stages": {"transformer": dict(steps=4800, batch_size=32, warmup=100, lr=1e-3, schedule="wsd")}},
}
COOLDOWN = 0.2                     # share of a "wsd" schedule's steps in its linear cool-down to 0


# ===================================================================================================
# The command line. Model flags are generated from each Config dataclass, one flag per field, named
# --<stage>.<field>, so the command line can never drift from the configs; every value is checked
# (training_edges.check_flags, stage_config) before anything trains.
# ===================================================================================================

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
    p = ArgumentParser(description="Train SpecMaskGIT stage by stage.")
    p.add_argument("--data", default="toy", help="toy | audiocaps | a folder of audio files")
    p.add_argument("--root", default=None, help="the AudioCaps folder (CSV files + clips) for --data audiocaps")
    p.add_argument("--stage", default="all", choices=STAGES + ["all"])
    p.add_argument("--preset", default=None, choices=["tiny", "full"],
                   help="model sizes; default tiny for the toy world, full otherwise")
    p.add_argument("--recipe", default="classroom", choices=list(RECIPES),
                   help="toy world: classroom (every stage within 45 min on 2 CPU cores) or demo (8-frame tokens "
                        "and 4x the transformer's steps, for an afternoon there; RESULTS.md)")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    p.add_argument("--resume", action="store_true",
                   help="continue each stage from its last checkpoint (a stage with none starts at step 0)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="save and end the run when a stage reaches this step, as a kill would but with a "
                        "checkpoint there; --resume continues it (train an afternoon in pieces)")
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default: per stage, see STAGE_DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; transformer default = 1e-3 x batch / 256 (Sec. 4)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps")
    p.add_argument("--num-samples", type=int, default=None,
                   help="clip length in samples (default 65536 for toy, 217088 otherwise); a multiple of 4096")
    p.add_argument("--n-clips", type=int, default=4000,
                   help="toy world: training clips (enough that the transformer does not learn them by heart)")
    p.add_argument("--clap", default=None, choices=["tiny", "laion"], help="conditioner; default tiny for toy")
    p.add_argument("--clap-ckpt", default=None, help="LAION-CLAP 630k-audioset-best.pt (for --clap laion)")
    p.add_argument("--vocoder-ckpt", default=None, help="an official HiFiGAN generator: skip the vocoder stage")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast precision; auto = fp32 for the tiny preset)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--preview-every", type=int, default=500, help="vqgan: PNG of input vs reconstruction")
    p.add_argument("--workers", type=int, default=None,
                   help=f"DataLoader worker processes (at most {edges.MAX_WORKERS} here; default: 8 on a GPU, else 0)")
    p.add_argument("--seed", type=int, default=0, help="the data order, the initial weights and the masks")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="--stage transformer: start from these weights (a run's transformer.pt, or a bundle) with a "
                        "new optimiser and schedule at step 0: pre-train, then fine-tune (Sec. 5.1, Table 4)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="transformer: FAD and CLAP score of --eval-clips held-out clips every N steps, in its log "
                        "(Fig. 8; evaluate.py --curve draws them)")
    p.add_argument("--eval-clips", type=int, default=32, help="held-out clips for --eval-every")
    p.add_argument("--eval-toy-mix", type=float, default=None, metavar="F",
                   help="toy world: score --eval-every on a world with this share of two-sound clips (default: "
                        "--toy-mix, the training world's); another value shows Fig. 8's drift from a target set")
    p.add_argument("--toy-mix", type=float, default=P_MIX,
                   help="toy world: share of clips that mix two kinds; another value is a shifted world to fine-tune on")
    p.add_argument("--bundle", default=None,
                   help="after the last stage, also write the one-file bundle here (merged with one already there)")
    add_config_flags(p)
    args = p.parse_args(argv)
    if args.preset is None:
        args.preset = "tiny" if args.data == "toy" else "full"
    for flag, value in RECIPES[args.recipe]["config"].items():   # a recipe's config values, unless flagged
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.clap is None:
        args.clap = "tiny" if args.data == "toy" else "laion"
    if args.num_samples is None:
        from mel import CLIP_SAMPLES, TOY_SAMPLES
        args.num_samples = TOY_SAMPLES if args.data == "toy" else CLIP_SAMPLES
    if args.out is None:
        args.out = os.path.join("runs", "toy" if args.data == "toy" else os.path.basename(os.path.normpath(args.data)))
    if args.workers is None:                         # on a GPU, loading clips one by one in the main process
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())   # starves the chip
        args.workers = min(8, edges.MAX_WORKERS) if cuda and args.data != "toy" else 0
    edges.check_flags(args)
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
    # The model files check nothing: a zero size, a NaN, heads that do not divide the width or a misspelt
    # mask_schedule would otherwise end in a traceback at the first step, or only when sampling.
    check_config_values(cfg, f"--{stage}.{{}}")
    if stage == "vocoder":                           # HiFiGAN works in whole mel frames of mel.HOP samples
        import mel
        if cfg.segment_size % mel.HOP:
            raise UserError(f"--vocoder.segment_size must be a multiple of {mel.HOP} samples, not {cfg.segment_size}.")
        if math.prod(cfg.upsample_rates) != mel.HOP:
            raise UserError(f"--vocoder.upsample_rates {cfg.upsample_rates} multiply to "
                            f"{math.prod(cfg.upsample_rates)}, not the hop size {mel.HOP}.")
    if stage == "transformer" and cfg.context >= 0 and not cfg.by_row:   # MAGNeT restricts the rows above the first
        raise UserError("--transformer.context restricts the rows above the first, which only training by "
                        "row tells apart: add --transformer.by_row true.")
    return cfg


def stage_defaults(stage, args) -> dict:
    """STAGE_DEFAULTS of the stage and preset, with the --recipe's changes."""
    return {**STAGE_DEFAULTS.get((stage, args.preset), {}), **RECIPES[args.recipe]["stages"].get(stage, {})}


def stage_hparams(stage, args, world=1):
    """(steps, batch per process, warm-up, peak lr) of a stage: the flags, else STAGE_DEFAULTS."""
    d = stage_defaults(stage, args)
    steps = args.steps or d["steps"]
    batch = args.batch_size or d["batch_size"]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    lr = args.lr or d["lr"]                          # None = the rule of the stage's paper:
    if stage == "transformer" and lr is None:
        lr = 1e-3 * batch * world / 256              # Sec. 4: base lr 1e-3 scaled with the batch as in its refs
                                                     # [17, 31] (MAE, MAGE): x global batch / 256
    if stage == "vqgan" and lr is None:
        lr = 4.5e-6 * batch * world                  # Taming's base_learning_rate x global batch (SpecVQGAN's configs)
    return steps, batch, min(warmup, steps), lr


def training_dtype(args, device: str, verbose: bool = True) -> torch.dtype:
    """The autocast dtype for --preset and --dtype on `device` (runtime.training_dtype: fp16 refused, the
    tiny preset in fp32 everywhere, then bf16 where the device has it natively)."""
    from ground import runtime
    return runtime.training_dtype(args.preset, device, args.dtype, verbose)


# ===================================================================================================
# The Trainer of a stage, and what its schedule costs on this machine.
# ===================================================================================================

def build_trainer(stage, cfg, args, device, amp_dtype, lr, trainer_options, rank=0, world=1):
    """Build the stage's Trainer at step 0 or, with --resume, where the stage's last state left it."""
    kwargs = dict(device=device, amp_dtype=amp_dtype, **trainer_options)
    if lr is not None:
        kwargs["lr"] = lr
    if stage == "transformer" and stage_module(stage).trains_as_magnet(cfg):   # MAGNeT's training ideas (magnet.py)
        import magnet
        kwargs["loss"] = magnet.training_loss
    trainer = stage_module(stage).Trainer(cfg, **kwargs)
    trainer.start_step = 0
    if args.resume:
        edges.resume_trainer(trainer, stage, cfg, args, rank, world)
    return trainer


def describe(stage, trainer, args, steps, batch, warmup) -> None:
    weights = trainer.checkpoint()["model"].values()                 # what inference loads, buffers of counts aside
    n_params = sum(w.numel() for w in weights if w.is_floating_point())
    schedule = "its own lr schedule" if hasattr(trainer, "lr_factor") else f"warm-up {warmup}"
    schedule = {"constant": "constant lr", "wsd": f"warm-up {warmup}, peak, cool-down over the last "
                f"{round(COOLDOWN * steps)} steps"}.get(stage_defaults(stage, args).get("schedule"), schedule)
    print(f"{stage}: {args.preset} preset, {steps} steps, batch {batch}, peak lr "
          f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}, {schedule}"
          + (f", {n_params / 1e6:.2f} M parameters" if n_params else ""))


def project_schedule(stage, trainer, clock, steps, epoch_steps, args, world) -> None:
    """From the measured time per step, how long one epoch and the full schedule take on this device:
    with `--preset full --steps 2` this is the dry run that prices a real AudioCaps run before it starts."""
    sec = clock.sec_per_step()
    if sec is None:
        return
    device = str(next(iter(trainer.optimizers[0].param_groups[0]["params"])).device)
    print(f"{stage}: {sec:.3f} s/step on {device}: one epoch ({epoch_steps} steps) takes "
          f"{epoch_steps * sec / 3600:.2f} h and the schedule's {steps} steps {steps * sec / 3600:.1f} h here")
    if args.data == "audiocaps":                             # a stand-in folder is smaller than the real thing
        from data.datasets import AUDIOCAPS_TRAIN_ROWS
        real = max(1, AUDIOCAPS_TRAIN_ROWS // (stage_hparams(stage, args, world)[1] * world))
        print(f"{stage}: a real AudioCaps epoch ({AUDIOCAPS_TRAIN_ROWS:,} clips, {real:,} steps) would take "
              f"{real * sec / 3600:.2f} h at this rate")


# ===================================================================================================
# Data: deterministic batches, so that step s always sees the same clips (resume = same data order).
# ===================================================================================================

def batch_indices(step: int, batch_size: int, n_items: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The dataset indices of batch `step`: epoch e is a permutation seeded by (seed, e); ranks take
    disjoint slices of the global batch."""
    per_epoch = max(1, n_items // (batch_size * world))
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = k * batch_size * world + rank * batch_size
    return perm[start:start + batch_size].tolist()


def audio_batches(dataset, start_step, batch_size, seed, rank, world, workers, device="cpu"):
    """Yield (step, batch) from `start_step` on; DataLoader workers read/synthesise clips in parallel.

    The loader gets a generator of its own: its workers' seeds then never draw from the global random
    stream, which --resume restores exactly (the VQGAN's code re-seeding draws from it). On CUDA the
    batches go to pinned memory, from which the copy to the GPU runs asynchronously.
    """
    from data import datasets

    class StepSampler(torch.utils.data.Sampler):
        def __iter__(self):
            step = start_step
            while True:
                yield batch_indices(step, batch_size, len(dataset), seed, rank, world)
                step += 1

    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(), collate_fn=datasets.collate,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=str(device).startswith("cuda"),
                                         generator=torch.Generator().manual_seed(seed))
    return enumerate(loader, start=start_step)


# ===================================================================================================
# The transformer's data, the token cache (Sec. 3.3: training is text-free). Every training clip is
# tokenised once by the trained VQGAN and embedded by CLAP's *audio* tower; no caption is read. The
# transformer learns p(tokens | CLAP audio embedding) and meets text only when sampling, where the CLAP
# text embedding of the prompt takes the audio embedding's place (Fig. 4, 5).
# ===================================================================================================

@torch.inference_mode()
def build_cache(dataset, args, device, rank=0, world=1):
    """Tokenise every training clip with the trained VQGAN and embed it with CLAP's audio tower.

    This is what makes the transformer stage fast: the VQGAN encoder and CLAP run once per clip instead
    of once per step, and training reads two small tensors. The cache is keyed by every checkpoint it was
    made from (cache_key), the dataset size and the clip length, so retraining a stage rebuilds it.
    Under torchrun each process tokenises its own share of the clips and every process ends with all of
    them, in the dataset's order; rank 0 writes the file.
    """
    path_vq = os.path.join(args.out, "vqgan.pt")
    if not os.path.exists(path_vq):
        raise UserError(f"{path_vq} does not exist: the transformer learns the VQGAN's tokens, so train "
                        f"--stage vqgan (and clap) into this --out first, or run --stage all.")
    vq_ckpt = load_checkpoint(path_vq, "vqgan")
    key = cache_key(dataset, args, vq_ckpt)
    path = os.path.join(args.out, "transformer_cache.pt")
    cache = load_checkpoint(path, "cache") if os.path.exists(path) else {}
    found = cache.get("key") == key
    if world > 1:                       # all read it, or all tokenise: one alone would wait in the gather below
        every = [None] * world
        torch.distributed.all_gather_object(every, found)
        found = all(every)
    if found:
        if rank == 0:
            print(f"transformer: reading the token cache {path} ({len(cache['tokens'])} clips)")
        return cache
    n = len(dataset)
    share = torch.utils.data.Subset(dataset, range(rank * n // world, (rank + 1) * n // world))
    tokens, conds = tokenise(share, args, vq_ckpt, device, rank, world)     # per batch: (B, 5, F/16), (B, 512)
    if world > 1:                       # every process's share, in rank order: the dataset's order
        shares = [None] * world
        torch.distributed.all_gather_object(shares, (tokens, conds))        # CPU tensors, as gloo needs
        tokens = [t for share_tokens, _ in shares for t in share_tokens]
        conds = [c for _, share_conds in shares for c in share_conds]
    cache = {"stage": "cache", "key": key, "tokens": torch.cat(tokens), "cond": torch.cat(conds)}   # (N, 5, F/16), (N, 512)
    if rank == 0:
        save_checkpoint(cache, path)
    return cache


def cache_key(dataset, args, vq_ckpt: dict) -> str:
    """What the cache was made from, readably: the VQGAN and the conditioner checkpoints (each file's time,
    to the nanosecond, so that one retrained within a second is not taken for the old one, and for ours a
    fingerprint of the weights), the number of clips and their length."""
    path_vq = os.path.join(args.out, "vqgan.pt")
    key = (f"vqgan.pt {os.stat(path_vq).st_mtime_ns}-{vqgan_hash(vq_ckpt)}, {conditioner_key(args)}, "
           f"{len(dataset)} clips of {args.num_samples} samples")
    if getattr(dataset, "p_mix", P_MIX) != P_MIX:                # a shifted toy world is other clips
        key += f", toy mix {dataset.p_mix}"
    return key


def conditioner_key(args) -> str:
    """The conditioner's part of the key: TinyCLAP's clap.pt by time and weights; LAION-CLAP's 600 MB
    checkpoint by size and time (reading it through for a fingerprint would cost more than it tells)."""
    if args.clap == "laion":
        if not args.clap_ckpt or not os.path.isfile(args.clap_ckpt):
            return "laion CLAP without a checkpoint"         # edges.load_conditioner names what is missing
        st = os.stat(args.clap_ckpt)
        return f"laion CLAP {os.path.abspath(args.clap_ckpt)} {st.st_size} bytes {st.st_mtime_ns}"
    path = os.path.join(args.out, "clap.pt")
    if not os.path.exists(path):
        return "clap.pt absent"                               # edges.load_conditioner names what is missing
    return f"clap.pt {os.stat(path).st_mtime_ns}-{weights_hash(load_checkpoint(path, 'clap'))}"


def tokenise(clips, args, vq_ckpt: dict, device, rank=0, world=1) -> tuple[list, list]:
    """The VQGAN's tokens and the conditioner's audio embeddings of `clips`, in batches of 32, on the host."""
    import mel
    import vqgan
    from data.datasets import collate
    vq = build_model(vqgan.VQGAN, vqgan.Config, vq_ckpt, "vqgan").to(device).eval()
    conditioner = edges.load_conditioner(args, device)   # --clap laion: LAION-CLAP; tiny: this run's clap.pt
    tokens, conds, t0 = [], [], time.time()
    where = f" on each of {world} processes" if world > 1 else ""
    loader = torch.utils.data.DataLoader(clips, batch_size=32, collate_fn=collate, num_workers=args.workers)
    for i, batch in enumerate(loader):
        wav = batch["wav"].to(device)
        tokens.append(vq.encode(mel.normalize(mel.mel_spectrogram(wav))).to(torch.int16).cpu())  # (B, 5, F/16)
        conds.append(conditioner.embed_audio(wav).float().cpu())       # (B, 512): the clip's sound, never its caption
        if i % 10 == 0 and rank == 0:
            print(f"transformer: caching tokens and CLAP embeddings {min((i + 1) * 32, len(clips))}/{len(clips)}"
                  f"{where} ({time.time() - t0:.0f} s)", flush=True)
    return tokens, conds


def cache_batches(cache: dict, start_step, batch_size, seed, rank, world, device="cpu"):
    """The transformer stage reads only the cache of token grids and CLAP embeddings. It is small (AudioCaps:
    about 0.1 GB), so it moves to the device once and each batch is gathered there."""
    tokens, cond = cache["tokens"].to(device), cache["cond"].to(device)
    step = start_step
    while True:
        idx = torch.tensor(batch_indices(step, batch_size, len(tokens), seed, rank, world)).to(device, non_blocking=True)
        yield step, {"tokens": tokens[idx].long(), "cond": cond[idx].float()}
        step += 1


# ===================================================================================================
# The loop. Every stage's Trainer (vqgan.Trainer, vocoder.Trainer, clap.Trainer, specmaskgit.Trainer)
# offers the loop the same few things:
#
#   optimizers                  a list of torch optimisers; the loop sets each param group's lr every step
#   step(batch, step) -> dict   one optimisation step (forward, loss, backward, clipping, optimiser step);
#                               returns its metrics as floats or 0-d tensors. The loop reads them back to
#                               the host only every --log-every steps: on a GPU each read waits for the
#                               device, and one per step would keep it idle between steps.
#   state_dict(), load_state_dict(d)   everything --resume needs: weights and optimiser moments
#   checkpoint() -> dict        the inference checkpoint: {"stage", "config", "model", ...}
#   step_modules                {name: module} its step calls for the passes that learn; under torchrun
#                               edges.wrap_ddp puts DistributedDataParallel wrappers in their place
#   preview(batch)              optional: (input, output) mels for a PNG every --preview-every steps
#   lr_factor(step, epoch_steps)   optional: the stage's own schedule, used instead of warm-up + cosine
# ===================================================================================================

def lr_factor(step: int, warmup: int, total: int, shape: str = "cosine") -> float:
    """Linear warm-up to the peak lr over `warmup` steps, then cosine decay to 0 at `total` (Sec. 4, MAE);
    or, shape "wsd", the peak until the last COOLDOWN of the steps and a straight line to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if shape == "wsd":
        cooldown = max(1, round(COOLDOWN * total))
        return min(1.0, (total - step) / cooldown)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_stage(stage, trainer, batches, args, steps, warmup, epoch_steps, rank=0, world=1, evaluate=None):
    """Train `trainer` from its current step to `steps` on `batches` ((step, batch) pairs), logging,
    checking the loss and checkpointing as it goes. `evaluate(step) -> dict` (--eval-every): held-out
    scores, logged before the first step, every --eval-every steps and after the last."""
    out = args.out
    log = edges.open_log(os.path.join(out, f"{stage}.log.jsonl")) if rank == 0 else None
    evaluate = evaluate if rank == 0 else None
    if evaluate is not None and trainer.start_step == 0:
        edges.log_evaluation(stage, evaluate, 0, log)
    schedule = getattr(trainer, "lr_factor", None)          # e.g. HiFiGAN's x 0.999 per epoch
    shape = stage_defaults(stage, args).get("schedule", "cosine")
    if shape == "constant":
        schedule = lambda step, epoch_steps: 1.0            # e.g. SpecVQGAN's: no scheduler at all
    stop = min(steps, args.stop_at or steps)
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            g.setdefault("peak_lr", g["lr"])                 # restored with the optimiser on --resume
    losses, clock = [], edges.Clock(trainer.start_step)
    device = getattr(trainer, "device", "cpu")              # where the divergence flag is all-reduced
    for step, batch in batches:
        if step >= stop:
            break
        factor = schedule(step, epoch_steps) if schedule else lr_factor(step, warmup, steps, shape)
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["peak_lr"] * factor
        metrics = trainer.step(batch, step)
        losses.append((step, {k: v for k, v in metrics.items() if "loss" in k}))
        done = step + 1
        if done % args.log_every == 0 or done == steps:
            edges.stop_unless_finite(stage, losses, out, world, device)
            losses = []
            row = {"step": done, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                   "sec_per_step": clock.lap(done), **{k: float(v) for k, v in metrics.items()}}
            if rank == 0:
                shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "lr", "sec_per_step"))
                print(f"{stage} step {done}/{steps} | {shown} | lr {row['lr']:.2e} | "
                      f"{row['sec_per_step'] * 1000:.0f} ms/step | ETA {(steps - done) * row['sec_per_step'] / 60:.1f} min",
                      flush=True)
                log.write(json.dumps(row) + "\n")
                log.flush()
        if hasattr(trainer, "preview") and rank == 0 and done % args.preview_every == 0:
            from pictures.png import save_png
            x, y = trainer.preview(batch)
            save_png(os.path.join(out, f"{stage}_preview_{done:06d}.png"), [x[0], y[0]], vmin=-1, vmax=1)
        if evaluate is not None and (done % args.eval_every == 0 or done == steps):
            edges.log_evaluation(stage, evaluate, done, log)
        if done % args.ckpt_every == 0 or done == stop:
            edges.stop_unless_finite(stage, losses, out, world, device)
            losses = []
            edges.save_state(trainer, done, args, stage, rank, world)
    if rank == 0 and trainer.start_step < stop < steps:
        print(f"{stage}: stopped at step {stop} of {steps} (--stop-at); --resume continues")
    if rank == 0:
        log.close()
        print(f"{stage}: done in {clock.minutes():.1f} min; checkpoint {os.path.join(out, stage + '.pt')}")
        project_schedule(stage, trainer, clock, steps, epoch_steps, args, world)


# ===================================================================================================
# Every asked-for stage in order, then the bundle; and the command.
# ===================================================================================================

def run(args) -> None:
    """Every asked-for stage in order: build its data and Trainer, resume it, train it, then the bundle."""
    from data import datasets
    device = pick_device(args.device)
    rank, world, device = edges.setup_distributed(device)
    amp_dtype = training_dtype(args, device, verbose=rank == 0)
    torch.manual_seed(args.seed + rank)
    make_output_folder(args.out)
    if rank == 0:
        edges.lock_output_folder(args.out)
    stages = STAGES if args.stage == "all" else [args.stage]
    if args.clap == "laion":
        stages = [s for s in stages if s != "clap"]          # LAION-CLAP comes pretrained
    if args.vocoder_ckpt:                                    # an official HiFiGAN: check it now, train none
        edges.check_official_vocoder(args.vocoder_ckpt)
        stages = [s for s in stages if s != "vocoder"]
    # every stage's config flags are checked before the first stage trains: a typo in --transformer.* is
    # one sentence now, not a traceback after the VQGAN's hours
    configs = {stage: stage_config(stage, args) for stage in stages}
    if args.bundle:                                          # an unwritable or foreign --bundle: now, not after
        edges.check_bundle_target(args.bundle)
    n = args.n_clips if args.data == "toy" else None
    dataset = datasets.make_dataset(args.data, "train", root=args.root, num_samples=args.num_samples, n=n,
                                toy_mix=args.toy_mix)
    if "clap" in stages:
        edges.check_captions(dataset, args.data)
    if args.clap == "laion" and "transformer" in stages:     # only the transformer's cache needs LAION-CLAP:
        from formats import clap_format                                   # a missing package or file fails now, not later
        clap_format.load_clap("laion", args.clap_ckpt)
    if rank == 0:
        edges.remove_partial_files(args)
        print(f"data: {args.data}, {len(dataset)} training clips of {args.num_samples} samples; out: {args.out}")
    source = edges.init_source(args.init_from) if args.init_from else None
    if source is not None and rank == 0:
        edges.bring_companions(args, source)
    if source is not None and world > 1:
        torch.distributed.barrier()                          # the other processes read what rank 0 copied
    for stage in stages:
        torch.manual_seed(args.seed + rank)                  # each stage from the same seed: alone or in --stage all,
        cfg = configs[stage]                                 # a stage trained on the same inputs is the same model
        steps, batch, warmup, lr = stage_hparams(stage, args, world)
        trainer_options = {}
        if stage == "clap":
            import clap
            trainer_options["vocab"] = clap.build_vocab(edges.training_captions(dataset))
        if stage == "transformer":                           # the grid and the CLAP width come from the cache
            cache = build_cache(dataset, args, device, rank, world)
            vq_ckpt = load_checkpoint(os.path.join(args.out, "vqgan.pt"), "vqgan")
            cfg = dataclasses.replace(cfg, n_codes=vq_ckpt["config"]["n_codes"], rows=cache["tokens"].shape[1],
                                      cols=cache["tokens"].shape[2], cond_dim=cache["cond"].shape[1])
            if cfg.span_len > cfg.cols:
                raise UserError(f"--transformer.span_len must be at most the grid's {cfg.cols} columns, not {cfg.span_len}.")
        trainer = build_trainer(stage, cfg, args, device, amp_dtype, lr, trainer_options, rank, world)
        if stage == "transformer" and source is not None and trainer.start_step == 0:
            edges.init_weights(trainer, source, args.init_from, rank)
        elif stage == "transformer" and source is not None and rank == 0:      # --resume found a state
            print(f"transformer: --init-from {args.init_from} is not used: --resume continues this run's own "
                  f"state at step {trainer.start_step}")
        if stage == "transformer":                           # which VQGAN's tokens it learns (write_bundle checks)
            trainer.made_from = {"vqgan_hash": vqgan_hash(vq_ckpt)}
        edges.wrap_ddp(trainer, device, rank, world)     # under torchrun: shared gradients, codebook, mask streams
        if rank == 0:
            describe(stage, trainer, args, steps, batch, warmup)
        if stage == "transformer":
            batches = cache_batches(cache, trainer.start_step, batch, args.seed, rank, world, device)
        else:
            batches = audio_batches(dataset, trainer.start_step, batch, args.seed, rank, world, args.workers, device)
        epoch_steps = max(1, len(dataset) // (batch * world))
        evaluate = None
        if stage == "transformer" and args.eval_every and rank == 0:
            evaluate = edges.heldout_evaluator(args, device, trainer)
        train_stage(stage, trainer, batches, args, steps, warmup, epoch_steps, rank, world, evaluate)
        if args.stop_at is not None and args.stop_at < steps:
            return                                           # --stop-at: later stages and the bundle wait
        if stage == "vocoder" and rank == 0:
            edges.vocoder_against_griffin_lim(args, device)
    if rank == 0 and args.bundle:
        edges.write_bundle(args)
    if world > 1:
        torch.distributed.barrier()                  # every process ends together, after rank 0's last write


def main(argv=None) -> int:
    try:
        return run_command(lambda: run(parse_args(argv)))
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact (use --resume)", file=sys.stderr)
        return 130
    finally:                                         # torchrun: leave the process group before exiting, or
        edges.release_output_folder()
        if torch.distributed.is_available() and torch.distributed.is_initialized():   # its threads abort it
            # DistributedDataParallel sits in a reference cycle and holds the group: collected only at exit, the
            # group's threads would be torn down while Python shuts down ("terminate called without an active
            # exception"). Collect the wrappers now, while the interpreter is whole, then leave the group.
            gc.collect()
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
