"""
training/edges.py — what train.py's loop stands on, kept beside it so that train.py reads as the loop:
the flags' ranges, the run folder, resume, the run's conditioner, the checks between stages, the bundle,
DDP. (The transformer's token cache is the method's own step, Sec. 3.3: it is in train.py.)

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 4 (training setup) and Sec. 5.1 (pre-training, then fine-tuning
on AudioCaps, Fig. 8). In the order train.py meets them:

  parsing the flags       check_flags (every value in its range, MAX_*)
  before the first stage  setup_distributed, lock_output_folder, check_official_vocoder, check_bundle_target,
                          check_captions, remove_partial_files, init_source + bring_companions (--init-from)
  building a stage        load_conditioner (for train.build_cache, the token cache), resume_trainer,
                          init_weights, wrap_ddp
  in the loop             open_log, Clock, stop_unless_finite, save_state, heldout_evaluator + log_evaluation
  after a stage           vocoder_against_griffin_lim (its verdict decides what the bundle holds)
  after the last stage    write_bundle

It imports no command: train.py imports it, never the other way round.
"""

import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import stat
import time

import torch

from ground.runtime import (MODEL_STAGES, UserError, build_model, check_config, load_checkpoint, make_output_folder,
                     native_dtype, non_finite_entry, save_checkpoint, vqgan_hash)


# ===================================================================================================
# Checks of the command line, each value against its range.
# ===================================================================================================

MAX_WORKERS = 4 * (os.cpu_count() or 1)     # more loader processes than 4 per core only add memory
MAX_BATCH = 1024                             # clips per step and process: far above any GPU's memory at the full preset
MAX_CLIPS = 100_000                          # toy clips: their token cache and CLAP embeddings take 220 MB
MAX_CLIP_SAMPLES = 64 * 217088               # 64 of the paper's 9.8 s clips (mel.CLIP_SAMPLES) in one training clip
MAX_STEPS = 10 ** 9                          # 4000 times the paper's 250k steps: more is a damaged file or a typo


def check_flags(args) -> None:
    """train.py's flags, each within its range, once parse_args has filled in the defaults: a value out of
    range is one sentence before anything trains, not an allocation that fails or a run that never ends."""
    for name in ("steps", "batch_size", "warmup", "n_clips", "log_every", "ckpt_every", "preview_every", "eval_every",
                 "stop_at"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, not {v}.")
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
    if args.recipe != "classroom" and (args.data != "toy" or args.preset != "tiny"):
        raise UserError(f"--recipe {args.recipe} is a recipe of the toy world's tiny preset; --data {args.data} "
                        f"--preset {args.preset} takes its steps from --steps and the stage defaults.")
    if args.init_from and args.stage != "transformer":
        raise UserError("--init-from starts the transformer from another run's weights; use it with --stage transformer.")
    if args.init_from and same_folder(os.path.dirname(os.path.abspath(args.init_from)), args.out):
        raise UserError(f"--out {args.out} holds --init-from {args.init_from}, which fine-tuning there would "
                        f"overwrite; give the fine-tuning run a new --out.")
    if args.eval_every is not None and args.stage not in ("transformer", "all"):
        raise UserError(f"--eval-every scores the transformer while it trains; --stage {args.stage} trains none.")
    if not 2 <= args.eval_clips <= 1000:
        raise UserError(f"--eval-clips must be between 2 and 1000 (FAD needs a covariance of at least 2 clips), "
                        f"not {args.eval_clips}.")
    if not 0 <= args.toy_mix <= 1:
        raise UserError(f"--toy-mix must be between 0 and 1, not {args.toy_mix}.")
    if args.eval_toy_mix is not None and not (args.eval_every and args.data == "toy" and 0 <= args.eval_toy_mix <= 1):
        raise UserError(f"--eval-toy-mix goes with --eval-every and --data toy, and must be between 0 and 1, "
                        f"not {args.eval_toy_mix}.")
    if args.num_samples % 4096 or args.num_samples <= 0:
        raise UserError(f"--num-samples must be a positive multiple of 4096 (16 mel frames of 256 samples), "
                        f"not {args.num_samples}.")


# ===================================================================================================
# Processes and the run folder: torchrun's group, one train.py per --out, what a killed run left half-written.
# ===================================================================================================

def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one folder, through symbolic links and `..` (compared by their real paths)."""
    return os.path.realpath(a) == os.path.realpath(b)


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
        why = "it is a symbolic link, which the lock never follows" if e.errno == errno.ELOOP else e.strerror or e
        raise UserError(f"cannot create the lock file {path}: {why}; remove it or give another --out.") from None
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


def remove_partial_files(args) -> None:
    """Remove what a killed run of ours left half-written in --out and beside --bundle: only regular files
    named `<one of our checkpoints>.partial-<pid>` (runtime.partial_path) whose process has ended."""
    ours = [f"{s}{x}" for s in MODEL_STAGES for x in (".pt", ".state.pt")] + ["transformer_cache.pt"]
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
# Checks before anything trains: a bad file or folder is one sentence now, not a traceback hours later.
# ===================================================================================================

def check_official_vocoder(path: str) -> None:
    """--vocoder-ckpt read now, before any training: a damaged file is one sentence, as in sample.py."""
    from formats import hifigan_format
    try:
        hifigan_format.load_vocoder(path)
    except UserError as e:
        raise (e if path in str(e) else UserError(f"--vocoder-ckpt {path}: {e}")) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"--vocoder-ckpt {path} cannot be rebuilt as a HiFiGAN ({type(e).__name__}: {first}); "
                        f"its weights were edited or cut short.") from None


def training_captions(dataset) -> list[str]:
    """The captions TinyCLAP's vocabulary is read from (no audio is loaded for this)."""
    from data import toyworld
    if isinstance(dataset, toyworld.ToyDataset):
        return toyworld.toy_caption_phrases()
    return [caption for _, caption, _ in dataset.items]


def check_captions(dataset, data: str) -> None:
    """TinyCLAP learns words from the captions: a folder without any is named before anything trains."""
    if not any(c.strip() for c in training_captions(dataset)):
        raise UserError(f"--stage clap trains TinyCLAP on captions, and {data} has none: add a captions.csv "
                        f"(columns file, caption) to it, or use --clap laion (pretrained, needs no captions).")


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
        source = {s: ckpt[s] for s in MODEL_STAGES if s in ckpt}
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
    # a lone transformer.pt brings no VQGAN: the hash it recorded (write_state) still names the one it learnt
    learnt, dest = source["transformer"].get("vqgan_hash"), os.path.join(args.out, "vqgan.pt")
    if learnt is not None and os.path.exists(dest) and learnt != vqgan_hash(load_checkpoint(dest, "vqgan")):
        raise UserError(f"--init-from {args.init_from} learnt the tokens of another VQGAN than {dest}; fine-tune it "
                        f"with the VQGAN it was trained with (a bundle, or its run's vqgan.pt beside it).")


def same_weights(a: dict, b: dict) -> bool:
    return (a["config"] == b["config"] and a["model"].keys() == b["model"].keys()
            and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]))


def init_weights(trainer, source: dict, path: str, rank: int = 0) -> None:
    """Weights only: the optimiser's moments and the schedule start afresh at step 0 (a fine-tuning run
    has its own warm-up and cosine, Sec. 4: 5k warm-up on AudioCaps)."""
    from ground.runtime import load_into
    load_into(trainer.model, source["transformer"], "transformer")
    if rank == 0:
        print(f"transformer: weights from {path}; a new optimiser and schedule from step 0")


# ===================================================================================================
# The run's conditioner: what train.build_cache and the held-out curve embed with.
# ===================================================================================================

def load_conditioner(args, device):
    """--clap laion: the paper's LAION-CLAP from --clap-ckpt; tiny: the TinyCLAP this run trained (clap.pt)."""
    from formats import clap_format
    if args.clap == "laion":
        return clap_format.load_clap("laion", args.clap_ckpt, device=device)
    return clap_format.load_clap("tiny", os.path.join(args.out, "clap.pt"), device=device)


# ===================================================================================================
# Resume: a stage's state (weights, optimisers, step and every process's random stream) and its checks.
# ===================================================================================================

def resume_trainer(trainer, stage, cfg, args, rank=0, world=1) -> None:
    """--resume: load the stage's last state into `trainer` (step, weights, optimisers and the random
    streams), so that the resumed run continues exactly as the uninterrupted one would."""
    path_state = os.path.join(args.out, f"{stage}.state.pt")
    if not os.path.exists(path_state):
        if rank == 0:                                        # --stage all --resume: later stages start afresh
            print(f"{stage}: nothing to resume ({path_state} does not exist); starting at step 0")
        return
    state = load_checkpoint(path_state, stage)
    check_resume_state(state, path_state)
    if state.get("preset") != args.preset:
        raise UserError(f"{path_state} was trained with --preset {state.get('preset')}, not {args.preset}.")
    if state.get("recipe", "classroom") != args.recipe:      # the recipe sets the steps and the lr's schedule
        raise UserError(f"{path_state} was trained with --recipe {state.get('recipe', 'classroom')}, not "
                        f"{args.recipe}.")
    # a field the saved run predates had its default then (e.g. vqgan's l2_codes, off before it existed)
    saved = {**dataclasses.asdict(type(cfg)()), **state["config"]}
    check_config(cfg, saved, f"{stage} run in {path_state}")
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


# ===================================================================================================
# Distributed training: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; nothing else changes.
# ===================================================================================================

class Replicated(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that reads like the module it wraps: its attributes (cfg, submodules) are the
    module's, so a Trainer's step can hand it to code that reads them (specmaskgit.masked_loss reads cfg)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(trainer, device: str, rank: int, world: int) -> None:
    """Under torchrun, give a Trainer what its processes share; with one process nothing changes.

    - Each module in `trainer.step_modules` (what its step calls for the passes that learn) is replaced there
      by DistributedDataParallel (Replicated): it broadcasts rank 0's weights at the start and averages the
      gradients of all processes in backward. The Trainer's own attributes (trainer.model, ...) stay the
      modules themselves: what one process runs alone (the VQGAN's preview, the held-out evaluation), what
      needs no gradient sync (the VQGAN discriminator's verdict on the generator), and the checkpoints.
    - A VQGAN's codebook upkeep (`trainer.codebook_sync`) sums the picks of every process and takes rank
      0's new codes, so every copy of the codebook stays equal.
    - The transformer's masks (`trainer.mask_streams`, `trainer.mask_stream`): step s of rank r is seeded
      s * world + r, so the processes draw different masks and --resume replays them.
    """
    if world == 1:
        return
    import torch.distributed as dist
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    for name, module in list(trainer.step_modules.items()):
        trainer.step_modules[name] = Replicated(module, device_ids=ids)
    if hasattr(trainer, "codebook_sync"):
        trainer.codebook_sync = dict(all_reduce=dist.all_reduce, broadcast=lambda t: dist.broadcast(t, src=0))
    if hasattr(trainer, "mask_stream"):
        trainer.mask_streams, trainer.mask_stream = world, rank


# ===================================================================================================
# During the loop: the log, the clock, the loss that stops being finite, the checkpoints, held-out scores.
# ===================================================================================================

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


def save_state(trainer, step, args, stage, rank=0, world=1) -> None:
    """Write `<stage>.pt` (inference) and `<stage>.state.pt` (resume), each atomically, on rank 0.

    Weights that hold a NaN or an infinity are never written: the last finite checkpoint stays.
    Under torchrun every process leaves only once rank 0 has written (or refused to): the next stage reads
    these files on every rank (build_cache), and one that went ahead would read none, or the previous one.
    """
    rng = [rng_state()]
    if world > 1:                                            # every process's random stream, for --resume
        rng = [None] * world
        torch.distributed.all_gather_object(rng, rng_state())
    refused = None
    if rank == 0:
        try:
            write_state(trainer, step, args, stage, rng)
        except UserError as e:
            refused = e
    if world > 1:                      # rank 0's outcome, to all: none waits for a write that never comes
        outcome = [None if refused is None else str(refused)]
        torch.distributed.broadcast_object_list(outcome, src=0)    # NCCL: on the device setup_distributed set
        if rank != 0 and outcome[0] is not None:
            refused = UserError(outcome[0])
    if refused is not None:
        raise refused


def write_state(trainer, step, args, stage, rng: list) -> None:
    ckpt, state = {**trainer.checkpoint(), **getattr(trainer, "made_from", {})}, trainer.state_dict()   # the same
    bad = non_finite_entry(ckpt) or non_finite_entry(state)                                            # with one GPU or eight
    if bad:
        raise UserError(f"{stage}: '{bad}' is no longer finite at step {step}; {last_checkpoint(args.out, stage)}")
    save_checkpoint(ckpt, os.path.join(args.out, f"{stage}.pt"))
    save_checkpoint({"stage": stage, "step": step, "trainer": state, "seed": args.seed, "rng": rng,
                     "preset": args.preset, "recipe": args.recipe, "config": dataclasses.asdict(trainer.cfg)},
                    os.path.join(args.out, f"{stage}.state.pt"))


def heldout_evaluator(args, device, trainer):
    """A function step -> {"eval_fad", "eval_clap_score", "eval_clips", "eval_toy_mix"}: --eval-clips clips of
    the held-out (val) split, of the toy world of --eval-toy-mix if given (a target set other than the
    training world, as Fig. 8 scores AudioCaps while pre-training on AudioSet), generated from their captions
    with the paper's sampler (16 steps, CFG 3, Gumbel 1.5), decoded by this run's VQGAN and vocoder
    (Griffin-Lim without one), and scored against the real clips in the run's CLAP audio space (evaluate.py's
    FAD). The sampler's seed is the same every time, so the curve's steps
    differ by the model alone. The global random stream is restored afterwards (--resume replays it)."""
    from data import datasets
    from formats import hifigan_format
    import mel
    import specmaskgit
    import vocoder
    import vqgan
    from evaluation.metrics import clap_score, frechet_distance
    n = args.eval_clips if args.data == "toy" else None
    mix = args.toy_mix if args.eval_toy_mix is None else args.eval_toy_mix
    heldout = datasets.make_dataset(args.data, "val", root=args.root, num_samples=args.num_samples, n=n, toy_mix=mix)
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
        model = trainer.model                                                   # the module itself: rank 0 alone
        was_training = model.training
        model.eval()
        tokens = specmaskgit.generate(model, text_emb.to(device), seed=args.seed)   # (N, rows, cols)
        model.train(was_training)
        log_mel = mel.denormalize(vq.decode(tokens).float())                       # (N, 80, F)
        # Griffin-Lim on the training device, where the mels are (mel.griffin_lim runs on its input's):
        # under torchrun the other processes wait in their next collective while rank 0 evaluates
        if voc is None:
            wav = mel.griffin_lim(log_mel)                                          # (N, T)
        else:                                                                   # in the device's own dtype
            wav = vocoder.vocode(voc, log_mel, native_dtype(log_mel.device.type, verbose=False))
        emb = conditioner.embed_audio(wav[:, :real.shape[1]].to(device)).float().cpu()
        torch.set_rng_state(rng)
        return {"eval_fad": frechet_distance(emb, real_emb), "eval_clap_score": clap_score(text_emb.cpu(), emb),
                "eval_clips": count, **({"eval_toy_mix": mix} if args.data == "toy" else {})}
    return evaluate


def log_evaluation(stage, evaluate, step, log) -> None:
    row = {"step": step, **evaluate(step)}
    world = f", toy world with {row['eval_toy_mix']:.0%} two-sound clips" if "eval_toy_mix" in row else ""
    print(f"{stage} step {step}: held-out FAD {row['eval_fad']:.4f}, CLAP score {row['eval_clap_score']:.4f} "
          f"({row['eval_clips']} clips{world})", flush=True)
    log.write(json.dumps(row) + "\n")
    log.flush()


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
    from data import datasets
    from formats import hifigan_format
    import mel
    import vocoder
    loss_mel = vocoder.loss_mel                      # HiFiGAN's loss mel, 0-11 kHz: (N, T) -> (N, 80, F)
    n = HELDOUT_CLIPS if args.data == "toy" else None
    try:
        heldout = datasets.make_dataset(args.data, "val", root=args.root, num_samples=args.num_samples, n=n)
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
    outputs = {"vocoder": vocoder.vocode(generator, source.to(device), torch.float32).cpu(),
               "griffin_lim": mel.griffin_lim(source)}
    result = {name: (loss_mel(out[:, :wav.shape[1]]) - target).abs().mean().item() for name, out in outputs.items()}
    result["clips"] = len(wav)
    ckpt["heldout_mel_l1"] = result
    save_checkpoint(ckpt, path)
    print(f"vocoder: mel L1 on {len(wav)} held-out clips {result['vocoder']:.3f}, Griffin-Lim's "
          f"{result['griffin_lim']:.3f} ({'better' if result['vocoder'] < result['griffin_lim'] else 'worse'})")
    return result


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
    for stage in MODEL_STAGES:
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
    kept = [s for s in MODEL_STAGES if s in old and s not in bundle and (s == "vocoder" or not trained)]
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
        import mel
        import vqgan
        vq = {**dataclasses.asdict(vqgan.Config()), **bundle["vqgan"]["config"]}   # a field it predates: the default
        tr = bundle["transformer"]["config"]
        grid = (vq["n_codes"], vq["n_mels"] // vqgan.DOWNSAMPLE, args.num_samples // (vq["patch_frames"] * mel.HOP))
        if (tr["n_codes"], tr["rows"], tr["cols"]) != grid:
            raise UserError(f"{os.path.join(args.out, 'transformer.pt')} was trained on other tokens ({tr['n_codes']} "
                            f"codes, a {tr['rows']} x {tr['cols']} grid) than this vqgan.pt and --num-samples give "
                            f"({grid[0]} codes, {grid[1]} x {grid[2]}); retrain it with --stage transformer.")
    if "vqgan" in bundle and "transformer" in bundle:
        trained_now = MODEL_STAGES if args.stage == "all" else [args.stage]
        vqgan_pair(bundle["vqgan"], bundle["transformer"], os.path.join(args.out, "transformer.pt"),
                   older_than_vqgan="vqgan" in trained_now and "transformer" not in trained_now)
    missing = [s for s in ("vqgan", "transformer") if s not in bundle]
    save_checkpoint(bundle, args.bundle)
    print(f"bundle: {args.bundle} ({os.path.getsize(args.bundle) / 1e6:.1f} MB)"
          + (f"; sample.py needs {' and '.join(missing)} too" if missing else ""))
