"""pictures/scale_curve.py: the picture of what scale buys, from checkpoints/scale_curve.csv.

What would fail here: a mean over the wrong seeds, a point drawn at another budget or score than its
own, a seed range that does not reach the lowest and highest seed.
"""

import numpy as np

from pictures import scale_curve


def points(tokenizer, budget, mels, pitches):
    return [{"tokenizer": tokenizer, "budget": budget, "seed": s, "mel": m, "pitch": p}
            for s, (m, p) in enumerate(zip(mels, pitches))]


ROWS = points("8", 1, [50, 60, 70], [20, 30, 40]) + points("8", 4, [80, 82, 90], [60, 61, 65]) + \
       points("16", 2, [66, 66, 69], [45, 47, 49])


def test_seed_summary_is_the_mean_lowest_and_highest_of_each_points_seeds():
    assert scale_curve.seed_summary(ROWS, "mel") == {("16", 2): (67.0, 66, 69), ("8", 1): (60.0, 50, 70),
                                                     ("8", 4): (84.0, 80, 90)}


def test_each_point_is_drawn_at_its_budget_and_mean_with_its_seeds_range():
    img = scale_curve.draw(ROWS)
    assert img.shape == (scale_curve.HEIGHT, scale_curve.WIDTH, 3)
    for (tokenizer, budget), (mean, lo, hi) in scale_curve.seed_summary(ROWS, "mel").items():
        x, y = scale_curve.position(budget, mean)
        assert tuple(img[y, x]) == scale_curve.COLOURS["mel"]
        assert tuple(img[scale_curve.position(budget, hi)[1], x]) == scale_curve.COLOURS["mel"]
        assert tuple(img[scale_curve.position(budget, lo)[1], x]) == scale_curve.COLOURS["mel"]
    x, y = scale_curve.position(1, 30)                                   # the pitch judge's mean at 1x
    assert tuple(img[y, x]) == scale_curve.COLOURS["pitch"]
    x8, _ = scale_curve.position(8, 0)                                   # nothing at 8x: no point there
    assert not (img[:, x8 - 1:x8 + 2] == np.array(scale_curve.COLOURS["mel"])).all(-1).any()


def test_the_doubling_axis():
    left, bottom = scale_curve.position(1, 0)
    right, top = scale_curve.position(2 ** scale_curve.MAX_DOUBLINGS, 100)
    assert (left, right, top, bottom) == (scale_curve.MARGIN, scale_curve.WIDTH - scale_curve.MARGIN,
                                          scale_curve.MARGIN, scale_curve.HEIGHT - scale_curve.MARGIN)
    assert scale_curve.position(4, 0)[0] - scale_curve.position(2, 0)[0] == \
        scale_curve.position(2, 0)[0] - scale_curve.position(1, 0)[0]
