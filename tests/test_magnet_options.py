"""magnet.generate honours each of its options the way MAGNeT describes it: the rescorer's weight moves the
commit order, top-p removes the tail of the draw, span scoring by max and by prod choose different spans, each
row's phase commits its scheduled count low band first, the hybrid prefix's guidance falls with the masked
share, and the restricted context lets the prompt through. A fixed-logit model makes every expected
value computable by hand."""

import math

import torch

import magnet
from conftest import SMALL


class FixedLogits(torch.nn.Module):
    """A stand-in transformer whose logits (n, K) are the same for every input, with and without the
    prompt: guidance leaves them as they are, and every probability is known in advance."""

    def __init__(self, logits):
        super().__init__()
        self.cfg, self.logits = SMALL, logits
        self.anchor = torch.nn.Parameter(torch.zeros(1))                  # generate reads the device from a weight

    def forward(self, tokens, cond, mask, drop_cond=None, attn_mask=None):
        return self.logits.expand(tokens.shape[0], -1, -1).clone()


N, K = SMALL.rows * SMALL.cols, SMALL.n_codes


def peaked(heights):
    """(N, K) logits where position i prefers token i % K by heights[i] over every other token (logit 0)."""
    logits = torch.zeros(N, K)
    logits[torch.arange(N), torch.arange(N) % K] = heights
    return logits


def p_of_peak(heights, temperature):
    """The probability of the preferred token at a temperature: e^(h/T) / (e^(h/T) + K - 1)."""
    e = torch.exp(heights / temperature)
    return e / (e + K - 1)


def first_step(model, **options):
    steps = []
    magnet.generate(model, torch.zeros(1, 16), span_len=1, seed=0, on_step=steps.append, **options)
    return steps


def test_the_rescorers_weight_moves_the_commit_order_as_its_mix_says():
    g = torch.Generator().manual_seed(0)
    own, external = 2 + 4 * torch.rand(N, generator=g), 2 + 4 * torch.rand(N, generator=g)   # two rankings
    model, rescorer = FixedLogits(peaked(own)), FixedLogits(peaked(external))
    S = 4
    T = 3.0 * (S - 1) / S                                                     # MAGNeT's temperature at step 0
    kept = math.floor(math.cos(math.pi / 2 / (S - 1)) * N)                    # spans still masked after step 0
    committed_sets = []
    for weight in (0.0, 0.7, 1.0):
        steps = first_step(model, row_steps=(S,), top_p=0.01, rescorer=rescorer, rescore_weight=weight)
        committed = steps[0]["committed"][0]
        conf = weight * p_of_peak(external, T) + (1 - weight) * p_of_peak(own, T)
        expected = torch.zeros(N, dtype=torch.bool)
        expected[conf.argsort(descending=True)[:N - kept]] = True             # the most confident are kept
        assert torch.equal(committed, expected), weight
        committed_sets.append(committed)
    assert not torch.equal(committed_sets[0], committed_sets[2])             # the weight did move the order


def test_top_p_never_draws_from_the_tail_and_without_it_the_tail_is_drawn():
    logits = torch.zeros(N, K)
    logits[:, :4] = torch.tensor([3.0, 2.5, 2.0, 1.0])                        # a head of 4, a flat tail of K - 4
    T = 3.0 * (2 - 1) / 2                                                     # step 0 of 2
    probs = torch.softmax(logits[0] / T, -1)
    ordered = probs.sort(descending=True)
    mass_before = ordered.values.cumsum(0) - ordered.values
    nucleus = set(ordered.indices[mass_before < 0.9].tolist())               # the smallest set reaching 0.9
    assert 1 < len(nucleus) < K
    model = FixedLogits(logits)
    drawn = []
    for top_p in (0.9, 1.0):
        tokens = []
        for seed in range(4):
            steps = []
            magnet.generate(model, torch.zeros(8, 16), row_steps=(2,), span_len=1, top_p=top_p, seed=seed,
                            on_step=steps.append)
            tokens += steps[0]["belief"].flatten().tolist()                  # every position drew at step 0
        drawn.append(set(tokens))
    assert drawn[0] <= nucleus and len(drawn[0]) == len(nucleus)
    assert drawn[1] - nucleus                                                 # the tail, drawn when kept


def test_span_scoring_by_max_and_by_prod_commit_the_spans_their_scores_rank_first():
    # spans of 2 in each row: one span of a sure and an unsure token, another of two fairly sure ones
    g = torch.Generator().manual_seed(1)
    heights = 1 + 6 * torch.rand(N, generator=g)
    model = FixedLogits(peaked(heights))
    S, T = 3, 3.0 * 2 / 3
    p = p_of_peak(heights, T)
    ids = magnet.span_ids(SMALL.rows, SMALL.cols, 2)
    n_spans = int(ids.max()) + 1
    kept = math.floor(math.cos(math.pi / 2 / (S - 1)) * n_spans)
    chosen = {}
    for scoring in ("max", "prod"):
        steps = []
        magnet.generate(model, torch.zeros(1, 16), row_steps=(S,), span_len=2, scoring=scoring, top_p=0.01, seed=0,
                        on_step=steps.append)
        if scoring == "max":
            score = torch.tensor([p[ids == j].max() for j in range(n_spans)])
        else:
            score = torch.tensor([p[ids == j].log().sum() for j in range(n_spans)])
        committed_spans = score.argsort(descending=True)[:n_spans - kept]
        expected = torch.isin(ids, committed_spans)
        assert torch.equal(steps[0]["committed"][0], expected), scoring
        chosen[scoring] = expected
    assert not torch.equal(chosen["max"], chosen["prod"])


def test_each_rows_phase_commits_its_scheduled_count_low_band_first():
    model = FixedLogits(peaked(1 + 6 * torch.rand(N, generator=torch.Generator().manual_seed(2))))
    row_steps = (3, 2, 2, 1, 2)
    steps = []
    magnet.generate(model, torch.zeros(2, 16), row_steps=row_steps, span_len=1, seed=0, on_step=steps.append)
    assert len(steps) == sum(row_steps)
    row_of = torch.arange(N) // SMALL.cols
    i = 0
    for row, S in enumerate(row_steps):
        masked = SMALL.cols                                                   # spans of one column: C per row
        for s in range(S):
            after = 0 if s == S - 1 else max(1, math.floor(math.cos(math.pi / 2 * (s + 1) / (S - 1)) * SMALL.cols))
            committed = steps[i]["committed"]                                 # (B, n)
            assert not committed[:, row_of != row].any(), (row, s)            # only this row's positions
            assert (committed.sum(1) == masked - after).all(), (row, s)
            masked, i = after, i + 1


def test_the_hybrid_prefixs_guidance_falls_with_the_share_still_masked():
    model = FixedLogits(peaked(torch.full((N,), 3.0)))
    steps = []
    magnet.generate(model, torch.zeros(1, 16), row_steps=(2,), span_len=1, prefix_cols=3, guidance=(10.0, 1.0),
                    seed=0, on_step=steps.append)
    for col in range(3):
        gamma = (N - col * SMALL.rows) / N                                    # columns before it are decided
        assert abs(steps[col]["cfg_scale"] - (10 * gamma + 1 * (1 - gamma))) < 1e-5
        assert steps[col]["committed"][0].view(SMALL.rows, SMALL.cols)[:, col].all()
        assert steps[col]["committed"][0].sum() == SMALL.rows


def test_a_restricted_context_still_lets_the_prompt_reach_every_position():
    from conftest import small_model
    model = small_model()
    tokens = torch.randint(0, K, (1, SMALL.rows, SMALL.cols), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    band = magnet.context_mask(SMALL.rows, SMALL.cols, 0)
    a = model(tokens, torch.randn(1, 16, generator=torch.Generator().manual_seed(4)), mask, attn_mask=band)
    b = model(tokens, torch.randn(1, 16, generator=torch.Generator().manual_seed(5)), mask, attn_mask=band)
    assert ((a - b).abs().amax(-1) > 1e-4).all()                             # every position hears the prompt
