"""evaluation/metrics.py: ROC-AUC, average precision and the Inception Score against computations done by hand."""

import math

import pytest
import torch

from evaluation import metrics
from ground.runtime import UserError


def test_roc_auc_counts_the_pairs_a_positive_wins_by_hand():
    # positives score 0.9, 0.4; negatives 0.8, 0.3, 0.1. Pairs won: 0.9 beats all 3, 0.4 beats 0.3 and 0.1:
    # 5 of 2 x 3 = 6 pairs.
    scores = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 0])
    assert metrics.roc_auc(scores, labels) == pytest.approx(5 / 6)


def test_roc_auc_counts_a_tie_as_half_a_pair():
    # the positive 0.5 ties the negative 0.5 (half a pair) and beats 0.2: 1.5 of 2 pairs
    assert metrics.roc_auc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.75)
    # every score equal: no information, exactly one half
    assert metrics.roc_auc(torch.zeros(6), torch.tensor([1, 0, 1, 0, 0, 1])) == pytest.approx(0.5)


def test_roc_auc_of_a_perfect_and_a_reversed_ranking():
    labels = torch.tensor([0, 0, 1, 1, 1])
    up = torch.arange(5.0)
    assert metrics.roc_auc(up, labels) == 1.0 and metrics.roc_auc(-up, labels) == 0.0


def test_average_precision_by_hand():
    # ranked: pos, neg, pos, neg, neg -> precision at the positives 1/1 and 2/3: AP = (1 + 2/3) / 2
    scores = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 0])
    assert metrics.average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)
    # a tie of a positive and a negative at the top is one threshold: precision 1/2 there, recall 1/2;
    # then the second positive alone at 2/3: AP = 1/2 x 1/2 + 1/2 x 2/3
    tied = torch.tensor([0.9, 0.9, 0.4, 0.1])
    assert metrics.average_precision(tied, torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_average_precision_of_random_scores_is_near_the_share_of_positives():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(20000, generator=g) < 0.2).long()
    assert metrics.average_precision(torch.rand(20000, generator=g), labels) == pytest.approx(0.2, abs=0.01)


def test_tagging_scores_average_over_the_tags_that_have_both_classes():
    # 7 clips x 4 tags with 2, 5, 7 and 0 positives: tags 0 and 1 have both classes. The shape is lopsided so
    # that a filter on the wrong axis (fewer positives than *tags*, 4, drops tag 1; rows instead of columns
    # keeps other tags) or a mean over all 4 tags gives another number.
    scores = torch.tensor([[0.9, 0.35, 0.5, 0.1], [0.8, 0.75, 0.5, 0.2], [0.7, 0.65, 0.5, 0.3],
                           [0.6, 0.15, 0.5, 0.4], [0.5, 0.55, 0.5, 0.5], [0.4, 0.45, 0.5, 0.6],
                           [0.3, 0.25, 0.5, 0.7]])
    labels = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0],
                           [0, 1, 1, 0]])                                       # tag 2: all positive; tag 3: none
    got = metrics.tagging_scores(scores, labels)
    assert got["tags"] == 2
    # tag 0: positives 0.9 and 0.6 against 0.8, 0.7, 0.5, 0.4, 0.3: 0.9 wins 5 pairs, 0.6 wins 3: 8 of 2 x 5.
    # tag 1: positives 0.75, 0.55, 0.35, 0.25, 0.15 against 0.65, 0.45: 2 + 1 + 0 + 0 + 0 = 3 of 5 x 2.
    assert got["roc_auc"] == pytest.approx((8 / 10 + 3 / 10) / 2)
    # tag 0 ranked +, -, -, +, ...: precision 1/1 and 2/4. tag 1 ranked 0.75 +, 0.65 -, 0.55 +, 0.45 -, then
    # 0.35 +, 0.25 +, 0.15 +: precision 1/1, 2/3, 3/5, 4/6, 5/7 at its five positives.
    ap0, ap1 = (1 + 2 / 4) / 2, (1 + 2 / 3 + 3 / 5 + 4 / 6 + 5 / 7) / 5
    assert got["map"] == pytest.approx((ap0 + ap1) / 2)
    with pytest.raises(UserError):
        metrics.tagging_scores(scores, torch.ones(7, 4))


def test_inception_score_is_one_for_uniform_and_k_for_confident_distinct_predictions():
    assert metrics.inception_score(torch.full((10, 4), 0.25)) == pytest.approx(1.0)
    assert metrics.inception_score(torch.eye(4).repeat(3, 1)) == pytest.approx(4.0, rel=1e-6)
    # every clip confidently the same class: the set covers one class, IS 1
    assert metrics.inception_score(torch.eye(4)[[2] * 8]) == pytest.approx(1.0, rel=1e-6)


def test_inception_score_by_hand_for_two_clips():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    kl0 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl1 = 1.0 * math.log(1.0 / 0.75)
    assert metrics.inception_score(p) == pytest.approx(math.exp((kl0 + kl1) / 2), rel=1e-6)
