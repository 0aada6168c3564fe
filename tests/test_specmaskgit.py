"""specmaskgit.py: sizes, the mask schedule, the masked loss, CFG dropout, and the sampler's guarantees."""

import math

import pytest
import torch

import specmaskgit as smg
from pictures.decoding_page import step_record
from ground.runtime import count_parameters

from conftest import small_model


def test_full_preset_size_and_logits_shape():
    model = smg.SpecMaskGIT(smg.PRESETS["full"])
    n = count_parameters(model)
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


def generate_with_order(model, cond, **options):
    """generate's tokens and the step that committed each position (-1 = known), read from on_step's
    `committed`, as pipeline.sample_tokens reads it."""
    grid = model.cfg.rows, model.cfg.cols
    order = {}

    def on_step(info):
        order.setdefault("steps", torch.full_like(info["committed"], -1, dtype=torch.long))
        order["steps"].masked_fill_(info["committed"], info["step"])
    tokens = smg.generate(model, cond, on_step=on_step, **options)
    return tokens, order["steps"].view(-1, *grid)


def test_known_positions_come_back_unchanged():
    model = small_model()
    known_tokens = torch.randint(0, 32, (2, 5, 8))
    known_mask = torch.zeros(2, 5, 8, dtype=torch.bool)
    known_mask[:, :, :3] = True
    known_mask[:, 4, :] = True
    out, order = generate_with_order(model, torch.randn(2, 16), steps=6, known_tokens=known_tokens,
                                     known_mask=known_mask, seed=0)
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
    _, order = generate_with_order(model, torch.randn(1, 16), steps=8, seed=0)
    counts = torch.bincount(order.flatten(), minlength=8)
    remaining = [40 - int(counts[:s + 1].sum()) for s in range(8)]
    assert remaining == [smg.mask_schedule(s, 8, 40) for s in range(8)]


def test_cfg_zero_does_not_depend_on_the_condition():
    model = small_model()
    a = smg.generate(model, torch.randn(2, 16), steps=4, guidance=0.0, seed=3)
    b = smg.generate(model, torch.randn(2, 16), steps=4, guidance=0.0, seed=3)
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
    out = smg.generate(model, class_vec[torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])], steps=8, guidance=3.0, seed=0)
    share = lambda rows, k: (out[rows] // 8 == k).float().mean().item()  # share of class k's codes
    first, second = slice(0, 4), slice(4, 8)
    assert share(first, 0) > 0.75 and share(second, 3) > 0.75, (share(first, 0), share(second, 3))
    assert share(first, 3) < 0.15 and share(second, 0) < 0.15          # and not the other class's


def test_without_the_cfg_ramp_the_first_step_is_already_guided():
    model = small_model()
    c1, c2 = torch.randn(2, 16), torch.randn(2, 16)
    # one step: the ramp's scale is 0 there (Eq. 2), so the prompt cannot matter; a constant scale uses it
    assert torch.equal(smg.generate(model, c1, steps=1, guidance=3.0, seed=0), smg.generate(model, c2, steps=1, guidance=3.0, seed=0))
    assert not torch.equal(smg.generate(model, c1, steps=1, guidance=3.0, seed=0, cfg_ramp=False),
                           smg.generate(model, c2, steps=1, guidance=3.0, seed=0, cfg_ramp=False))


# ---------------------------------------------------------------------------------------------------
# Each equation and choice of the method against an independent computation.
# ---------------------------------------------------------------------------------------------------

class Stub(torch.nn.Module):
    """A 'model' whose logits the test sets: l_u without the prompt, l_c with it (per position)."""

    def __init__(self, l_u, l_c=None, rows=1):
        super().__init__()
        n, K = l_u.shape
        self.cfg = smg.Config(n_codes=K, rows=rows, cols=n // rows, cond_dim=4)
        self.l_u, self.l_c = l_u, (l_u if l_c is None else l_c)
        self.weight = torch.nn.Parameter(torch.zeros(1))                  # generate() reads the device from it

    def forward(self, tokens, cond, mask, drop_cond=None):
        B = tokens.shape[0]
        out = self.l_u.expand(B, -1, -1).clone()
        if cond is not None:
            use = torch.ones(B, dtype=torch.bool) if drop_cond is None else ~drop_cond
            out[use] = self.l_c
        return out


def test_eq1_is_label_smoothed_cross_entropy_on_masked_positions_by_hand_in_float64():
    model = small_model()
    g = torch.Generator().manual_seed(1)
    tokens, cond = torch.randint(0, 32, (2, 5, 8), generator=g), torch.randn(2, 16, generator=g)
    mask = torch.rand(2, 5, 8, generator=g) < 0.4
    keep = torch.zeros(2, dtype=torch.bool)
    loss, _ = smg.masked_loss(model, tokens, cond, mask=mask, drop_cond=keep)
    with torch.no_grad():
        logits = model(tokens, cond, mask, keep).double()                     # (2, 40, 32)
    total, count, K, eps = 0.0, 0, 32, 0.1
    for b in range(2):
        for i in range(40):
            if not mask.view(2, 40)[b, i]:
                continue
            row = logits[b, i]
            logp = row - math.log(sum(math.exp(v) for v in row.tolist()))   # log-softmax by hand
            target = int(tokens.view(2, 40)[b, i])
            total += -(1 - eps) * logp[target].item() - eps / K * logp.sum().item()
            count += 1
    assert abs(loss.item() - total / count) < 1e-5


def test_cfg_drop_through_masked_loss_is_the_unconditional_loss():
    model = small_model()
    tokens, cond = torch.randint(0, 32, (4, 5, 8)), torch.randn(4, 16)
    mask = torch.rand(4, 5, 8) < 0.5
    mask[:, 0, 0] = True
    uncond, _ = smg.masked_loss(model, tokens, None, mask=mask)
    dropped, _ = smg.masked_loss(model, tokens, cond, mask=mask, drop_cond=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(dropped, uncond)
    losses = {}
    for rate in (0.0, 1.0):                                       # the drop drawn inside masked_loss at this rate
        model.cfg.cfg_dropout = rate
        losses[rate], _ = smg.masked_loss(model, tokens, cond, generator=torch.Generator().manual_seed(0), mask=mask)
    model.cfg.cfg_dropout = 0.1
    torch.testing.assert_close(losses[1.0], uncond)
    assert abs(losses[0.0].item() - uncond.item()) > 1e-4


def test_masked_positions_show_the_projected_clap_vector_or_mask_token():
    tokens = torch.randint(0, 32, (2, 5, 8))
    mask = torch.rand(2, 5, 8) < 0.5
    cond = torch.randn(2, 16)
    for flag in (True, False):
        model = small_model(conditional_mask=flag)
        with torch.no_grad():
            x = model.embed(tokens, cond, mask)[:, :40]                          # (2, 40, W) without the CLAP token
            pos = (model.row_emb + model.col_emb).reshape(1, 40, -1)
            fill = model.cond_proj(cond)[:, None] if flag else model.mask_emb.expand(2, 1, -1)
            shown = x - pos                                                      # what each position shows
        m = mask.view(2, 40)
        torch.testing.assert_close(shown[m], fill.expand(-1, 40, -1)[m])
        torch.testing.assert_close(shown[~m], model.tok_emb(tokens).view(2, 40, -1)[~m])


def test_eq2_guided_logits_and_the_ramp_recorded_per_step():
    g = torch.Generator().manual_seed(0)
    l_u, l_c = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    stub = Stub(l_u, l_c)
    tokens, masked, cond = torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.bool), torch.randn(2, 4)
    for t in (0.0, 0.5, 3.0):
        expected = l_u + t * (l_c - l_u)                                         # Eq. 2
        torch.testing.assert_close(smg.guided_logits(stub, tokens, cond, masked, t), expected.expand(2, -1, -1))
    record = []
    smg.generate(stub, cond, steps=5, guidance=3.0, temperature=1.5, on_step=lambda i: record.append(step_record(i)))
    assert [r["cfg_scale"] for r in record] == pytest.approx([3.0 * s / 4 for s in range(5)])
    assert [r["temperature"] for r in record] == pytest.approx([1.5 * (1 - (s + 1) / 5) for s in range(5)])
    record = []
    smg.generate(stub, cond, steps=5, guidance=3.0, cfg_ramp=False, on_step=lambda i: record.append(step_record(i)))
    assert [r["cfg_scale"] for r in record] == [3.0] * 5


def test_eq3_at_temperature_zero_the_least_probable_drawn_tokens_stay_masked():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 8, generator=g) * 3
    stub = Stub(logits, rows=5)
    record = []
    smg.generate(stub, None, steps=4, temperature=0.0, seed=5, batch_size=3, on_step=lambda i: record.append(step_record(i)))
    logp = logits.log_softmax(-1)
    first = record[0]
    p = logp.gather(1, first["belief"].T).T.exp()                               # (3, 40) p(drawn token)
    for b in range(3):
        kept, remasked = p[b][first["committed"][b]], p[b][first["masked"][b]]
        assert len(kept) == 40 - smg.mask_schedule(0, 4, 40) and kept.min() >= remasked.max()
        assert first["confidence"][b].item() == pytest.approx(kept.mean().item(), rel=1e-5)


def test_eq3_gumbel_temperature_is_annealed_before_it_is_used(monkeypatch):
    # drawn tokens have log p = -0.1, -0.2, -0.3, -0.4; only position 3 gets Gumbel noise (+1 x t_g): it is
    # the most confident at step 0 iff t_g > 0.3. With temperature 0.36, t_g = 0.36 (1 - 1/4) = 0.27 does not.
    K = 4
    target = torch.tensor([-0.1, -0.2, -0.3, -0.4])
    logits = torch.full((4, K), -30.0)
    logits[:, 0] = 0.0
    logits[:, 1] = torch.log(torch.expm1(-target))                              # p(code 0) = exp(target) exactly
    stub = Stub(logits)

    def noise(shape, generator, device):
        if len(shape) == 3:                                                      # the draw: take the argmax
            return torch.zeros(shape)
        return torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(shape)
    monkeypatch.setattr(smg, "gumbel", noise)
    for temperature, first in ((0.36, 0), (0.5, 3)):                             # t_g 0.27 vs 0.375
        record = []
        smg.generate(stub, None, steps=4, temperature=temperature, on_step=lambda i: record.append(step_record(i)))
        assert record[0]["committed"][0].nonzero().flatten().tolist() == [first], temperature


def test_categorical_draws_follow_the_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0]).expand(200, 3)                        # 3 codes, 200 positions
    stub = Stub(logits, rows=5)
    out = smg.generate(stub, None, steps=1, seed=0, batch_size=50)              # 10,000 draws
    counts = torch.bincount(out.flatten(), minlength=3).double()
    expected = torch.tensor([0.0, 1.0, 2.0]).softmax(0).double() * counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 13.8, (counts, expected)                                       # chi-square, 2 dof, p = 0.001


def test_maskgit_clamp_commits_one_token_per_step_with_16_unknown_in_16_steps():
    model = small_model()
    known_mask = torch.ones(2, 5, 8, dtype=torch.bool)
    known_mask[:, 4, :] = False                                                  # the top row: 8 unknown ...
    known_mask[0, 3, :] = False                                                  # ... and 16 in the first sample
    record = []
    smg.generate(model, torch.randn(2, 16), steps=16, known_tokens=torch.randint(0, 32, (2, 5, 8)),
                 known_mask=known_mask, seed=0, on_step=lambda i: record.append(step_record(i)))
    per_step = torch.stack([r["committed"].sum(1) for r in record])             # (steps run, 2)
    assert per_step[:, 0].tolist() == [1] * 16                                   # exactly one per step
    assert per_step[:8, 1].tolist() == [1] * 8 and per_step[8:, 1].sum() == 0   # each sample its own count
    # the clamp on its own: each step but the last keeps >= 1 masked and commits >= 1
    for u in (3, 16, 80, 265):
        left = smg.masked_counts([u], 16)[0]
        before = [u] + left[:-1]
        assert left[-1] == 0 and all(b - a >= 1 or b == 0 for b, a in zip(before, left))
        assert all(a >= 1 for b, a in zip(before[:-1], left[:-1]) if b >= 2)


def test_the_record_of_each_step_follows_its_contract():
    model = small_model()
    known_tokens = torch.randint(0, 32, (2, 5, 8))
    known_mask = torch.zeros(2, 5, 8, dtype=torch.bool)
    known_mask[:, :, :2] = True
    record = []
    out = smg.generate(model, torch.randn(2, 16), steps=6, known_tokens=known_tokens, known_mask=known_mask,
                       seed=0, on_step=lambda i: record.append(step_record(i)))
    assert [r["step"] for r in record] == list(range(6))
    was_masked = ~known_mask.view(2, 40)
    for r in record:
        assert r["committed"].shape == r["masked"].shape == r["known"].shape == r["belief"].shape == (2, 40)
        assert r["belief"].dtype == torch.long and r["n_masked"].tolist() == r["masked"].sum(1).tolist()
        assert torch.equal(r["known"], known_mask.view(2, 40))
        assert not (r["committed"] & r["masked"]).any() and torch.equal(r["committed"] | r["masked"], was_masked)
        was_masked = r["masked"]
    assert torch.equal(record[-1]["belief"], out.view(2, 40)) and not record[-1]["masked"].any()


def test_attention_is_bidirectional_and_the_clap_token_reaches_every_position():
    model = small_model(conditional_mask=False)
    tokens, cond = torch.randint(0, 32, (1, 5, 8)), torch.randn(1, 16)
    nothing = torch.zeros(1, 5, 8, dtype=torch.bool)
    later = tokens.clone()
    later[0, 4, 7] = (later[0, 4, 7] + 1) % 32                                   # the last token
    with torch.no_grad():
        base = model(tokens, cond, nothing)
        assert (base[0, 0] - model(later, cond, nothing)[0, 0]).abs().max() > 1e-4   # reaches the first position
        other = model(tokens, torch.randn(1, 16), nothing)                       # only the CLAP token differs
    assert ((base - other).abs().amax(-1) > 1e-5).all()


def test_initialisation_is_mae_like():
    model = small_model()
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.004                 # N(0, 0.02), not N(0, 1)
    for lin in (model.blocks[0].attn.qkv, model.blocks[0].mlp[0], model.head):
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))                                # Xavier-uniform's bound
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
        assert not lin.bias.any()


def test_token_ids_outside_the_codebook_are_an_error():
    model = small_model()
    bad = torch.randint(0, 32, (1, 5, 8))
    bad[0, 0, 0] = 32
    with pytest.raises(IndexError):
        model(bad, None, torch.zeros(1, 5, 8, dtype=torch.bool))                # no silent clamp in embed
    some_known = torch.ones(1, 5, 8, dtype=torch.bool)
    some_known[0, 4, 7] = False
    with pytest.raises(IndexError):                                             # nor in generate's known tokens
        smg.generate(model, None, steps=2, known_tokens=bad, known_mask=some_known)
    bad[0, 0, 0] = -1                                                            # an unknown position may hold anything
    mask = torch.ones(1, 5, 8, dtype=torch.bool)
    mask[0, 0, 0] = False
    out = smg.generate(model, None, steps=2, known_tokens=bad, known_mask=mask)
    assert 0 <= out[0, 0, 0] < 32


def test_the_mask_weighted_loss_equals_the_mean_over_the_selected_positions_with_its_gradient():
    """masked_loss weights every position by the mask instead of selecting the masked ones by a boolean
    index (which makes a GPU wait): the loss, the accuracy and the gradient are those of the selection."""
    model = small_model()
    tokens, cond = torch.randint(0, 32, (3, 5, 8)), torch.randn(3, 16)
    mask = torch.rand(3, 5, 8) < 0.4
    mask[:, 0, 0] = True
    keep = torch.zeros(3, dtype=torch.bool)
    loss, acc = smg.masked_loss(model, tokens, cond, mask=mask, drop_cond=keep)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    flat = mask.view(3, -1)
    logits = model(tokens, cond, mask, keep)[flat].float()                   # the selection, as written before
    target = tokens.view(3, -1)[flat]
    expected = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(acc, (logits.argmax(-1) == target).float().mean())
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad)
