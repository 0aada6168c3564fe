"""specmaskgit.py: sizes, the mask schedule, the masked loss, CFG dropout, and the sampler's guarantees."""

import math

import pytest
import torch

import specmaskgit as smg

SMALL = smg.Config(n_layers=2, width=64, n_heads=4, mlp=128, n_codes=32, rows=5, cols=8, cond_dim=16)


def small_model(seed=0, **changes):
    torch.manual_seed(seed)
    cfg = smg.Config(**{**SMALL.__dict__, **changes})
    return smg.SpecMaskGIT(cfg).eval()


def test_full_preset_size_and_logits_shape():
    model = smg.SpecMaskGIT(smg.PRESETS["full"])
    n = smg.count_parameters(model)
    assert 160e6 <= n <= 180e6, n
    with torch.no_grad():
        logits = model(torch.randint(0, 1024, (2, 5, 53)), torch.randn(2, 512), torch.rand(2, 5, 53) < 0.5)
    assert logits.shape == (2, 265, 1024)


def test_cosine_schedule_is_non_increasing_ends_at_zero_and_matches_the_formula():
    counts = [smg.mask_schedule(s, 16, 265) for s in range(16)]
    assert counts == [math.floor(265 * math.cos(math.pi / 2 * (s + 1) / 16)) for s in range(16)]
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[-1] == 0
    for kind in ("linear", "sqrt"):
        other = [smg.mask_schedule(s, 16, 265, kind) for s in range(16)]
        assert all(a >= b for a, b in zip(other, other[1:])) and other[-1] == 0


def test_training_mask_ratio_is_a_truncated_gaussian_with_at_least_one_token():
    g = torch.Generator().manual_seed(0)
    masks = smg.sample_mask(4000, 80, smg.Config(), generator=g)
    ratios = masks.float().mean(1)
    assert masks.sum(1).min() >= 1 and ratios.max() <= 1
    # the mean of N(0.55, 0.25) truncated to (0, 1]: computed with the closed form of a truncated normal
    a, b = (0 - 0.55) / 0.25, (1 - 0.55) / 0.25
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    expected = 0.55 + 0.25 * (phi(a) - phi(b)) / (Phi(b) - Phi(a))
    assert abs(ratios.mean().item() - expected) < 0.02


def test_loss_ignores_the_targets_of_unmasked_positions():
    model = small_model()
    tokens = torch.randint(0, 32, (3, 5, 8))
    cond = torch.randn(3, 16)
    mask = torch.rand(3, 5, 8) < 0.5
    mask[:, 0, 0] = True
    no_drop = torch.zeros(3, dtype=torch.bool)
    loss_a, _ = smg.masked_loss(model, tokens, cond, mask=mask, drop_cond=no_drop)
    logits = model(tokens, cond, mask, no_drop)
    expected = torch.nn.functional.cross_entropy(logits[mask.view(3, -1)], tokens.view(3, -1)[mask.view(3, -1)],
                                                 label_smoothing=0.1)
    torch.testing.assert_close(loss_a, expected)
    # a cross-entropy over the masked positions only: targets elsewhere do not enter it
    other = tokens.clone()
    other[~mask] = (other[~mask] + 1) % 32
    picked = logits[mask.view(3, -1)]
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(picked, other.view(3, -1)[mask.view(3, -1)], label_smoothing=0.1), expected)


def test_masked_positions_do_not_see_their_token():
    model = small_model()
    tokens = torch.randint(0, 32, (2, 5, 8))
    mask = torch.zeros(2, 5, 8, dtype=torch.bool)
    mask[:, 2, 3] = True
    changed = tokens.clone()
    changed[:, 2, 3] = (changed[:, 2, 3] + 5) % 32
    cond = torch.randn(2, 16)
    torch.testing.assert_close(model(tokens, cond, mask), model(changed, cond, mask))


def test_cfg_dropout_replaces_the_condition_everywhere_by_the_mask_embedding():
    model = small_model()
    tokens = torch.randint(0, 32, (2, 5, 8))
    mask = torch.rand(2, 5, 8) < 0.5
    drop = torch.tensor([True, False])
    x = model.embed(tokens, torch.randn(2, 16), mask, drop_cond=drop)
    torch.testing.assert_close(x[0], model.embed(tokens, None, mask)[0])       # dropped = unconditional
    torch.testing.assert_close(x[0, -1], model.mask_emb + model.cond_pos)      # the CLAP token became [M]
    masked = mask[0].flatten().nonzero()[:, 0]
    torch.testing.assert_close(x[0, masked] - x[0, masked].mean(0) * 0, x[0, masked])
    assert not torch.allclose(x[1], model.embed(tokens, None, mask)[1])         # the kept sample still conditions
    # and during training about cfg_dropout of the samples are dropped
    g = torch.Generator().manual_seed(0)
    assert abs((torch.rand(20000, generator=g) < smg.Config().cfg_dropout).float().mean().item() - 0.1) < 0.01


def test_conditional_mask_shows_the_condition_at_masked_positions():
    tokens = torch.randint(0, 32, (1, 5, 8))
    mask = torch.zeros(1, 5, 8, dtype=torch.bool)
    mask[0, 1, 2] = True
    cond = torch.randn(1, 16)
    for flag in (True, False):
        model = small_model(conditional_mask=flag)
        x = model.embed(tokens, cond, mask)                                      # (1, 41, W)
        pos = model.row_emb[1, 0] + model.col_emb[0, 2]
        shown = model.cond_proj(cond)[0] if flag else model.mask_emb            # Sec. 3.3: "C" instead of [M]
        torch.testing.assert_close(x[0, 1 * 8 + 2], shown + pos)
        torch.testing.assert_close(x[0, -1], model.cond_proj(cond)[0] + model.cond_pos)   # the CLAP token


def test_known_positions_come_back_unchanged():
    model = small_model()
    known_tokens = torch.randint(0, 32, (2, 5, 8))
    known_mask = torch.zeros(2, 5, 8, dtype=torch.bool)
    known_mask[:, :, :3] = True
    known_mask[:, 4, :] = True
    out, order = smg.generate(model, torch.randn(2, 16), steps=6, known_tokens=known_tokens, known_mask=known_mask,
                              seed=0, record_order=True)
    assert torch.equal(out[known_mask], known_tokens[known_mask])
    assert (order[known_mask] == -1).all() and (order[~known_mask] >= 0).all()


def test_all_known_returns_the_input():
    model = small_model()
    tokens = torch.randint(0, 32, (2, 5, 8))
    out = smg.generate(model, torch.randn(2, 16), steps=4, known_tokens=tokens,
                       known_mask=torch.ones(2, 5, 8, dtype=torch.bool), seed=0)
    assert torch.equal(out, tokens)


def test_same_seed_same_output_different_seed_different_output():
    model = small_model()
    cond = torch.randn(2, 16)
    a = smg.generate(model, cond, steps=4, seed=1)
    assert torch.equal(a, smg.generate(model, cond, steps=4, seed=1))
    assert not torch.equal(a, smg.generate(model, cond, steps=4, seed=2))


def test_every_position_is_committed_on_the_schedule():
    model = small_model()
    _, order = smg.generate(model, torch.randn(1, 16), steps=8, seed=0, record_order=True)
    counts = torch.bincount(order.flatten(), minlength=8)
    remaining = [40 - int(counts[:s + 1].sum()) for s in range(8)]
    assert remaining == [smg.mask_schedule(s, 8, 40) for s in range(8)]


def test_cfg_zero_does_not_depend_on_the_condition():
    model = small_model()
    a = smg.generate(model, torch.randn(2, 16), steps=4, cfg=0.0, seed=3)
    b = smg.generate(model, torch.randn(2, 16), steps=4, cfg=0.0, seed=3)
    assert torch.equal(a, b)


def class_grids(labels, cfg, generator):
    """Synthetic 'spectrogram' grids: class k uses codes [8k, 8k + 8) in a fixed row pattern, plus noise."""
    B = len(labels)
    base = (torch.arange(cfg.rows)[:, None] + torch.arange(cfg.cols)[None, :]) % 4            # (R, C)
    grids = labels[:, None, None] * 8 + base[None] * 2 + torch.randint(0, 2, (B, cfg.rows, cfg.cols), generator=generator)
    return grids


def test_a_tiny_model_learns_class_conditional_grids():
    torch.manual_seed(0)
    cfg = smg.Config(n_layers=2, width=64, n_heads=4, mlp=128, n_codes=32, rows=5, cols=8, cond_dim=16, cfg_dropout=0.1)
    trainer = smg.Trainer(cfg, lr=3e-3)
    class_vec = torch.randn(4, 16)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(250):
        labels = torch.randint(0, 4, (32,), generator=g)
        m = trainer.step({"tokens": class_grids(labels, cfg, g), "cond": class_vec[labels]}, step)
        losses.append(m["loss"])
    assert sum(losses[-20:]) / 20 < 0.5 * math.log(32), losses[-20:]
    model = trainer.model.eval()
    out = smg.generate(model, class_vec[torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])], steps=8, cfg=3.0, seed=0)
    share = lambda rows, k: (out[rows] // 8 == k).float().mean().item()  # share of class k's codes
    first, second = slice(0, 4), slice(4, 8)
    assert share(first, 0) > 0.75 and share(second, 3) > 0.75, (share(first, 0), share(second, 3))
    assert share(first, 3) < 0.15 and share(second, 0) < 0.15          # and not the other class's


def test_without_the_cfg_ramp_the_first_step_is_already_guided():
    model = small_model()
    c1, c2 = torch.randn(2, 16), torch.randn(2, 16)
    # one step: the ramp's scale is 0 there (Eq. 2), so the prompt cannot matter; a constant scale uses it
    assert torch.equal(smg.generate(model, c1, steps=1, cfg=3.0, seed=0), smg.generate(model, c2, steps=1, cfg=3.0, seed=0))
    assert not torch.equal(smg.generate(model, c1, steps=1, cfg=3.0, seed=0, cfg_ramp=False),
                           smg.generate(model, c2, steps=1, cfg=3.0, seed=0, cfg_ramp=False))


def test_masked_loss_reads_the_config_through_a_ddp_style_wrapper():
    class Wrapper(torch.nn.Module):                       # what DistributedDataParallel looks like: .module, no .cfg
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    model = small_model()
    tokens, cond = torch.randint(0, 32, (2, 5, 8)), torch.randn(2, 16)
    mask = torch.rand(2, 5, 8) < 0.5
    mask[:, 0, 0] = True
    keep = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(smg.masked_loss(Wrapper(model), tokens, cond, mask=mask, drop_cond=keep)[0],
                               smg.masked_loss(model, tokens, cond, mask=mask, drop_cond=keep)[0])
