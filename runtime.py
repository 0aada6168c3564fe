"""
runtime.py — the few things every stage shares: user errors, checkpoints, device and dtype.

Why a file of its own: the four model files, train.py and sample.py all save and load checkpoints and
all pick a device and a compute precision. Writing that once means every stage gets the same crash
safety (atomic writes, `weights_only=True` loads) and the same one-sentence errors.

  UserError          bad input from the user; the command lines print its message and exit with 2
  run_command        the command lines' main(): a UserError becomes that one line and exit code 2
  save_checkpoint    write a dict of tensors/numbers/strings atomically (temporary file, then rename)
  load_checkpoint    read it back with weights_only=True, checking which stage wrote it
  check_config       name the fields where a checkpoint's config differs from the model's
  pick_device        "cuda" when there is a GPU, else "cpu"
  make_output_folder create a run/sample folder, or say in one sentence why it cannot be
  pick_dtype         the fastest precision the device runs natively (never bf16 on a CPU without it)
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import torch

UMASK = os.umask(0o022)
os.umask(UMASK)                                    # read the process's umask (the only way is to set it)


class UserError(Exception):
    """Something the user can fix (a path, a flag, a file). Printed as one sentence, exit code 2."""


# ---------------------------------------------------------------------------------------------------
# Checkpoints: plain dicts, written atomically, loaded without unpickling arbitrary objects.
# ---------------------------------------------------------------------------------------------------

def save_checkpoint(obj: dict, path: str) -> None:
    """Write `obj` to `path` so that a crash (or a full disk) never leaves a half-written file there.

    torch.save goes to a temporary file in the same folder; only a complete file is renamed over the
    old one (os.replace is atomic on POSIX and Windows). If anything fails the temporary file is
    removed and the previous checkpoint at `path` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write a checkpoint in {folder}: {e.strerror or e}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)                     # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not save {path} ({e.strerror or e}); the previous file is unchanged.") from None
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, stage: str | None = None) -> dict:
    """Load a checkpoint dict with weights_only=True (no arbitrary code runs while loading).

    `stage` ("vqgan", "vocoder", "clap", "transformer") is checked against the "stage" key that every
    checkpoint of ours carries, so that handing the vocoder file to the VQGAN fails clearly.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so in one sentence
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} does not hold a checkpoint dict.")
    if stage is not None and ckpt.get("stage") != stage:
        raise UserError(f"{path} is a {ckpt.get('stage', 'foreign')} checkpoint, not a {stage} one.")
    return ckpt


def check_config(config, saved: dict, what: str = "checkpoint") -> None:
    """Raise UserError naming every field where `saved` (a dict) differs from the dataclass `config`."""
    mine = dataclasses.asdict(config)
    diffs = [f"{k}={saved.get(k)!r} (model has {v!r})" for k, v in mine.items() if _norm(saved.get(k)) != _norm(v)]
    unknown = sorted(set(saved) - set(mine))
    if unknown:
        diffs.append("unknown fields " + ", ".join(unknown))
    if diffs:
        raise UserError(f"the {what} was made with another config: " + "; ".join(diffs) + ".")


def _norm(v):
    """Tuples and lists compare equal (a config saved with torch.save comes back with lists)."""
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def config_from_dict(cls, saved: dict, what: str = "checkpoint"):
    """Rebuild a Config dataclass from a checkpoint's dict; unknown fields are a clear error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise UserError(f"the {what} has config fields this code does not know: {', '.join(unknown)}.")
    # lists came from tuples (torch.save of asdict keeps lists); give tuples back where the default is one
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in saved:
            v = saved[f.name]
            kw[f.name] = tuple(_tupled(v)) if isinstance(v, list) else v
    return cls(**kw)


def _tupled(v):
    return [tuple(_tupled(x)) if isinstance(x, list) else x for x in v]


def make_output_folder(path: str) -> None:
    """Create `path` if needed and check it is writable: one sentence instead of a traceback."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {path}: {e.strerror or e}.") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the output folder {path} is not writable.")


def run_command(command) -> int:
    """A script's main(): run `command()`; a UserError is one line on stderr and exit code 2, not a traceback."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a flag it rejects (a wrong type, an unknown choice or flag) is a UserError: one
    sentence and exit code 2 from the script's main(), like every other bad input, instead of argparse's
    usage lines and its own exit."""

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

    Without them PyTorch emulates bf16 matmuls and they run ~300x slower than fp32 (measured on an
    AMD EPYC Zen 3: 0.3 vs 97 GFLOP/s), so bf16 is only ever chosen where this returns True.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_dtype(device: str, name: str | None = None, verbose: bool = True) -> torch.dtype:
    """The compute dtype: `name` if given ("fp32", "bf16", "fp16"), else what `device` runs natively."""
    if name not in (None, "auto"):
        if name not in DTYPES:
            raise UserError(f"--dtype must be one of auto, {', '.join(DTYPES)}, not {name!r}.")
        dtype, why = DTYPES[name], "asked for with --dtype"
    elif device == "cuda":
        dtype, why = torch.bfloat16, "tensor cores on CUDA"
    elif cpu_has_native_bf16():
        dtype, why = torch.bfloat16, "this CPU has AMX/AVX-512 BF16"
    else:
        dtype, why = torch.float32, "this CPU has no native bf16 (it would be ~300x slower)"
    if verbose:
        print(f"compute dtype: {str(dtype).replace('torch.', '')} on {device} ({why})")
    return dtype


def pick_inference_dtype(device: str, name: str | None, width: int, verbose: bool = True) -> torch.dtype:
    """sample.py's choice for a transformer of this `width`; may be torch.qint8 (specmaskgit.quantize_int8).

    `name` ("fp32", "bf16", "fp16", "int8") overrides. "auto" (or None) picks what pays on this machine:
    - CUDA: bf16 (tensor cores);
    - a small model (width < 512, the toy demo) on a CPU: fp32; its matrices are too small for bf16
      or int8 to win back their conversions, and the tests stay in fp32 on every CPU;
    - a CPU with AMX / AVX-512 BF16: bf16;
    - any other CPU (AVX2 only): int8 weights for the transformer's linear layers, fp32 everything else
      (bf16 would be ~300x slower there; dynamic int8 runs ~1.6x faster than fp32).
    """
    if name not in (None, "auto", "int8", *DTYPES):
        raise UserError(f"--dtype must be one of auto, {', '.join(DTYPES)}, int8, not {name!r}.")
    if name == "int8":
        dtype, why = torch.qint8, "asked for with --dtype"
    elif name not in (None, "auto"):
        return pick_dtype(device, name, verbose)
    elif device == "cuda":
        dtype, why = torch.bfloat16, "tensor cores on CUDA"
    elif width < 512:
        dtype, why = torch.float32, "a small model on a CPU: lower precision does not pay"
    elif cpu_has_native_bf16():
        dtype, why = torch.bfloat16, "this CPU has AMX/AVX-512 BF16"
    else:
        dtype, why = torch.qint8, "this CPU has no native bf16; int8 linear layers run ~1.6x fp32"
    if device == "cuda" and dtype == torch.qint8:
        raise UserError("--dtype int8 is for CPUs (PyTorch's dynamic quantisation has no CUDA kernels); use bf16.")
    if verbose:
        shown = "int8 (transformer linears; fp32 elsewhere)" if dtype == torch.qint8 else str(dtype).replace("torch.", "")
        print(f"compute dtype: {shown} on {device} ({why})")
    return dtype
