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

from evaluation.clips import markdown_table
from ground.runtime import UserError
from pictures import png


# ---------------------------------------------------------------------------------------------------
# Fig. 8: FAD against training steps (train.py --eval-every), and the early-stop step.
# ---------------------------------------------------------------------------------------------------

def read_curve(path: str) -> list[tuple[int, float, float]]:
    """(step, FAD, CLAP score) of every --eval-every row in a run folder's transformer.log.jsonl (or that file)."""
    import json
    import os
    log = os.path.join(path, "transformer.log.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(log):
        raise UserError(f"{log} does not exist: train the transformer with --eval-every N into {path} first.")
    curve = {}
    with open(log) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue                                                       # a line cut by a killed run
            if isinstance(row, dict) and "eval_fad" in row:
                curve[int(row["step"])] = (float(row["eval_fad"]), float(row.get("eval_clap_score", float("nan"))))
    if len(curve) < 2:
        raise UserError(f"{log} holds {len(curve)} held-out evaluation(s); a curve needs two (train with --eval-every).")
    return [(s, fad, score) for s, (fad, score) in sorted(curve.items())]   # a resumed run's rows replace the old


def early_stop(curve) -> tuple[int, float]:
    """The step of the lowest FAD (the earliest one on a tie): where Fig. 8's argument stops training."""
    step, fad, _ = min(curve, key=lambda row: (row[1], row[0]))
    return step, fad


DIGITS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
          "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111"]   # 3 x 5


def draw_number(img, text: str, x: int, y: int, colour, scale: int = 3) -> None:
    """Write the digits (and '.') of `text` into the (H, W, 3) image with its top-left corner at (x, y)."""
    for ch in text:
        if ch == ".":
            img[y + 4 * scale:y + 5 * scale, x:x + scale] = colour
            x += 2 * scale
            continue
        bits = DIGITS[int(ch)]
        for k, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(k, 3)
                img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = colour
        x += 4 * scale


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
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        for t in np.linspace(0, 1, 2 * max(abs(x1 - x0), abs(y1 - y0)) + 2):
            x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
            img[y - 1:y + 2, x - 1:x + 2] = (40, 90, 200)
    for x, y in points:
        img[y - 3:y + 4, x - 3:x + 4] = (40, 90, 200)
    x_stop, _ = xy(*stop)
    img[top:bottom, x_stop] = (210, 40, 40)
    label = f"{stop[0]}"
    draw_number(img, label, min(x_stop + 5, width - 12 * len(label) - 2), 8, (210, 40, 40))
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
