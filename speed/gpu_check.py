"""
speed/gpu_check.py — the GPU path's figures in one table, from one command.

Paper: Sec. 1, 5.1 and Fig. 2 (a 9.85 s clip faster than real time on 4 CPU cores, 30x on one GPU) and
Sec. 4 (the transformer trains at batch 48).

Random weights of the preset (speed/benchmark.py's models: speed does not depend on the weights), and a random
CLAP embedding in place of the text tower, which runs once per prompt. Each row names its device and dtype:
  rtf, cold          seconds of compute per second of audio for one clip, text -> audio (generate, decode,
                     vocode): the process's first call, the dtype choice and any CUDA-graph capture included
  rtf, warm          the same path, median of --runs calls after that one
  clips/s            --batch clips through the same path at once
  training tokens/s  one transformer step at batch 48 (forward, backward, AdamW) in the training dtype
  peak memory        torch.cuda.max_memory_allocated on CUDA; the process's peak resident memory on a CPU
  host syncs/step    reads of a device value by the host (aten._local_scalar_dense, aten.item) counted by a
                     TorchDispatchMode over one sampling, divided by its steps, for specmaskgit.generate and
                     magnet.generate (copies such as .tolist() and .cpu() wait too, and are not counted)
  MAGNeT sample      one clip from magnet.generate through pipeline.py, as sample.py --sampler magnet runs
                     it, written to --out
  CUDA graph         fast.GraphedTransformer's capture against eager passes: the extra seconds of the call
                     that records, the seconds a replay saves, and the passes after which it has paid

In:  --preset full | tiny, --device auto | cuda | cpu, --dtype, --batch, --runs, --out FOLDER
Out: the table on stdout; FOLDER/magnet_sample.wav
The measuring is speed/benchmark.py's (--gpu-check), run here as a process of its own, as sample.py --benchmark does.
Run: python -m speed.gpu_check                                  # full preset on the GPU: a few minutes
     python -m speed.gpu_check --preset tiny --device cpu       # seconds, on any machine
"""

import os
import subprocess
import sys

from ground.runtime import ArgumentParser, UserError, run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))          # the repository
MAX_BATCH, MAX_RUNS = 1024, 1000          # speed/benchmark.py's own limits


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--preset", default="full", choices=["full", "tiny"])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="inference's dtype (auto: fast.inference_dtype); training takes it too, but for int8")
    p.add_argument("--batch", type=int, default=None,
                   help="clips per batch for the clips/s row (16 on CUDA, 4 on a CPU)")
    p.add_argument("--runs", type=int, default=3, help="timed calls per warm figure")
    p.add_argument("--out", default="gpu_check_out", help="folder for the MAGNeT sample")
    args = p.parse_args(argv)
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise UserError(f"--batch must be from 1 to {MAX_BATCH}, not {args.batch}.")
    if not 1 <= args.runs <= MAX_RUNS:
        raise UserError(f"--runs must be from 1 to {MAX_RUNS}, not {args.runs}.")
    return args


def run(args) -> None:
    """speed/benchmark.py builds and times the models (a command never imports another): in its own process,
    which also makes the cold row that process's first call."""
    argv = [sys.executable, "-m", "speed.benchmark", args.preset, "--gpu-check", "--device", args.device, "--dtype", args.dtype,
            "--runs", str(args.runs), "--out", args.out] + (["--batch", str(args.batch)] if args.batch else [])
    if subprocess.call(argv, cwd=ROOT) != 0:
        raise UserError("the GPU check stopped; its own message is above.")


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
