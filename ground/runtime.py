"""
ground/runtime.py — the few things every stage shares: user errors, checkpoints, device and dtype.

Why a file of its own: every stage saves and loads checkpoints, and every command picks a device and
a compute precision and turns bad input into one sentence. Writing that once means every stage gets the
same crash safety (atomic writes, `weights_only=True` loads) and the same errors. It is the ground
floor: it imports nothing of the project, and the model files do not import it (the edges and the
commands do the loading and checking for them).

  UserError             bad input from the user; the command lines print its message and exit with 2
  partial_path          where a file is written before its rename: <path>.partial-<pid>
  write_atomically      write a file through a partial file and a rename; a failure leaves the old one
  save_checkpoint       a dict of tensors/numbers/strings, written atomically
  load_checkpoint       read it back with weights_only=True, checking its stage and entries (check_entries)
  non_finite_entry      the first NaN or infinite tensor in a checkpoint, by name
  check_config          name the fields where a checkpoint's config differs from the model's
  same_value            config values equal, tuples and lists alike
  config_from_dict      rebuild a Config from a checkpoint, every entry type- and range-checked first
  check_config_values   one sentence for a config value no model can be built with (value_rule)
  load_weights          load_state_dict with a missing or misshapen weight as one sentence
  build_model           the model of an inference checkpoint: config_from_dict, then load_weights
  load_into             an inference checkpoint into a model that already exists
  count_parameters      the number of weights of a module
  make_output_folder    create a run/sample folder, or say in one sentence why it cannot be
  run_command           the command lines' main(): a UserError becomes one line and exit code 2
  ArgumentParser        argparse whose rejections are UserErrors
  pick_device           "cuda" when there is a GPU, else "cpu"
  cpu_has_native_bf16   AMX or AVX-512 BF16 on this CPU
  autocast              torch.autocast to a dtype, off for fp32 and int8
  auto_dtype            --dtype auto's rule: small models fp32 everywhere, then bf16 on CUDA from compute
                        capability 8.0 and on CPUs with native bf16, fp32 elsewhere
  native_dtype          that rule, or --dtype, printed; inference's choice (fast.inference_dtype) starts from it
  training_dtype        training's choice (train.py, the benchmarks): no fp16, the tiny preset in fp32
"""

import argparse
import dataclasses
import hashlib
import os
import sys
import zipfile

import torch


class UserError(Exception):
    """Something the user can fix (a path, a flag, a file). Printed as one sentence, exit code 2."""


# ---------------------------------------------------------------------------------------------------
# Checkpoints: plain dicts, written atomically, loaded without unpickling arbitrary objects.
# ---------------------------------------------------------------------------------------------------

def partial_path(path: str) -> str:
    """Where `path` is written before it is renamed into place: `<path>.partial-<process id>`.

    Only this project makes such names, so a run can remove what a killed run of its own left behind
    (training_edges.remove_partial_files) without ever touching a user's files.
    """
    return f"{path}.partial-{os.getpid()}"


def write_atomically(path: str, write) -> None:
    """Call `write(f)` on a new file beside `path`, then rename it over `path` (os.replace is atomic on
    POSIX and Windows). A crash or a full disk never leaves a half-written `path`: if anything fails the
    partial file is removed, the previous file at `path` is untouched, and an OSError (ENOSPC, EACCES,
    ...) becomes one sentence."""
    tmp = partial_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # O_NOFOLLOW: a symbolic link planted at the partial name is refused, not followed and truncated
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"could not save {path} ({e.strerror or e}); the previous file is unchanged.") from None
    except RuntimeError as e:
        _remove_quietly(tmp)
        cause = _os_error_behind(e)
        if cause is None:
            raise
        raise UserError(f"could not save {path} ({cause}); the previous file is unchanged.") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _os_error_behind(e: RuntimeError) -> str | None:
    """What the disk said, when torch.save's zip writer turned a failed write (a full disk, a file-size
    limit) into its RuntimeError ("unexpected pos ..."): the OSError it was handling, or its own words."""
    while e is not None:
        if isinstance(e, OSError):
            return e.strerror or str(e)
        e = e.__context__
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_checkpoint(obj: dict, path: str) -> None:
    """Write `obj` to `path` atomically (see write_atomically): `path` holds the old or the new checkpoint,
    never half of one."""
    write_atomically(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str, stage: str | None = None) -> dict:
    """Load a checkpoint dict with weights_only=True (no arbitrary code runs while loading).

    `stage` ("vqgan", "vocoder", "clap", "transformer", "bundle", ...) is checked against the "stage" key
    that every checkpoint of ours carries, so that handing the vocoder file to the VQGAN fails clearly.
    What a file holds is checked before any model is built from it: a stage's entry must have a config
    dict and a dict of weight tensors, and no tensor may hold NaN or infinity (a diverged run's weights).
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file." if os.path.isdir(path)
                        else f"checkpoint {path} is not a regular file (a pipe or a device?)." if os.path.exists(path)
                        else f"checkpoint {path} does not exist.")
    check_zip_entries(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so in one sentence
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} does not hold a checkpoint dict.")
    if stage is not None and ckpt.get("stage") != stage:
        raise UserError(f"{path} is a {ckpt.get('stage', 'foreign')} checkpoint, not a {stage} one.")
    check_entries(ckpt, path)
    return ckpt


def check_zip_entries(path: str) -> None:
    """Refuse a checkpoint whose zip entries are compressed, before torch.load inflates them.

    torch.save stores every entry uncompressed, so a file of ours never holds more bytes than its size;
    a compressed entry (a few MB of zeros inflating to gigabytes) was made by something else.
    """
    try:
        with zipfile.ZipFile(path) as z:
            packed = [i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return                                                  # not a zip: torch.load says what it is
    if packed:
        raise UserError(f"{path} holds compressed entries ({packed[0]}), which torch.save never writes; "
                        f"it is not a checkpoint of ours.")


MODEL_STAGES = ("vqgan", "vocoder", "clap", "transformer")


def check_entries(ckpt: dict, path: str) -> None:
    """One sentence naming `path` and the entry, for a checkpoint that loads but holds nonsense."""
    entries = {"": ckpt} if ckpt.get("stage") in MODEL_STAGES and "trainer" not in ckpt else {}
    if ckpt.get("stage") == "bundle":
        entries = {f"{s}.": ckpt[s] for s in MODEL_STAGES if s in ckpt}
    for prefix, entry in entries.items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: entry '{prefix[:-1]}' is a {type(entry).__name__}, not a checkpoint dict.")
        if prefix and entry.get("stage") != prefix[:-1]:
            raise UserError(f"{path}: entry '{prefix[:-1]}' is a {entry.get('stage', 'foreign')} checkpoint.")
        for key in ("config", "model"):
            if not isinstance(entry.get(key), dict):
                found = "missing" if key not in entry else f"a {type(entry[key]).__name__}, not a dict"
                raise UserError(f"{path}: entry '{prefix}{key}' is {found}.")
        for name, value in entry["model"].items():
            if not isinstance(value, torch.Tensor):
                raise UserError(f"{path}: weight '{prefix}model.{name}' is a {type(value).__name__}, not a tensor.")
        for name, value in entry["config"].items():             # before any model is built from it
            rule = value_rule(name, value)
            if rule:
                raise UserError(f"{path}: config entry '{prefix}config.{name}' must be {rule}, not {value!r}.")
        if not isinstance(entry.get("vqgan_hash", ""), str):
            raise UserError(f"{path}: entry '{prefix}vqgan_hash' is a {type(entry['vqgan_hash']).__name__}, not a string.")
        vocab = entry.get("vocab", [])                           # TinyCLAP's words
        if not isinstance(vocab, (list, tuple)) or not all(isinstance(w, str) for w in vocab):
            raise UserError(f"{path}: entry '{prefix}vocab' must be a list of words (strings), not "
                            f"{str(vocab)[:60]}.")
    bad = bad_tensor_entry(ckpt)
    if bad:
        raise UserError(f"{path}: entry '{bad[0]}' {bad[1]}.")


def non_finite_entry(obj, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in a nested dict/list that holds a NaN or an infinity."""
    bad = bad_tensor_entry(obj, prefix)
    return bad[0] if bad else None


FP32_MAX = torch.finfo(torch.float32).max


def tensor_problem(t: torch.Tensor) -> str | None:
    """What makes `t` unfit to become float32 weights, in words, or None.

    A tensor declaring more values than its storage holds (a stride-0 view of 10^12 elements) is refused
    first, from its sizes alone; complex values are never ours; NaN, infinity, and float64 values beyond
    float32's range (infinite once cast) are what a diverged or hand-made file holds.
    """
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        return (f"declares {t.numel()} values but stores {t.untyped_storage().nbytes() // t.element_size()} "
                f"(an expanded view, not saved weights)")
    if t.is_complex():
        return "holds complex numbers, where weights are real"
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            return "holds NaN or infinite values (saved from a diverged run?)"
        if t.dtype == torch.float64 and t.numel() and t.abs().max() > FP32_MAX:
            return "holds values beyond float32's range (infinite once cast to float32)"
    return None


def bad_tensor_entry(obj, prefix: str = "") -> tuple[str, str] | None:
    """(name, problem) of the first tensor in a nested dict/list that tensor_problem refuses, or None."""
    if isinstance(obj, torch.Tensor):
        problem = tensor_problem(obj)
        return (prefix or "tensor", problem) if problem else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = bad_tensor_entry(v, f"{prefix}.{k}" if prefix else str(k))
        if bad:
            return bad
    return None


def weights_hash(ckpt: dict, names=None) -> str:
    """A fingerprint of a checkpoint's weights (`names` of its "model" entries, default all): 16 hex digits
    of SHA-256 over every tensor's name and bytes."""
    model = ckpt.get("model", {})
    h = hashlib.sha256()
    for k in sorted(model) if names is None else names:
        h.update(k.encode())
        h.update(model[k].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())   # 0-d tensors too
    return h.hexdigest()[:16]


def vqgan_hash(vq_ckpt: dict) -> str:
    """A fingerprint of a VQGAN checkpoint's codebook: the transformer and its token cache store it, so that
    a transformer is never paired with a VQGAN whose token ids it did not learn (two trainings never end
    with the same codebook)."""
    model = vq_ckpt.get("model", {})
    return weights_hash(vq_ckpt, [k for k in sorted(model) if "codebook" in k] or None)


def check_config(config, saved: dict, what: str = "checkpoint", only_saved_fields: bool = False) -> None:
    """Raise UserError naming every field where `saved` (a dict) differs from the dataclass `config`.
    only_saved_fields: compare just the fields `saved` names (e.g. those read off a checkpoint's tensor
    shapes, hifigan_format), with no complaint about the others."""
    mine = dataclasses.asdict(config)
    names = [k for k in mine if k in saved] if only_saved_fields else list(mine)
    diffs = [f"{k}={saved.get(k)!r} (model has {mine[k]!r})" for k in names if not same_value(saved.get(k), mine[k])]
    unknown = sorted(set(saved) - set(mine))
    if unknown:
        diffs.append("unknown fields " + ", ".join(unknown))
    if diffs:
        raise UserError(f"the {what} was made with another config: " + "; ".join(diffs) + ".")


def same_value(a, b) -> bool:
    """Config values compare equal with tuples and lists alike (a config saved with torch.save comes back
    with lists)."""
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v
    return norm(a) == norm(b)


def config_from_dict(cls, saved: dict, what: str = "checkpoint"):
    """Rebuild a Config dataclass from a checkpoint's dict, checking every entry before anything is built.

    Each field must have its default's type (a whole number, a number, a bool, a string, a tuple of them)
    and a value the model can be built with (check_config_values): a string, a negative layer count or a
    width that would allocate terabytes is one sentence naming the entry, not a traceback or a frozen
    machine. Unknown fields are refused too; missing ones take the default.
    """
    if not isinstance(saved, dict):
        raise UserError(f"the {what}'s config is a {type(saved).__name__}, not a dict.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise UserError(f"the {what} has config fields this code does not know: {', '.join(unknown)}.")
    kw = {}
    for name, v in saved.items():
        default = fields[name].default
        # lists came from tuples (torch.save of asdict keeps lists); give tuples back where the default is one
        v = _tupled(v) if isinstance(v, list) else v
        if not _same_kind(v, default):
            raise UserError(f"the {what}'s config entry '{name}' is {v!r}, where {type(default).__name__} "
                            f"like {default!r} belongs.")
        kw[name] = v
    cfg = cls(**kw)
    check_config_values(cfg, "the " + what + "'s config entry '{}'")
    return cfg


def _tupled(v):
    return tuple(_tupled(x) if isinstance(x, list) else x for x in v)


def _same_kind(v, default) -> bool:
    """Is `v` of `default`'s type? An int may stand for a float; tuples are compared element by element."""
    if isinstance(default, bool) or isinstance(default, str):
        return type(v) is type(default)
    if isinstance(default, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, tuple):
        return isinstance(v, tuple) and (not default or all(_same_kind(x, default[0]) for x in v))
    return True


# Whole-number config fields where 0 means something ("never re-seed", "the discriminator from the first
# step", "a bag of words"); every other whole number in a config is a size or a count and must be >= 1.
ZERO_ALLOWED = {"dead_code_steps", "disc_start", "text_layers"}
OFF_AT_MINUS_ONE = {"context"}   # whole numbers where 0 is a value and -1 switches the idea off
MEL_BINS = 80          # mel.N_MELS (runtime comes before mel in the import order)
# String config fields and the values their model knows (specmaskgit.MASK_SCHEDULES, vocoder's ResBlock1/2).
CHOICES = {"mask_schedule": ("cosine", "linear", "sqrt"), "resblock": ("1", "2"), "ratio_draw": ("gaussian", "cosine")}
STEP_COUNTS = {"dead_code_steps", "disc_start"}       # numbers of training steps: they allocate nothing
MAX_SIZE = 2 ** 16     # no width, count or kernel of ours comes near it; a 2**16 x 2**16 matrix is 17 GB
MAX_LAYERS = 1024      # layer and block counts: the paper's transformer has 24; each layer allocates a width^2


def value_rule(name: str, value) -> str | None:
    """The rule a config value breaks ("1 or more", ...), or None. Tuples and lists are checked element-wise."""
    if isinstance(value, (tuple, list)):
        return next((r for r in (value_rule(name, x) for x in value) if r), None)
    if name in CHOICES and value not in CHOICES[name]:
        return "one of " + ", ".join(CHOICES[name])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low = -1 if name in OFF_AT_MINUS_ONE else 0 if isinstance(value, float) or name in ZERO_ALLOWED else 1
    high = 1 if name.endswith("dropout") else MAX_SIZE if isinstance(value, int) and name not in STEP_COUNTS else None
    if high == MAX_SIZE and name.endswith(("layers", "blocks")):
        high = MAX_LAYERS
    if value == value and abs(value) != float("inf") and value >= low and (high is None or value <= high):
        return None
    return f"from {low} to {high}" if high is not None else f"{low} or more"


def check_config_values(cfg, label: str = "--{}") -> None:
    """One sentence for a config value a model cannot be built, trained or sampled with.

    `label` names a field in the sentence ("--vqgan.{}" for train.py's flags, or a checkpoint's entry).
    Every number must be finite; sizes and counts whole and from 1 (0 where ZERO_ALLOWED) up to
    MAX_SIZE; other numbers 0 or more, dropouts at most 1; attention heads must divide their width.
    """
    for f in dataclasses.fields(cfg):
        rule = value_rule(f.name, getattr(cfg, f.name))
        if rule:
            raise UserError(f"{label.format(f.name)} must be {rule}, not {getattr(cfg, f.name)!r}.")
    for width, heads in (("width", "n_heads"), ("text_width", "text_heads")):   # attention splits the width
        if hasattr(cfg, heads) and getattr(cfg, width) % getattr(cfg, heads):
            raise UserError(f"{label.format(width)} ({getattr(cfg, width)}) must be divisible by "
                            f"{label.format(heads)} ({getattr(cfg, heads)}).")
    if hasattr(cfg, "channel_mult"):            # the VQGAN: four 2x downsamplings, GroupNorm over every width
        if len(cfg.channel_mult) != 5:
            raise UserError(f"{label.format('channel_mult')} needs 5 levels (four 2x downsamplings = 16x), "
                            f"not {len(cfg.channel_mult)}.")
        if cfg.patch_frames not in (1, 2, 4, 8, 16):
            raise UserError(f"{label.format('patch_frames')} must be 1, 2, 4, 8 or 16 (frames per token: a power "
                            f"of 2 the four downsamplings can reach), not {cfg.patch_frames}.")
        widths = [cfg.base_channels * m for m in cfg.channel_mult] + [cfg.z_channels]
        if any(w % cfg.norm_groups for w in widths):
            raise UserError(f"every width ({widths}) must be divisible by {label.format('norm_groups')} ({cfg.norm_groups}).")
    if hasattr(cfg, "n_mels") and cfg.n_mels != MEL_BINS:
        raise UserError(f"{label.format('n_mels')} must be {MEL_BINS}, the bins of the mel every stage reads, "
                        f"not {cfg.n_mels}.")


def load_weights(module: torch.nn.Module, state: dict, what: str) -> None:
    """module.load_state_dict(state), with a missing, unexpected or wrongly shaped weight as one sentence
    naming `what` (the file and entry) and the weight, instead of PyTorch's multi-line RuntimeError."""
    mine = module.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    if missing or unexpected:
        which = f"lacks weight '{missing[0]}'" if missing else f"has an unknown weight '{unexpected[0]}'"
        raise UserError(f"the {what} {which} ({len(missing)} missing, {len(unexpected)} unknown).")
    for name, t in mine.items():
        if not isinstance(state[name], torch.Tensor) or state[name].shape != t.shape:
            got = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            raise UserError(f"the {what}'s weight '{name}' is {got}, where its config needs {tuple(t.shape)}.")
        # load_state_dict would copy integers into a float weight (or floats into a count) without a word
        if state[name].is_floating_point() != t.is_floating_point() or state[name].is_complex():
            raise UserError(f"the {what}'s weight '{name}' is {str(state[name].dtype).replace('torch.', '')}, "
                            f"where the model holds {str(t.dtype).replace('torch.', '')}.")
    if not any(t.is_meta for t in mine.values()):
        module.load_state_dict(state)


def build_model(model_class, config_class, ckpt: dict, stage: str, **more):
    """The model of an inference checkpoint ({"stage", "config", "model"}), in eval mode. `more` goes to the
    model's constructor beside the config (TinyCLAP's vocabulary).

    The config is checked entry by entry before anything is built (config_from_dict), then every weight
    by name and shape (load_weights): a checkpoint of another stage, size or shape is one sentence.
    """
    if ckpt.get("stage") != stage:
        raise UserError(f"this is a {ckpt.get('stage', 'foreign')} checkpoint, not a {stage} one.")
    cfg = config_from_dict(config_class, ckpt["config"], f"{stage} checkpoint")
    check_weights_before_building(model_class, cfg, ckpt["model"], f"{stage} checkpoint")
    model = model_class(cfg, **more)
    load_weights(model, ckpt["model"], f"{stage} checkpoint")
    return model.eval()


def check_weights_before_building(model_class, cfg, state: dict, what: str) -> None:
    """Compare the weights' names and shapes with a model built on PyTorch's "meta" device (sizes, no
    memory), so that a config asking for far more than the file holds is refused before it allocates.
    A model that cannot be built there is checked after building, as before."""
    try:
        with torch.device("meta"):
            shadow = model_class(cfg)
    except Exception:
        return
    load_weights(shadow, state, what)


def load_into(model: torch.nn.Module, ckpt: dict, stage: str) -> None:
    """Load an inference checkpoint into a model that already exists (model.cfg is its config); a checkpoint
    made with another config is one sentence naming the fields that differ. A field the checkpoint does not
    store takes the model's value."""
    if ckpt.get("stage") != stage:
        raise UserError(f"this is a {ckpt.get('stage', 'foreign')} checkpoint, not a {stage} one.")
    check_config(model.cfg, {**dataclasses.asdict(model.cfg), **ckpt["config"]}, f"{stage} checkpoint")
    load_weights(model, ckpt["model"], f"{stage} checkpoint")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_output_folder(path: str) -> None:
    """Create `path` if needed and check it is writable: one sentence instead of a traceback."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {path}: {e.strerror or e}.") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the output folder {path} is not writable.")


def run_command(command) -> int:
    """A script's main(): run `command()`; a UserError is one line on stderr and exit code 2, not a traceback.
    A file name that is not UTF-8 is printed with escapes (\\xff) instead of stopping the run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with "(default: X)" after a flag's help, but only where it tells something: not when the help
    already says its default in words, and not for a default of None or False (an absent flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, "") or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a flag it rejects (a wrong type, an unknown choice or flag) is a UserError: one
    sentence and exit code 2 from the script's main(), like every other bad input, instead of argparse's
    usage lines and its own exit. --help notes each default once (DefaultsHelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help).")


# ---------------------------------------------------------------------------------------------------
# Device and precision.
# ---------------------------------------------------------------------------------------------------

def pick_device(name: str | None = None) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this machine has no CUDA GPU.")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, not {name!r}.")
    return name


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX or AVX-512 BF16 instructions.

    Without them PyTorch emulates bf16 matmuls, many times slower than fp32 (RESULTS.md
    has the figures), so training's autocast picks bf16 on a CPU only where this returns True.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, dtype: torch.dtype):
    """torch.autocast to `dtype` on `device` ("cuda:1" or a torch.device too); off for fp32, and for int8,
    whose transformer linears hold their own int8 weights (fast.quantize_int8) and autocast cannot make."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))


# --dtype auto, the rule for every stage and command, in this order:
#   1. a small model (the tiny preset, width 192) runs in fp32 on every device: its matrices are too
#      small for bf16 to pay, and the demo's tokens on a GPU are then the CPU's tokens;
#   2. CUDA: bf16 from compute capability 8.0 (Ampere) on, whose tensor cores multiply bf16; older cards
#      (7.0 V100, 7.5 T4) have no bf16 units and emulate it, so they get fp32 (fp16 would need loss
#      scaling to train, which train.py refuses);
#   3. a CPU: bf16 where it has native bf16 instructions (cpu_has_native_bf16), fp32 elsewhere.
# The residual stream at inference: with bf16 weights (fast.hold_weights_in) the transformer's 24
# residual additions round to bf16 (8 significant bits), where training's autocast keeps them in fp32.
# We accept that rather than keep an fp32 copy of the stream: each addition's rounding is a relative
# 2^-9, the final LayerNorm rescales the sum, and the sampler draws every token from softmax(logits)
# with Gumbel noise, so an error of that size moves near-ties, not the distribution. It has not been
# measured against an fp32 residual on a GPU; a small model never meets it (rule 1).

SMALL_WIDTH = 512          # a transformer narrower than this is small (rule 1): the tiny preset is 192 wide
BF16_CAPABILITY = (8, 0)   # NVIDIA's compute capability of the first tensor cores with bf16 (Ampere, A100)


def auto_dtype(device, small: bool = False) -> tuple[torch.dtype, str]:
    """(dtype, why) for --dtype auto on `device` ("cpu", "cuda", "cuda:1"), by the rule above. `small`:
    the model is small (a transformer narrower than SMALL_WIDTH, the tiny preset), fp32 everywhere.
    fast.inference_dtype measures large models on a CPU instead of taking rule 3."""
    cuda = torch.device(device).type == "cuda"
    if small:
        return torch.float32, ("a small model runs in fp32 on every device, as on the CPU" if cuda
                               else "a small model on a CPU: lower precision does not pay")
    if cuda:
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= BF16_CAPABILITY:
            return torch.bfloat16, f"bf16 tensor cores on CUDA, compute capability {major}.{minor}"
        return torch.float32, (f"compute capability {major}.{minor} has no bf16 tensor cores "
                               f"(they start at {BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]})")
    if cpu_has_native_bf16():
        return torch.bfloat16, "this CPU has AMX/AVX-512 BF16"
    return torch.float32, "this CPU has no native bf16; emulated bf16 is several times slower"


def native_dtype(device: str, name: str | None = None, verbose: bool = True, small: bool = False) -> torch.dtype:
    """The compute dtype: `name` if given ("fp32", "bf16", "fp16"), else auto_dtype's rule for `device`
    and a model that is `small` or not. The vocoder and the benchmark's rows use it as it is;
    fast.inference_dtype adds int8 and a measurement for large transformers on a CPU, training_dtype
    refuses fp16 and keeps the tiny preset in fp32."""
    if name not in (None, "auto"):
        if name not in DTYPES:
            raise UserError(f"--dtype must be one of auto, {', '.join(DTYPES)}, not {name!r}.")
        dtype, why = DTYPES[name], "asked for with --dtype"
    else:
        dtype, why = auto_dtype(device, small)
    if verbose:
        print(f"compute dtype: {str(dtype).replace('torch.', '')} on {device} ({why})")
    return dtype


def training_dtype(preset: str, device: str, name: str | None = None, verbose: bool = True) -> torch.dtype:
    """The autocast dtype of training (train.py) and of the benchmarks' training rows. fp16 is refused:
    its small range makes gradients underflow to zero unless the loss is scaled (a GradScaler), which
    the loop does not do; bf16 has fp32's range and needs none. The tiny preset trains in fp32 on every
    machine unless `name` says otherwise, so that the toy recipe writes the same model on every CPU kind
    and GPU (bf16 rounding changes what its steps learn)."""
    if name == "fp16":
        raise UserError("--dtype fp16 cannot train here: without loss scaling its gradients underflow; use bf16 or fp32.")
    if preset == "tiny" and name in (None, "auto"):
        if verbose:
            print(f"compute dtype: float32 on {device} (the tiny preset trains in fp32 everywhere)")
        return torch.float32
    return native_dtype(device, name, verbose)
