"""
evaluation/curve.py — FAD against training steps, read from a training run's log, as a table and a PNG,
and the step where training should have stopped.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Fig. 8     FAD on AudioCaps against AudioSet training steps: it falls while the model learns to generate,
             then rises as it fits its training set and drifts from the evaluation set; so training stops
             early, at the lowest FAD (here: held-out toy clips, logged by train.py --eval-every)

In:  a run folder trained with train.py --eval-every N (its transformer.log.jsonl), or that file
Out: a markdown table of (step, FAD, CLAP score) on stdout, the early-stop step, fad_curve.png
Run: python evaluate.py --curve runs/toy   # loads no model
"""

import itertools
import json
import math
import os
import stat

from evaluation.clips import markdown_table
from ground.runtime import UserError
from pictures import png


# ---------------------------------------------------------------------------------------------------
# Fig. 8: FAD against training steps (train.py --eval-every), and the early-stop step.
# ---------------------------------------------------------------------------------------------------

MAX_LOG_BYTES = 1024 * 2 ** 20   # a training log of a million rows is about 100 MB
MAX_LINE_BYTES = 64 * 1024       # train.py's rows are under 1 KB
MAX_STEP = 10 ** 12              # more optimiser steps than any run takes
MAX_FAD = 1e9                    # FADs are of order 1-100; beyond this a row is not an evaluation


def eval_row_problem(row: dict) -> str | None:
    """Why a log row with an eval_fad cannot be a point of the curve, in words, or None.

    A step is a whole number from 0 to MAX_STEP; a FAD a finite number from 0 to MAX_FAD (a distance); the
    CLAP score, when logged, a finite cosine from -1 to 1."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    step, fad, score = row.get("step"), row.get("eval_fad"), row.get("eval_clap_score", 0.0)
    if "step" not in row:
        return "no step"
    if not (number(step) and math.isfinite(step) and step == int(step) and 0 <= step <= MAX_STEP):
        return f"step {str(step)[:30]!r} is not a whole number from 0 to {MAX_STEP}"
    if not (number(fad) and math.isfinite(fad) and 0 <= fad <= MAX_FAD):
        return f"eval_fad {str(fad)[:30]!r} is not a finite distance from 0 to {MAX_FAD:g}"
    if not (number(score) and math.isfinite(score) and -1 <= score <= 1):
        return f"eval_clap_score {str(score)[:30]!r} is not a cosine from -1 to 1"
    return None


def log_path(path: str) -> str:
    """The log of a run folder (its transformer.log.jsonl) or the file itself; what the path really is, in
    one sentence, when it is neither."""
    log = os.path.join(path, "transformer.log.jsonl") if os.path.isdir(path) else path
    if not os.path.lexists(log):
        where = f"the folder {path} holds no transformer.log.jsonl" if log != path else f"{log} does not exist"
        raise UserError(f"{where}: train the transformer with --eval-every N into {path} first.")
    try:
        mode = os.stat(log).st_mode
    except OSError as e:
        raise UserError(f"--curve {log} cannot be read ({e.strerror or e}).") from None
    if not stat.S_ISREG(mode):
        what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "not a regular file")
        raise UserError(f"--curve {log} is {what}, not a training log.")
    if os.path.getsize(log) > MAX_LOG_BYTES:
        raise UserError(f"--curve {log} holds {os.path.getsize(log) / 2 ** 20:.0f} MB; a training log is read up "
                        f"to {MAX_LOG_BYTES // 2 ** 20} MB.")
    return log


def read_curve(path: str) -> list[tuple[int, float, float]]:
    """(step, FAD, CLAP score) of every --eval-every row in a run folder's transformer.log.jsonl (or that file).

    Every line is checked: a line that is not JSON (cut by a killed run, not UTF-8, too long, nested too
    deep) or an evaluation row whose numbers cannot be a point of the curve (eval_row_problem) is skipped
    and counted, and the count is printed with the first such line, so that nothing is dropped unseen."""
    log = log_path(path)
    curve, skipped, first = {}, 0, None
    try:
        f = open(log, "rb")
    except OSError as e:
        raise UserError(f"--curve {log} cannot be read ({e.strerror or e}).") from None
    with f:
        for number in itertools.count(1):
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            problem = None
            if len(raw) > MAX_LINE_BYTES:
                problem = f"longer than {MAX_LINE_BYTES // 1024} KB"
                while raw and not raw.endswith(b"\n"):                         # skip the rest of the line
                    raw = f.readline(MAX_LINE_BYTES)
            else:
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    problem = "not UTF-8"
                except RecursionError:
                    problem = "JSON nested too deep"
                except ValueError:
                    problem = "not a JSON row (cut by a killed run?)"
                else:
                    if isinstance(row, dict) and "eval_fad" in row:
                        problem = eval_row_problem(row)
                        if problem is None:                                     # a resumed run's rows replace the old
                            curve[int(row["step"])] = (float(row["eval_fad"]),
                                                       float(row.get("eval_clap_score", float("nan"))))
            if problem is not None:
                skipped += 1
                first = first or f"line {number}: {problem}"
    if skipped:
        print(f"  {log}: skipped {skipped} line(s) that are not usable rows (first, {first})", flush=True)
    if len(curve) < 2:
        raise UserError(f"{log} holds {len(curve)} usable held-out evaluation(s); a curve needs two (train with "
                        f"--eval-every).")
    return [(s, fad, score) for s, (fad, score) in sorted(curve.items())]


def early_stop(curve) -> tuple[int, float]:
    """The step of the lowest FAD (the earliest one on a tie): where Fig. 8's argument stops training."""
    step, fad, _ = min(curve, key=lambda row: (row[1], row[0]))
    return step, fad


def curve_png(curve, stop: tuple[int, float], path: str, width: int = 480, height: int = 240) -> None:
    """FAD (up) against steps (right) as a PNG: the curve in blue, the early-stop step as a red line with
    its step and FAD written beside it (png.png_bytes, the project's PNG writer)."""
    import numpy as np
    from ground.runtime import write_atomically
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 20, width - 20, 30, height - 20
    steps = [s for s, _, _ in curve]
    fads = [f for _, f, _ in curve]
    lo, hi = min(fads), max(fads)
    span_s, span_f = max(1, steps[-1] - steps[0]), max(hi - lo, 1e-9)

    def xy(step, fad):
        return (left + round((step - steps[0]) / span_s * (right - left)),
                bottom - round((fad - lo) / span_f * (bottom - top)))
    img[bottom, left:right + 1] = img[top:bottom + 1, left] = (128, 128, 128)   # the axes
    points = [xy(s, f) for s, f, _ in curve]
    for a, b in zip(points, points[1:]):
        png.draw_line(img, a, b, (40, 90, 200), thick=1)
    for x, y in points:
        img[y - 3:y + 4, x - 3:x + 4] = (40, 90, 200)
    x_stop, _ = xy(*stop)
    img[top:bottom, x_stop] = (210, 40, 40)
    label = f"{stop[0]}"
    png.draw_number(img, label, min(x_stop + 5, width - 12 * len(label) - 2), 8, (210, 40, 40))
    write_atomically(path, lambda f: f.write(png.png_bytes(img)))


def run_curve(run_dir: str, out: str | None) -> None:
    import os
    curve = read_curve(run_dir)
    stop = early_stop(curve)
    out = out or os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir) or ".", "fad_curve.png")
    curve_png(curve, stop, out)
    print(f"\n### FAD against training steps ({run_dir})\n")
    print(markdown_table(["step", "held-out FAD", "CLAP score"],
                         [[s, f"{f:.4f}", f"{c:.4f}"] for s, f, c in curve]))
    print(f"\nEarly stop: step {stop[0]} (FAD {stop[1]:.4f}); curve written to {out}")
