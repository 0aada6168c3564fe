"""
pictures/scale_curve.py — what scale buys: how the judges hear generated clips as the transformer trains
longer, on two tokenizers (RESULTS.md, "What scale buys").

Not a figure of the paper: the paper trains for 250k steps on GPUs; a CPU reader wants to know how much of
that the toy world needs, and where more time stops helping.

In:  checkpoints/scale_curve.csv, one row per point and sampling seed: the tokenizer ("16" or "8": frames
     per token), the transformer's budget (times the classroom recipe's transformer time), the seed, the
     three judges' scores of generated clips (%) and the median beat spread of generated clocks and footsteps
Out: checkpoints/scale_curve.png: x = budget (1, 2, 4, 8 on a doubling axis), y = 0-100 %; the mel judge
     in blue, the pitch-and-MFCC judge in orange, the mean of the seeds as a dot with a bar from the lowest
     seed to the highest; 8-frame tokens joined by thick lines, 16-frame ones by thin; the grey line is 80 %
Run: python -m pictures.scale_curve
"""

import csv
import math
import os

import numpy as np

from ground.runtime import write_atomically
from pictures import png

CSV = os.path.join("checkpoints", "scale_curve.csv")
WIDTH, HEIGHT, MARGIN = 560, 320, 40
MAX_DOUBLINGS = 4                                   # the x axis runs from 1x to 2^4 = 16x
COLOURS = {"mel": (40, 90, 200), "pitch": (230, 120, 20)}
TARGET = 80.0                                       # the share the bundle is meant to reach by both judges


def read_points(path: str = CSV) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (v if k == "tokenizer" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def seed_summary(points: list[dict], judge: str) -> dict:
    """{(tokenizer, budget): (mean, lowest, highest)} of a judge's score over the seeds of each point."""
    by_point = {}
    for p in points:
        by_point.setdefault((p["tokenizer"], p["budget"]), []).append(p[judge])
    return {key: (sum(v) / len(v), min(v), max(v)) for key, v in sorted(by_point.items())}


def position(budget: float, percent: float) -> tuple[int, int]:
    """The pixel (x, y) of a budget (doubling axis from 1x) and a score (0 % at the bottom)."""
    x = MARGIN + round(math.log2(budget) / MAX_DOUBLINGS * (WIDTH - 2 * MARGIN))
    y = HEIGHT - MARGIN - round(percent / 100 * (HEIGHT - 2 * MARGIN))
    return x, y


def draw(points: list[dict]) -> np.ndarray:
    """The picture as (HEIGHT, WIDTH, 3) uint8."""
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    grey = (150, 150, 150)
    x0, y0 = position(1, 0)
    img[y0, x0:WIDTH - MARGIN + 1] = img[MARGIN:y0 + 1, x0] = grey                          # the axes
    img[position(1, TARGET)[1], x0:WIDTH - MARGIN + 1:3] = grey                              # 80 %, dotted
    for k in range(MAX_DOUBLINGS + 1):                                                       # 1 2 4 8 16
        x, _ = position(2 ** k, 0)
        png.draw_number(img, str(2 ** k), x - 4, y0 + 8, grey, scale=2)
    for pct in (0, 50, 100):
        png.draw_number(img, str(pct), 4, position(1, pct)[1] - 5, grey, scale=2)
    for judge, colour in COLOURS.items():
        summary = seed_summary(points, judge)
        for tokenizer in sorted({t for t, _ in summary}):
            row = [(b, s) for (t, b), s in summary.items() if t == tokenizer]
            thick = 2 if tokenizer == "8" else 0
            for (b0, s0), (b1, s1) in zip(row, row[1:]):
                png.draw_line(img, position(b0, s0[0]), position(b1, s1[0]), colour, thick)
            for b, (mean, lo, hi) in row:
                x, y = position(b, mean)
                img[position(b, hi)[1]:position(b, lo)[1] + 1, x - 1:x + 2] = colour      # the seeds' range
                img[y - 4:y + 5, x - 4:x + 5] = colour
    return img


def main() -> None:
    out = os.path.splitext(CSV)[0] + ".png"
    write_atomically(out, lambda f: f.write(png.png_bytes(draw(read_points()))))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
