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

Every stage runs through one loop, `train_stage`, right below: deterministic batches per step (so
--resume replays the same data order), linear warm-up then cosine decay of the learning rate (or the
stage's own schedule), a progress line every --log-every steps, a JSON-lines log, and atomic
checkpoints. `run` calls it once per stage. The rest of the file is the loop's plumbing: data order,
checkpoints and resume, the transformer's token cache, the bundle, DDP, and the command line.

Examples:
  python train.py --data toy --stage all          # the bundled demo model (RESULTS.md: time on 2 CPU cores)
  python train.py --data audiocaps --root AUDIOCAPS --clap-ckpt 630k-audioset-best.pt --preset full
  torchrun --nproc_per_node 4 train.py --data audiocaps ...   # several GPUs (DistributedDataParallel)
"""

import argparse
import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import stat
import sys
import time

import torch

from runtime import (ArgumentParser, UserError, build_model, check_config, check_config_values, load_checkpoint,
                     make_output_folder, native_dtype, non_finite_entry, pick_device, run_command,
                     save_checkpoint, vqgan_hash)
from toyworld import P_MIX

STAGES = ["vqgan", "vocoder", "clap", "transformer"]

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
#   ddp_modules                 names of the attributes DistributedDataParallel wraps under torchrun
#   preview(batch)              optional: (input, output) mels for a PNG every --preview-every steps
#   lr_factor(step, epoch_steps)   optional: the stage's own schedule, used instead of warm-up + cosine
# ===================================================================================================

def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak lr over `warmup` steps, then cosine decay to 0 at `total` (Sec. 4, MAE)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_stage(stage, trainer, batches, args, steps, warmup, epoch_steps, rank=0, world=1, evaluate=None):
    """Train `trainer` from its current step to `steps` on `batches` ((step, batch) pairs), logging,
    checking the loss and checkpointing as it goes. `evaluate(step) -> dict` (--eval-every): held-out
    scores, logged before the first step, every --eval-every steps and after the last."""
    out = args.out
    log = open_log(os.path.join(out, f"{stage}.log.jsonl")) if rank == 0 else None
    evaluate = evaluate if rank == 0 else None
    if evaluate is not None and trainer.start_step == 0:
        log_evaluation(stage, evaluate, 0, log)
    schedule = getattr(trainer, "lr_factor", None)          # e.g. HiFiGAN's x 0.999 per epoch
    if STAGE_DEFAULTS.get((stage, args.preset), {}).get("schedule") == "constant":
        schedule = lambda step, epoch_steps: 1.0            # e.g. SpecVQGAN's: no scheduler at all
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            g.setdefault("peak_lr", g["lr"])                 # restored with the optimiser on --resume
    losses, clock = [], Clock(trainer.start_step)
    device = getattr(trainer, "device", "cpu")              # where the divergence flag is all-reduced
    for step, batch in batches:
        if step >= steps:
            break
        factor = schedule(step, epoch_steps) if schedule else lr_factor(step, warmup, steps)
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["peak_lr"] * factor
        metrics = trainer.step(batch, step)
        losses.append((step, {k: v for k, v in metrics.items() if "loss" in k}))
        done = step + 1
        if done % args.log_every == 0 or done == steps:
            stop_unless_finite(stage, losses, out, world, device)
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
            from mel import save_png
            x, y = trainer.preview(batch)
            save_png(os.path.join(out, f"{stage}_preview_{done:06d}.png"), [x[0], y[0]], vmin=-1, vmax=1)
        if evaluate is not None and (done % args.eval_every == 0 or done == steps):
            log_evaluation(stage, evaluate, done, log)
        if done % args.ckpt_every == 0 or done == steps:
            stop_unless_finite(stage, losses, out, world, device)
            losses = []
            save_state(trainer, done, args, stage, rank, world)
    if rank == 0:
        log.close()
        print(f"{stage}: done in {clock.minutes():.1f} min; checkpoint {os.path.join(out, stage + '.pt')}")
        project_schedule(stage, trainer, clock, steps, epoch_steps, args, world)


def open_log(path: str):
    """The JSON-lines log, opened for appending. A symbolic link at its name is refused, not followed (it
    could point anywhere outside --out), and so is anything but a regular file (a pipe would block)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0),
                     0o666)
    except OSError as e:
        why = "it is a symbolic link, which the log never follows" if e.errno == errno.ELOOP else e.strerror or e
        raise UserError(f"cannot write the log {path}: {why}; remove it or give another --out.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"the log {path} is not a regular file; remove it or give another --out.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a")


LOCK_NAME = ".train.lock"       # in --out; held (flock) by the one train.py writing there
_held_lock = None               # the open lock file of this process's run


def lock_output_folder(out: str) -> None:
    """Take the exclusive lock of --out, or refuse: two runs into one folder would interleave their logs and
    replace each other's checkpoints. The lock goes with the process (the system releases it at exit, even
    after a kill); the file stays, empty."""
    global _held_lock
    release_output_folder()
    path = os.path.join(out, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        raise UserError(f"cannot create the lock file {path}: {e.strerror or e}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another train.py is writing into {out} (it holds {path}); wait for it to end or give "
                        f"another --out.") from None
    _held_lock = fd


def release_output_folder() -> None:
    global _held_lock
    if _held_lock is not None:
        os.close(_held_lock)                          # closing the file releases its flock
        _held_lock = None


def check_official_vocoder(path: str) -> None:
    """--vocoder-ckpt read now, before any training: a damaged file is one sentence, as in sample.py."""
    import hifigan_format
    try:
        hifigan_format.load_vocoder(path)
    except UserError as e:
        raise (e if path in str(e) else UserError(f"--vocoder-ckpt {path}: {e}")) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"--vocoder-ckpt {path} cannot be rebuilt as a HiFiGAN ({type(e).__name__}: {first}); "
                        f"its weights were edited or cut short.") from None


def check_captions(dataset, data: str) -> None:
    """TinyCLAP learns words from the captions: a folder without any is named before anything trains."""
    if not any(c.strip() for c in training_captions(dataset)):
        raise UserError(f"--stage clap trains TinyCLAP on captions, and {data} has none: add a captions.csv "
                        f"(columns file, caption) to it, or use --clap laion (pretrained, needs no captions).")


def run(args) -> None:
    """Every asked-for stage in order: build its data and Trainer, resume it, train it, then the bundle."""
    import data
    device = pick_device(args.device)
    rank, world, device = setup_distributed(device)
    amp_dtype = training_dtype(args, device, verbose=rank == 0)
    torch.manual_seed(args.seed + rank)
    make_output_folder(args.out)
    if rank == 0:
        lock_output_folder(args.out)
    stages = STAGES if args.stage == "all" else [args.stage]
    if args.clap == "laion":
        stages = [s for s in stages if s != "clap"]          # LAION-CLAP comes pretrained
    if args.vocoder_ckpt:                                    # an official HiFiGAN: check it now, train none
        check_official_vocoder(args.vocoder_ckpt)
        stages = [s for s in stages if s != "vocoder"]
    # every stage's config flags are checked before the first stage trains: a typo in --transformer.* is
    # one sentence now, not a traceback after the VQGAN's hours
    configs = {stage: stage_config(stage, args) for stage in stages}
    if args.bundle:                                          # an unwritable or foreign --bundle: now, not after
        check_bundle_target(args.bundle)
    n = args.n_clips if args.data == "toy" else None
    dataset = data.make_dataset(args.data, "train", root=args.root, num_samples=args.num_samples, n=n,
                                toy_mix=args.toy_mix)
    if "clap" in stages:
        check_captions(dataset, args.data)
    if args.clap == "laion" and "transformer" in stages:     # only the transformer's cache needs LAION-CLAP:
        import clap_format                                   # a missing package or file fails now, not later
        clap_format.load_clap("laion", args.clap_ckpt)
    if rank == 0:
        remove_partial_files(args)
        print(f"data: {args.data}, {len(dataset)} training clips of {args.num_samples} samples; out: {args.out}")
    source = init_source(args.init_from) if args.init_from else None
    if source is not None and rank == 0:
        bring_companions(args, source)
    if source is not None and world > 1:
        torch.distributed.barrier()                          # the other processes read what rank 0 copied
    for stage in stages:
        torch.manual_seed(args.seed + rank)                  # each stage from the same seed: alone or in --stage all,
        cfg = configs[stage]                                 # a stage trained on the same inputs is the same model
        steps, batch, warmup, lr = stage_hparams(stage, args, world)
        trainer_options = {}
        if stage == "clap":
            import clap
            trainer_options["vocab"] = clap.build_vocab(training_captions(dataset))
        if stage == "transformer":                           # the grid and the CLAP width come from the cache
            cache = build_cache(dataset, args, device, rank)
            vq_ckpt = load_checkpoint(os.path.join(args.out, "vqgan.pt"), "vqgan")
            cfg = dataclasses.replace(cfg, n_codes=vq_ckpt["config"]["n_codes"], rows=cache["tokens"].shape[1],
                                      cols=cache["tokens"].shape[2], cond_dim=cache["cond"].shape[1])
            if cfg.span_len > cfg.cols:
                raise UserError(f"--transformer.span_len must be at most the grid's {cfg.cols} columns, not {cfg.span_len}.")
        trainer = build_trainer(stage, cfg, args, device, amp_dtype, lr, trainer_options, rank, world)
        if stage == "transformer" and source is not None and trainer.start_step == 0:
            init_weights(trainer, source, args.init_from, rank)
        if stage == "transformer":                           # which VQGAN's tokens it learns (write_bundle checks)
            trainer.made_from = {"vqgan_hash": vqgan_hash(vq_ckpt)}
        wrap_ddp(trainer, device, world)
        if rank == 0:
            describe(stage, trainer, args, steps, batch, warmup)
        if stage == "transformer":
            batches = cache_batches(cache, trainer.start_step, batch, args.seed, rank, world, device)
        else:
            batches = audio_batches(dataset, trainer.start_step, batch, args.seed, rank, world, args.workers, device)
        epoch_steps = max(1, len(dataset) // (batch * world))
        evaluate = heldout_evaluator(args, device, trainer) if stage == "transformer" and args.eval_every and rank == 0 else None
        train_stage(stage, trainer, batches, args, steps, warmup, epoch_steps, rank, world, evaluate)
        if stage == "vocoder" and rank == 0:
            vocoder_against_griffin_lim(args, device)
    if rank == 0 and args.bundle:
        write_bundle(args)
    if world > 1:
        torch.distributed.barrier()                  # every process ends together, after rank 0's last write


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


def collate(items: list[dict]) -> dict:
    return {"wav": torch.stack([it["wav"] for it in items]),
            "caption": [it["caption"] for it in items],
            "kind": torch.tensor([it["kind"] for it in items])}


def audio_batches(dataset, start_step, batch_size, seed, rank, world, workers, device="cpu"):
    """Yield (step, batch) from `start_step` on; DataLoader workers read/synthesise clips in parallel.

    The loader gets a generator of its own: its workers' seeds then never draw from the global random
    stream, which --resume restores exactly (the VQGAN's code re-seeding draws from it). On CUDA the
    batches go to pinned memory, from which the copy to the GPU runs asynchronously.
    """
    class StepSampler(torch.utils.data.Sampler):
        def __iter__(self):
            step = start_step
            while True:
                yield batch_indices(step, batch_size, len(dataset), seed, rank, world)
                step += 1

    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(), collate_fn=collate,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=str(device).startswith("cuda"),
                                         generator=torch.Generator().manual_seed(seed))
    return enumerate(loader, start=start_step)


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
# Checkpoints, resume, and a loss that stops being finite.
# ===================================================================================================

def build_trainer(stage, cfg, args, device, amp_dtype, lr, trainer_options, rank=0, world=1):
    """Build the stage's Trainer and, with --resume, load its last state: step, weights, optimisers and
    the random streams, so that the resumed run continues exactly as the uninterrupted one would."""
    kwargs = dict(device=device, amp_dtype=amp_dtype, **trainer_options)
    if stage == "vqgan":                                     # the codebook's upkeep agrees across processes
        kwargs["world"] = world
    if stage == "transformer":                               # each process draws its own masks
        kwargs.update(rank=rank, world=world)
    if lr is not None:
        kwargs["lr"] = lr
    if stage == "transformer" and cfg.span_len > 1:          # MAGNeT's span masks (magnet.py, Sec. 3.1)
        import magnet
        kwargs["draw_mask"] = magnet.span_mask
    trainer = stage_module(stage).Trainer(cfg, **kwargs)
    trainer.start_step = 0
    path_state = os.path.join(args.out, f"{stage}.state.pt")
    if not args.resume:
        return trainer
    if not os.path.exists(path_state):
        if rank == 0:                                        # --stage all --resume: later stages start afresh
            print(f"{stage}: nothing to resume ({path_state} does not exist); starting at step 0")
        return trainer
    state = load_checkpoint(path_state, stage)
    check_resume_state(state, path_state)
    if state.get("preset") != args.preset:
        raise UserError(f"{path_state} was trained with --preset {state.get('preset')}, not {args.preset}.")
    check_config(cfg, state["config"], f"{stage} run in {path_state}")
    if stage == "clap" and list(state["trainer"].get("vocab", [])) != trainer.model.vocab:
        raise UserError(f"{path_state} was trained with another vocabulary than this run's captions give.")
    rng = state.get("rng", [])
    try:
        trainer.load_state_dict(state["trainer"])
        if len(rng) == world:
            set_rng_state(rng[rank])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path_state} cannot be resumed from ({type(e).__name__}: {first}); it was edited or cut "
                        f"short: remove it to start the stage afresh.") from None
    trainer.start_step = state["step"]
    if len(rng) != world and rank == 0:
        print(f"{stage}: the state holds no random streams for {world} process(es): the resumed run's dropout "
              f"and code re-seeding draw other numbers than the original would have")
    if rank == 0:
        print(f"{stage}: resuming at step {state['step']} from {path_state}")
    return trainer


MAX_STEPS = 10 ** 9     # 4000 times the paper's 250k steps: a larger step count is a damaged file or a typo


def check_resume_state(state: dict, path: str) -> None:
    """The entries --resume reads, each of the kind train.py writes, before anything is loaded from them."""
    for key, kind in (("trainer", dict), ("config", dict), ("rng", list)):
        if key in state and not isinstance(state[key], kind) or key not in state and key != "rng":
            found = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise UserError(f"{path}: entry '{key}' is {found}, not a {kind.__name__}; remove the file to start "
                            f"the stage afresh.")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEPS:
        raise UserError(f"{path}: its step is {str(step)[:40]!r}, not a whole number from 0 to {MAX_STEPS}; "
                        f"remove the file to start the stage afresh.")


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_state(trainer, step, args, stage, rank=0, world=1) -> None:
    """Write `<stage>.pt` (inference) and `<stage>.state.pt` (resume), each atomically, on rank 0.

    Weights that hold a NaN or an infinity are never written: the last finite checkpoint stays.
    """
    rng = [rng_state()]
    if world > 1:                                            # every process's random stream, for --resume
        rng = [None] * world
        torch.distributed.all_gather_object(rng, rng_state())
    if rank != 0:
        return
    ckpt, state = {**trainer.checkpoint(), **getattr(trainer, "made_from", {})}, trainer.state_dict()   # the same
    bad = non_finite_entry(ckpt) or non_finite_entry(state)                                            # with one GPU or eight
    if bad:
        raise UserError(f"{stage}: '{bad}' is no longer finite at step {step}; {last_checkpoint(args.out, stage)}")
    save_checkpoint(ckpt, os.path.join(args.out, f"{stage}.pt"))
    save_checkpoint({"stage": stage, "step": step, "trainer": state, "seed": args.seed, "rng": rng,
                     "preset": args.preset, "config": dataclasses.asdict(trainer.cfg)},
                    os.path.join(args.out, f"{stage}.state.pt"))


def stop_unless_finite(stage, losses, out, world=1, device="cpu") -> None:
    """Stop the run with one sentence naming the first step whose loss is NaN or infinite.

    `losses` are the steps since the last check; reading them here (every --log-every steps and before
    every checkpoint) keeps the device from waiting on the host every step. Under torchrun every process
    stops together: one that went on alone would wait forever for the others' gradients. The flag they
    agree on lives on the training `device`: NCCL reduces only CUDA tensors (gloo, on CPUs, host ones).
    """
    bad = next(((s, k, float(v)) for s, d in losses for k, v in d.items() if not math.isfinite(float(v))), None)
    if world > 1:
        flag = torch.tensor([bad is not None], dtype=torch.float32).to(device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and bad is None:
            bad = (losses[-1][0] if losses else 0, "loss", "on another process: nan")
    if bad:
        s, k, v = bad
        raise UserError(f"{stage}: the loss stopped being finite at step {s + 1} ({k} {v}); {last_checkpoint(out, stage)}")


def last_checkpoint(out, stage) -> str:
    """The end of the divergence sentence: what is kept on disk, and what to try."""
    path = os.path.join(out, f"{stage}.state.pt")
    kept = (f"the last finite checkpoint ({path}, step {load_checkpoint(path, stage)['step']}) is kept"
            if os.path.exists(path) else "no checkpoint was written")
    return f"{kept} and no bundle is written; try a lower --lr."


def remove_partial_files(args) -> None:
    """Remove what a killed run of ours left half-written in --out and beside --bundle: only regular files
    named `<one of our checkpoints>.partial-<pid>` (runtime.partial_path) whose process has ended."""
    ours = [f"{s}{x}" for s in STAGES for x in (".pt", ".state.pt")] + ["transformer_cache.pt"]
    candidates = [(args.out, re.compile(rf"({'|'.join(map(re.escape, ours))}|\w+_preview_\d+\.png)\.partial-(\d+)"))]
    if args.bundle:
        folder, name = os.path.split(os.path.abspath(args.bundle))
        candidates.append((folder, re.compile(rf"({re.escape(name)})\.partial-(\d+)")))
    for folder, pattern in candidates:
        for name in os.listdir(folder):
            m = pattern.fullmatch(name)
            path = os.path.join(folder, name)
            if m and os.path.isfile(path) and not os.path.islink(path) and not process_alive(int(m.group(2))):
                os.remove(path)


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False                                          # our own is from an earlier, killed process of that id
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


# ===================================================================================================
# The transformer's cache: tokens + CLAP audio embeddings, computed once per dataset.
# ===================================================================================================

def training_captions(dataset) -> list[str]:
    """The captions TinyCLAP's vocabulary is read from (no audio is loaded for this)."""
    import toyworld
    if isinstance(dataset, toyworld.ToyDataset):
        return toyworld.toy_caption_phrases()
    return [caption for _, caption, _ in dataset.items]


def load_conditioner(args, device):
    import clap_format
    if args.clap == "laion":
        return clap_format.load_clap("laion", args.clap_ckpt, device=device)
    return clap_format.load_clap("tiny", os.path.join(args.out, "clap.pt"), device=device)


@torch.inference_mode()
def build_cache(dataset, args, device, rank=0):
    """Tokenise every training clip with the trained VQGAN and embed it with CLAP's audio tower.

    This is what makes the transformer stage fast: the VQGAN encoder and CLAP run once per clip instead
    of once per step, and training reads two small tensors. The cache is keyed by the VQGAN checkpoint's
    file time (to the nanosecond: a VQGAN retrained within a second must not reuse it), the dataset size,
    the conditioner and the clip length, so retraining a stage rebuilds it.
    """
    import mel
    import vqgan
    path_vq = os.path.join(args.out, "vqgan.pt")
    if not os.path.exists(path_vq):
        raise UserError(f"{path_vq} does not exist: the transformer learns the VQGAN's tokens, so train "
                        f"--stage vqgan (and clap) into this --out first, or run --stage all.")
    vq_ckpt = load_checkpoint(path_vq, "vqgan")
    key = f"{os.stat(path_vq).st_mtime_ns}-{vqgan_hash(vq_ckpt)}-{len(dataset)}-{args.clap}-{args.num_samples}"
    if getattr(dataset, "p_mix", P_MIX) != P_MIX:                # a shifted toy world is other clips
        key += f"-mix{dataset.p_mix}"
    path = os.path.join(args.out, "transformer_cache.pt")
    if os.path.exists(path):
        cache = load_checkpoint(path, "cache")
        if cache.get("key") == key:
            print(f"transformer: reading the token cache {path} ({len(cache['tokens'])} clips)")
            return cache
    vq = build_model(vqgan.VQGAN, vqgan.Config, vq_ckpt, "vqgan").to(device).eval()
    conditioner = load_conditioner(args, device)
    tokens, conds, t0 = [], [], time.time()
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate, num_workers=args.workers)
    for i, batch in enumerate(loader):
        wav = batch["wav"].to(device)
        tokens.append(vq.encode(mel.normalize(mel.mel_spectrogram(wav))).to(torch.int16).cpu())  # (B, 5, F/16)
        conds.append(conditioner.embed_audio(wav).float().cpu())                                # (B, 512)
        if i % 10 == 0:
            print(f"transformer: caching tokens and CLAP embeddings {min((i + 1) * 32, len(dataset))}/{len(dataset)}"
                  f" ({time.time() - t0:.0f} s)", flush=True)
    cache = {"stage": "cache", "key": key, "tokens": torch.cat(tokens), "cond": torch.cat(conds)}
    if rank == 0:
        save_checkpoint(cache, path)
    return cache


# ===================================================================================================
# After the vocoder stage: does the vocoder beat Griffin-Lim? Only one that does goes into the bundle.
# ===================================================================================================

HELDOUT_CLIPS = 16


@torch.inference_mode()
def vocoder_against_griffin_lim(args, device) -> dict | None:
    """Mel L1 of the re-analysed output on held-out clips, for the trained vocoder and for Griffin-Lim.

    The measure is HiFiGAN's own loss (Eq. 3: L1 between log-mels of the target and of the output), on
    its full-band loss mel (0-11,025 Hz, `fmax_for_loss: null` in the official configs), on the first
    HELDOUT_CLIPS clips of the validation split. Both reconstruct from the 0-8 kHz input mel; Griffin-Lim
    runs with mel.griffin_lim's default iterations, as in sample.py. The verdict is stored in vocoder.pt,
    so write_bundle can leave out a vocoder that would make sample.py sound worse than having none (a
    HiFiGAN needs days of training; minutes on a CPU give one that knows the spectral envelope but not
    yet the phase).
    """
    import data
    import hifigan_format
    import mel
    import vocoder
    loss_mel = vocoder.loss_mel                      # HiFiGAN's loss mel, 0-11 kHz: (N, T) -> (N, 80, F)
    n = HELDOUT_CLIPS if args.data == "toy" else None
    try:
        heldout = data.make_dataset(args.data, "val", root=args.root, num_samples=args.num_samples, n=n)
    except UserError as e:                           # e.g. an AudioCaps folder without val.csv: keep the vocoder
        print(f"vocoder: not compared with Griffin-Lim, there are no held-out clips ({e})")
        return None
    wav = torch.stack([heldout[i]["wav"] for i in range(min(HELDOUT_CLIPS, len(heldout)))])  # (N, T)
    source = mel.mel_spectrogram(wav)                                                        # (N, 80, F) input mel
    target = loss_mel(wav)
    path = os.path.join(args.out, "vocoder.pt")
    ckpt = load_checkpoint(path, "vocoder")
    generator = hifigan_format.load_vocoder(ckpt).to(device)
    # in fp32 on every device: the verdict decides what the bundle holds, and should not depend on where it ran
    outputs = {"vocoder": hifigan_format.vocode(generator, source.to(device), torch.float32).cpu(),
               "griffin_lim": mel.griffin_lim(source)}
    result = {name: (loss_mel(out[:, :wav.shape[1]]) - target).abs().mean().item() for name, out in outputs.items()}
    result["clips"] = len(wav)
    ckpt["heldout_mel_l1"] = result
    save_checkpoint(ckpt, path)
    print(f"vocoder: mel L1 on {len(wav)} held-out clips {result['vocoder']:.3f}, Griffin-Lim's "
          f"{result['griffin_lim']:.3f} ({'better' if result['vocoder'] < result['griffin_lim'] else 'worse'})")
    return result


# ===================================================================================================
# Fine-tuning (--init-from) and validation during training (--eval-every): Sec. 5.1, Tables 4-6, Fig. 8.
# The paper pre-trains the transformer on AudioSet (500k steps, batch 112, 16k warm-up), then fine-tunes it
# on AudioCaps (250k steps, batch 48, 5k warm-up), and plots FAD on AudioCaps against AudioSet steps to
# argue for stopping early.
# ===================================================================================================

def init_source(path: str) -> dict:
    """The checkpoints --init-from brings, by stage: a bundle's entries, or a transformer.pt with the
    vqgan.pt, clap.pt and vocoder.pt beside it in its run folder."""
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") == "bundle":
        source = {s: ckpt[s] for s in STAGES if s in ckpt}
    elif ckpt.get("stage") == "transformer" and "model" in ckpt:
        folder = os.path.dirname(os.path.abspath(path))
        source = {s: load_checkpoint(os.path.join(folder, f"{s}.pt"), s) for s in ("vqgan", "clap", "vocoder")
                  if os.path.exists(os.path.join(folder, f"{s}.pt"))}
        source["transformer"] = ckpt
    else:
        raise UserError(f"--init-from {path} is a {ckpt.get('stage', 'foreign')} {'state' if 'trainer' in ckpt else 'checkpoint'}; "
                        f"give a run's transformer.pt or a bundle.")
    if "transformer" not in source:
        raise UserError(f"--init-from {path} holds no transformer.")
    return source


def bring_companions(args, source: dict) -> None:
    """The transformer learnt one VQGAN's token ids and one conditioner's embeddings: fine-tuning it on
    another tokenizer would start from ids that mean other sounds. So the pre-training run's VQGAN (and
    TinyCLAP and vocoder) are copied into --out when it has none, and one already there must be the same."""
    for stage in ("vqgan", "clap", "vocoder"):
        if stage not in source or (stage == "clap" and args.clap == "laion"):
            continue
        dest = os.path.join(args.out, f"{stage}.pt")
        if not os.path.exists(dest):
            save_checkpoint(source[stage], dest)
            print(f"{stage}: copied from --init-from {args.init_from} (the transformer learnt with it)")
        elif stage != "vocoder" and not same_weights(load_checkpoint(dest, stage), source[stage]):
            raise UserError(f"{dest} is another {stage} than the one --init-from {args.init_from}'s transformer "
                            f"learnt with; fine-tune into a new --out.")


def same_weights(a: dict, b: dict) -> bool:
    return (a["config"] == b["config"] and a["model"].keys() == b["model"].keys()
            and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]))


def init_weights(trainer, source: dict, path: str, rank: int = 0) -> None:
    """Weights only: the optimiser's moments and the schedule start afresh at step 0 (a fine-tuning run
    has its own warm-up and cosine, Sec. 4: 5k warm-up on AudioCaps)."""
    from runtime import load_into
    load_into(trainer.model, source["transformer"], "transformer")
    if rank == 0:
        print(f"transformer: weights from {path}; a new optimiser and schedule from step 0")


def heldout_evaluator(args, device, trainer):
    """A function step -> {"eval_fad", "eval_clap_score", "eval_clips"}: --eval-clips clips of the held-out
    (val) split generated from their captions with the paper's sampler (16 steps, CFG 3, Gumbel 1.5), decoded
    by this run's VQGAN and vocoder (Griffin-Lim without one), and scored against the real clips in the run's
    CLAP audio space (evaluate.py's FAD). The sampler's seed is the same every time, so the curve's steps
    differ by the model alone. The global random stream is restored afterwards (--resume replays it)."""
    import data
    import hifigan_format
    import mel
    import specmaskgit
    import vqgan
    from metrics import clap_score, frechet_distance
    n = args.eval_clips if args.data == "toy" else None
    heldout = data.make_dataset(args.data, "val", root=args.root, num_samples=args.num_samples, n=n, toy_mix=args.toy_mix)
    count = min(args.eval_clips, len(heldout))
    items = [heldout[i] for i in range(count)]
    real = torch.stack([it["wav"] for it in items])                                # (N, T)
    conditioner = load_conditioner(args, device)
    vq = build_model(vqgan.VQGAN, vqgan.Config, load_checkpoint(os.path.join(args.out, "vqgan.pt"), "vqgan"), "vqgan").to(device).eval()
    path_voc = os.path.join(args.out, "vocoder.pt")
    voc = hifigan_format.load_vocoder(path_voc).to(device) if os.path.exists(path_voc) else None
    with torch.inference_mode():
        real_emb = conditioner.embed_audio(real.to(device)).float().cpu()          # (N, D)
        text_emb = conditioner.embed_text([it["caption"] for it in items]).float()  # (N, D)

    @torch.inference_mode()
    def evaluate(step: int) -> dict:
        rng = torch.get_rng_state()
        model = bare(trainer.model)                                             # rank 0 alone: no DDP forward
        was_training = model.training
        model.eval()
        tokens = specmaskgit.generate(model, text_emb.to(device), seed=args.seed)   # (N, rows, cols)
        model.train(was_training)
        log_mel = mel.denormalize(vq.decode(tokens).float())                       # (N, 80, F)
        wav = hifigan_format.vocode(voc, log_mel) if voc is not None else mel.griffin_lim(log_mel.cpu())
        emb = conditioner.embed_audio(wav[:, :real.shape[1]].to(device)).float().cpu()
        torch.set_rng_state(rng)
        return {"eval_fad": frechet_distance(emb, real_emb), "eval_clap_score": clap_score(text_emb.cpu(), emb),
                "eval_clips": count}
    return evaluate


def log_evaluation(stage, evaluate, step, log) -> None:
    row = {"step": step, **evaluate(step)}
    print(f"{stage} step {step}: held-out FAD {row['eval_fad']:.4f}, CLAP score {row['eval_clap_score']:.4f} "
          f"({row['eval_clips']} clips)", flush=True)
    log.write(json.dumps(row) + "\n")
    log.flush()


# ===================================================================================================
# The bundle: every stage's inference checkpoint in one file, what sample.py loads by default.
# ===================================================================================================

def check_bundle_target(path) -> None:
    """--bundle must be a place we can write, and what is there already must be one of our bundles."""
    make_output_folder(os.path.dirname(os.path.abspath(path)))
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise UserError(f"--bundle {path} exists and is not a file; give another path.")
        load_checkpoint(path, "bundle")


def vqgan_pair(vq: dict, transformer: dict, where: str, older_than_vqgan: bool) -> None:
    """Refuse to bundle a transformer with a VQGAN whose tokens it did not learn: its checkpoint names the
    VQGAN it was trained on (runtime.vqgan_hash). One from before that was stored is accepted, unless this
    very run retrained the VQGAN without it (then it learnt the previous VQGAN's tokens)."""
    learnt = transformer.get("vqgan_hash")
    if learnt is None and not older_than_vqgan or learnt == vqgan_hash(vq):
        return
    raise UserError(f"{where} learnt the tokens of another VQGAN than this run's vqgan.pt; retrain it with "
                    f"--stage transformer (or write --bundle after --stage all).")


def write_bundle(args) -> None:
    """Write --bundle from this run's checkpoints, keeping what an existing bundle there has and this run
    lacks: a one-stage run never turns a working bundle into a partial one.

    The VQGAN, the conditioner and the transformer belong together (the transformer learnt that VQGAN's
    token ids and that conditioner's embeddings), so they are kept from the existing bundle only when
    this run trained none of them; the vocoder depends on nothing else and is kept on its own.
    """
    old = load_checkpoint(args.bundle, "bundle") if os.path.exists(args.bundle) else {}
    bundle = {"stage": "bundle", "num_samples": args.num_samples, "data": args.data}
    for stage in STAGES:
        path = os.path.join(args.out, f"{stage}.pt")
        if os.path.exists(path):
            bundle[stage] = load_checkpoint(path, stage)
    heldout = bundle.get("vocoder", {}).get("heldout_mel_l1")
    if heldout and heldout["vocoder"] >= heldout["griffin_lim"]:      # measured after its stage (above)
        del bundle["vocoder"]
        print(f"bundle: the vocoder is left out, Griffin-Lim reconstructs the mels better (mel L1 "
              f"{heldout['griffin_lim']:.3f} against {heldout['vocoder']:.3f}); --vocoder-ckpt "
              f"{os.path.join(args.out, 'vocoder.pt')} still uses it")
    trained = {"vqgan", "clap", "transformer"} & set(bundle)         # stages that must come from one run
    kept = [s for s in STAGES if s in old and s not in bundle and (s == "vocoder" or not trained)]
    if "transformer" in old and trained and "transformer" not in bundle:
        raise UserError(f"{args.bundle}'s transformer learnt the tokens of its own VQGAN and conditioner, not of "
                        f"this run's {' and '.join(s for s in ('vqgan', 'clap') if s in bundle)}; train --stage "
                        f"transformer into {args.out} too, or write the bundle to a new path.")
    if set(kept) - {"vocoder"} and old.get("num_samples") != args.num_samples:
        raise UserError(f"{args.bundle} holds clips of {old.get('num_samples')} samples, this run {args.num_samples}; "
                        f"write the bundle to a new path.")
    for stage in kept:
        bundle[stage] = old[stage]
    if kept:
        print(f"bundle: kept {', '.join(kept)} from the existing {args.bundle}")
    # A stage retrained alone with another config (--stage vqgan --vqgan.n_codes 64, or another --num-samples)
    # leaves the old transformer.pt beside it; sample.py would draw token ids the VQGAN does not have.
    if "vqgan" in bundle and "transformer" in bundle:
        vq, tr = bundle["vqgan"]["config"], bundle["transformer"]["config"]
        grid = (vq["n_codes"], vq["n_mels"] // 16, args.num_samples // 4096)
        if (tr["n_codes"], tr["rows"], tr["cols"]) != grid:
            raise UserError(f"{os.path.join(args.out, 'transformer.pt')} was trained on other tokens ({tr['n_codes']} "
                            f"codes, a {tr['rows']} x {tr['cols']} grid) than this vqgan.pt and --num-samples give "
                            f"({grid[0]} codes, {grid[1]} x {grid[2]}); retrain it with --stage transformer.")
    if "vqgan" in bundle and "transformer" in bundle:
        trained_now = STAGES if args.stage == "all" else [args.stage]
        vqgan_pair(bundle["vqgan"], bundle["transformer"], os.path.join(args.out, "transformer.pt"),
                   older_than_vqgan="vqgan" in trained_now and "transformer" not in trained_now)
    missing = [s for s in ("vqgan", "transformer") if s not in bundle]
    save_checkpoint(bundle, args.bundle)
    print(f"bundle: {args.bundle} ({os.path.getsize(args.bundle) / 1e6:.1f} MB)"
          + (f"; sample.py needs {' and '.join(missing)} too" if missing else ""))


# ===================================================================================================
# Distributed training: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; nothing else changes.
# ===================================================================================================

def setup_distributed(device: str):
    """Returns (rank, world_size, device). With torchrun, one process per GPU joins a NCCL group (gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


class Replicated(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that reads like the module it wraps: its attributes (cfg, submodules) and
    its state_dict / load_state_dict are the module's, so a Trainer's code and its checkpoints are the
    same with one process or many. The one place where the project unwraps DDP."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)


def bare(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, out of its Replicated wrapper (for what one process does alone)."""
    return module.module if isinstance(module, Replicated) else module


def wrap_ddp(trainer, device: str, world: int) -> None:
    """Wrap each module named in `trainer.ddp_modules` in DistributedDataParallel (Replicated): it
    broadcasts rank 0's weights at the start and averages the gradients of all processes in backward."""
    if world == 1:
        return
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    for name in trainer.ddp_modules:
        setattr(trainer, name, Replicated(getattr(trainer, name), device_ids=ids))


# ===================================================================================================
# Progress: what a stage is, and what its schedule costs on this machine.
# ===================================================================================================

class Clock:
    """Wall time per step between log lines (the device is waited for there, when the metrics are read)."""

    def __init__(self, step: int):
        self.t0 = self.t = time.perf_counter()
        self.step0 = self.step = step
        self.laps = []                                      # (steps, seconds) per log interval

    def lap(self, step: int) -> float:
        now = time.perf_counter()
        self.laps.append((step - self.step, now - self.t))
        self.step, self.t = step, now
        return self.laps[-1][1] / max(1, self.laps[-1][0])

    def minutes(self) -> float:
        return (time.perf_counter() - self.t0) / 60

    def sec_per_step(self) -> float | None:
        """The rate after the first interval (which pays for warm-up allocations), or over all if that is all."""
        laps = self.laps[1:] or self.laps
        n = sum(s for s, _ in laps)
        return sum(t for _, t in laps) / n if n else None


def describe(stage, trainer, args, steps, batch, warmup) -> None:
    weights = trainer.checkpoint()["model"].values()                 # what inference loads, buffers of counts aside
    n_params = sum(w.numel() for w in weights if w.is_floating_point())
    schedule = "its own lr schedule" if hasattr(trainer, "lr_factor") else f"warm-up {warmup}"
    if STAGE_DEFAULTS[(stage, args.preset)].get("schedule") == "constant":
        schedule = "constant lr"
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
        from data import AUDIOCAPS_TRAIN_ROWS
        real = max(1, AUDIOCAPS_TRAIN_ROWS // (stage_hparams(stage, args, world)[1] * world))
        print(f"{stage}: a real AudioCaps epoch ({AUDIOCAPS_TRAIN_ROWS:,} clips, {real:,} steps) would take "
              f"{real * sec / 3600:.2f} h at this rate")


# ===================================================================================================
# The command line. Model flags are generated from each Config dataclass, one flag per field, named
# --<stage>.<field>, so the command line can never drift from the configs; every value is checked here,
# before anything trains.
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


MAX_WORKERS = 4 * (os.cpu_count() or 1)     # more loader processes than 4 per core only add memory
MAX_BATCH = 1024                             # clips per step and process: far above any GPU's memory at the full preset
MAX_CLIPS = 100_000                          # toy clips: their token cache and CLAP embeddings take 220 MB
MAX_CLIP_SAMPLES = 64 * 217088               # 64 of the paper's 9.8 s clips (mel.CLIP_SAMPLES) in one training clip


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description="Train SpecMaskGIT stage by stage.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="toy", help="toy | audiocaps | a folder of audio files")
    p.add_argument("--root", default=None, help="the AudioCaps folder (CSV files + clips) for --data audiocaps")
    p.add_argument("--stage", default="all", choices=STAGES + ["all"])
    p.add_argument("--preset", default=None, choices=["tiny", "full"],
                   help="model sizes; default tiny for the toy world, full otherwise")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    p.add_argument("--resume", action="store_true",
                   help="continue each stage from its last checkpoint (a stage with none starts at step 0)")
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
                   help=f"DataLoader worker processes (at most {MAX_WORKERS} here; default: 8 on a GPU, else 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="--stage transformer: start from these weights (a run's transformer.pt, or a bundle) with a "
                        "new optimiser and schedule at step 0: pre-train, then fine-tune (Sec. 5.1, Table 4)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="transformer: FAD and CLAP score of --eval-clips held-out clips every N steps, in its log "
                        "(Fig. 8; evaluate.py --curve draws them)")
    p.add_argument("--eval-clips", type=int, default=32, help="held-out clips for --eval-every")
    p.add_argument("--toy-mix", type=float, default=P_MIX,
                   help="toy world: share of clips that mix two kinds; another value is a shifted world to fine-tune on")
    p.add_argument("--bundle", default=None,
                   help="after the last stage, also write the one-file bundle here (merged with one already there)")
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
    for name in ("steps", "batch_size", "warmup", "n_clips", "log_every", "ckpt_every", "preview_every", "eval_every"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, not {v}.")
    if args.workers is None:                         # on a GPU, loading clips one by one in the main process
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())   # starves the chip
        args.workers = min(8, MAX_WORKERS) if cuda and args.data != "toy" else 0
    if args.n_clips > MAX_CLIPS:
        raise UserError(f"--n-clips must be at most {MAX_CLIPS} (the toy recipe uses 4000), not {args.n_clips}.")
    if args.num_samples > MAX_CLIP_SAMPLES:
        raise UserError(f"--num-samples must be at most {MAX_CLIP_SAMPLES} (64 of the paper's clips), "
                        f"not {args.num_samples}.")
    if args.steps is not None and args.steps > MAX_STEPS:
        raise UserError(f"--steps must be at most {MAX_STEPS}, not {args.steps}.")
    if args.batch_size is not None and args.batch_size > MAX_BATCH:
        raise UserError(f"--batch-size must be at most {MAX_BATCH} (the paper's is 48 per GPU), not {args.batch_size}.")
    if not 0 <= args.workers <= MAX_WORKERS:
        raise UserError(f"--workers must be from 0 to {MAX_WORKERS} (4 per CPU core), not {args.workers}.")
    if not 0 <= args.seed < 2 ** 32:                 # batch_indices seeds torch generators with seed * 1_000_003 + epoch
        raise UserError(f"--seed must be a whole number from 0 to 2**32 - 1, not {args.seed}.")
    if args.lr is not None and not (0 < args.lr < 1):
        raise UserError(f"--lr must be between 0 and 1, not {args.lr}.")
    if args.init_from and args.stage != "transformer":
        raise UserError("--init-from starts the transformer from another run's weights; use it with --stage transformer.")
    if not 2 <= args.eval_clips <= 1000:
        raise UserError(f"--eval-clips must be between 2 and 1000 (FAD needs a covariance of at least 2 clips), "
                        f"not {args.eval_clips}.")
    if not 0 <= args.toy_mix <= 1:
        raise UserError(f"--toy-mix must be between 0 and 1, not {args.toy_mix}.")
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
    return cfg


def stage_hparams(stage, args, world=1):
    """(steps, batch per process, warm-up, peak lr) of a stage: the flags, else STAGE_DEFAULTS."""
    d = STAGE_DEFAULTS[(stage, args.preset)]
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
    """The autocast dtype. fp16 is refused: its small range makes gradients underflow to zero unless the
    loss is scaled (a GradScaler), which this loop does not do; bf16 has fp32's range and needs none.
    The tiny preset trains in fp32 on every machine unless --dtype says otherwise, so that the toy recipe
    writes the same model on every CPU kind (bf16 rounding changes what its steps learn)."""
    if args.dtype == "fp16":
        raise UserError("--dtype fp16 cannot train here: without loss scaling its gradients underflow; use bf16 or fp32.")
    if args.preset == "tiny" and args.dtype in (None, "auto"):
        if verbose:
            print(f"compute dtype: float32 on {device} (the tiny preset trains in fp32 everywhere)")
        return torch.float32
    return native_dtype(device.split(":")[0], args.dtype, verbose)


def main(argv=None) -> int:
    try:
        return run_command(lambda: run(parse_args(argv)))
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact (use --resume)", file=sys.stderr)
        return 130
    finally:                                         # torchrun: leave the process group before exiting, or
        release_output_folder()
        if torch.distributed.is_available() and torch.distributed.is_initialized():   # its threads abort it
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
