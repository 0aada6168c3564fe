"""magnet.py: MAGNeT's span masks, schedules, top-p, span scoring, rescoring, restricted context and sampler,
each against an independent computation (tiny models, fp32)."""

import dataclasses
import itertools
import math

import torch

import magnet
import specmaskgit
from ground.runtime import config_from_dict

TINY = specmaskgit.PRESETS["tiny"]
SMALL = dataclasses.replace(TINY, n_layers=2, width=64, n_heads=4, mlp=128, n_codes=32)


def runs_per_row(mask_rows):
    """Lengths of the maximal runs of True in each row of a (R, C) bool tensor."""
    out = []
    for row in mask_rows.tolist():
        out += [len(list(g)) for v, g in itertools.groupby(row) if v]
    return out


def test_span_masks_hit_the_sampled_ratio_on_average():
    g = torch.Generator().manual_seed(0)
    for ratio in (0.2, 0.55, 0.85):
        cfg = dataclasses.replace(TINY, span_len=3, mask_mean=ratio, mask_std=1e-6)   # every ratio ~ `ratio`
        m = magnet.span_mask(4000, cfg.rows * cfg.cols, cfg, g)
        assert abs(m.float().mean().item() - ratio) < 0.01


def test_expected_masked_share_equals_enumeration_of_all_start_sets():
    R, C, L = 2, 5, 2
    places = [(r, j) for r in range(R) for j in range(C - L + 1)]
    share = magnet.expected_masked_share(R, C, L)
    for u in range(len(places) + 1):
        covered = []
        for starts in itertools.combinations(places, u):
            grid = torch.zeros(R, C, dtype=torch.bool)
            for r, j in starts:
                grid[r, j:j + L] = True
            covered.append(grid.sum().item() / (R * C))
        assert abs(share[u].item() - sum(covered) / len(covered)) < 1e-9


def test_span_masks_are_runs_of_at_least_span_len_inside_each_row():
    g = torch.Generator().manual_seed(1)
    for L in (2, 3, 4):
        cfg = dataclasses.replace(TINY, span_len=L)
        m = magnet.span_mask(300, cfg.rows * cfg.cols, cfg, g).view(300, cfg.rows, cfg.cols)
        assert m.view(300, -1).any(1).all()                                  # every sample has a loss
        for b in range(300):                                                 # a span crossing into the next row
            assert min(runs_per_row(m[b])) >= L                              # would leave a shorter run at each end


def test_one_span_masks_exactly_span_len_tokens():
    cfg = dataclasses.replace(TINY, span_len=3, mask_mean=1e-3, mask_std=1e-6)   # ratio ~ 0: one span
    m = magnet.span_mask(50, cfg.rows * cfg.cols, cfg, torch.Generator().manual_seed(2))
    assert (m.sum(1) == 3).all()


def test_guidance_and_temperature_schedules_step_by_step():
    S = 3                                                                    # gamma = cos(0), cos(pi/4), cos(pi/2)
    expected_gamma = [1.0, math.sqrt(0.5), 0.0]
    for s in range(S):
        gamma = magnet.masked_share(s, S)
        assert abs(gamma - expected_gamma[s]) < 1e-12
        assert abs(magnet.guidance_scale(gamma) - (10 * expected_gamma[s] + 1 * (1 - expected_gamma[s]))) < 1e-12
    assert [magnet.temperature(s, S) for s in range(S)] == [2.0, 1.0, 0.0]   # 3 (S - 1 - s) / S
    assert [magnet.spans_masked(s, 5, 10) for s in range(5)] == [10, 9, 7, 3, 1]   # floor(10 cos(pi/8 s)), >= 1


def test_sampler_uses_the_annealed_guidance_and_temperature_at_each_step():
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(SMALL).eval()
    record = []
    magnet.generate(model, torch.randn(1, 512), row_steps=(6,), span_len=1, seed=0, on_step=record.append)
    assert len(record) == 6
    for s, info in enumerate(record):
        gamma = math.cos(math.pi / 2 * s / 5)
        assert abs(info["cfg_scale"] - (10 * gamma + (1 - gamma))) < 1e-5
        assert abs(info["temperature"] - 3 * (5 - s) / 6) < 1e-12
    record.clear()                                                           # another start and guidance are honoured
    magnet.generate(model, torch.randn(1, 512), row_steps=(6,), span_len=1, seed=0, on_step=record.append,
                    temperature_start=1.5, guidance=(4.0, 2.0))
    for s, info in enumerate(record):
        gamma = math.cos(math.pi / 2 * s / 5)
        assert abs(info["cfg_scale"] - (4 * gamma + 2 * (1 - gamma))) < 1e-5
        assert abs(info["temperature"] - 1.5 * (5 - s) / 6) < 1e-12


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    assert torch.allclose(magnet.top_p_filter(probs, 0.8), torch.tensor([0, 0.625, 0, 0.375]))
    assert torch.allclose(magnet.top_p_filter(probs, 0.81), torch.tensor([0.15, 0.5, 0, 0.3]) / 0.95)
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        p = torch.rand(10, generator=g).softmax(0)
        target = torch.rand(1, generator=g).item()
        kept = magnet.top_p_filter(p, target) > 0
        # brute force: the fewest most likely tokens whose mass reaches target
        ordered = p.sort(descending=True).values
        k = next(k for k in range(1, 11) if ordered[:k].sum() >= target - 1e-7)
        assert kept.sum().item() == k and p[kept].min() >= ordered[k - 1] - 1e-7


def test_span_scoring_max_and_prod():
    ids = magnet.span_ids(1, 7, 3)                                           # spans {0,1,2} {3,4,5} {6}
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert magnet.span_ids(2, 7, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4, 4, 5]   # never across rows
    conf = torch.tensor([[0.9, 0.2, 0.5, 0.4, 0.4, 0.1, 0.7]])
    counted = torch.tensor([[True, True, True, True, True, False, True]])   # position 5 was not drawn now
    mx = magnet.span_confidence(conf, ids, counted, 3, "max")
    prod = magnet.span_confidence(conf, ids, counted, 3, "prod")
    assert torch.allclose(mx, torch.tensor([[0.9, 0.4, 0.7]]))
    assert torch.allclose(prod, torch.log(torch.tensor([[0.9 * 0.2 * 0.5, 0.4 * 0.4, 0.7]])))


def test_rescoring_mixes_seven_tenths_external():
    p_self, p_ext = torch.tensor([0.2, 0.9]), torch.tensor([0.6, 0.1])
    assert torch.allclose(magnet.rescore(p_self, p_ext), torch.tensor([0.7 * 0.6 + 0.3 * 0.2, 0.7 * 0.1 + 0.3 * 0.9]))


def restricted_outputs(model, tokens, k):
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    attn = magnet.context_mask(model.cfg.rows, model.cfg.cols, k)
    cond = torch.randn(1, 512, generator=torch.Generator().manual_seed(4))
    return model(tokens, cond, mask, attn_mask=attn).view(model.cfg.rows, model.cfg.cols, -1)


def test_restricted_attention_reaches_k_columns_per_layer():
    torch.manual_seed(0)
    for layers in (1, 2):
        model = specmaskgit.SpecMaskGIT(dataclasses.replace(SMALL, n_layers=layers)).eval()
        k, col, reach = 2, 4, 2 * layers
        tokens = torch.randint(0, SMALL.n_codes, (1, SMALL.rows, SMALL.cols), generator=torch.Generator().manual_seed(5))
        base = restricted_outputs(model, tokens, k)
        for other, row in ((col + reach, 3), (col + reach + 1, 3), (col - reach - 1, 0)):
            changed = tokens.clone()
            changed[0, row, other] = (changed[0, row, other] + 1) % SMALL.n_codes
            out = restricted_outputs(model, changed, k)
            moved = (out[1, col] - base[1, col]).abs().max().item()
            if abs(other - col) <= reach:
                assert moved > 1e-4
            else:
                assert moved == 0.0


def test_no_attention_mask_is_the_unrestricted_model():
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(SMALL).eval()
    tokens = torch.randint(0, SMALL.n_codes, (2, SMALL.rows, SMALL.cols))
    mask, cond = torch.rand(2, SMALL.rows, SMALL.cols) < 0.5, torch.randn(2, 512)
    everyone = torch.ones(SMALL.rows * SMALL.cols + 1, SMALL.rows * SMALL.cols + 1, dtype=torch.bool)
    assert torch.allclose(model(tokens, cond, mask), model(tokens, cond, mask, attn_mask=everyone), atol=1e-6)


def test_sampler_fills_every_position_never_changes_known_tokens_and_each_option_changes_the_result():
    """Inpainting with each option alone: known tokens kept, every other position decoded, and, with the same
    prompts and seed, a result other than the defaults' (an option read and then dropped would give theirs).
    test_magnet_options.py checks how each option changes it."""
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(SMALL).eval()
    g = torch.Generator().manual_seed(6)
    known_tokens = torch.randint(0, SMALL.n_codes, (3, SMALL.rows, SMALL.cols), generator=g)
    known_mask = torch.rand(3, SMALL.rows, SMALL.cols, generator=g) < 0.3
    cond = torch.randn(3, 512, generator=g)
    results = []
    for options in (dict(), dict(row_steps=(16,)), dict(scoring="prod"), dict(span_len=1), dict(context=1),
                    dict(prefix_cols=3), dict(rescorer=specmaskgit.SpecMaskGIT(SMALL).eval())):
        tokens, order = magnet.generate(model, cond, span_len=options.pop("span_len", 3),
                                        known_tokens=known_tokens, known_mask=known_mask, seed=1,
                                        record_order=True, **options)
        assert (tokens[known_mask] == known_tokens[known_mask]).all()
        assert (order[known_mask] == -1).all() and (order[~known_mask] >= 0).all()
        results.append((tokens, order))
    for tokens, order in results[1:]:
        assert not (torch.equal(tokens, results[0][0]) and torch.equal(order, results[0][1]))


def test_spans_are_committed_whole():
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(SMALL).eval()
    _, order = magnet.generate(model, torch.randn(2, 512), span_len=3, seed=2, record_order=True)
    spans = order.view(2, SMALL.rows, -1)[..., :15].reshape(2, SMALL.rows, 5, 3)   # the whole spans of each row
    assert (spans == spans[..., :1]).all()


def test_training_with_span_masks_lowers_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, span_len=3)
    trainer = specmaskgit.Trainer(cfg, lr=3e-3, loss=magnet.training_loss)
    tokens = torch.randint(0, cfg.n_codes, (8, cfg.rows, cfg.cols))
    batch = {"tokens": tokens, "cond": torch.randn(8, 512)}
    mask = magnet.span_mask(8, cfg.rows * cfg.cols, cfg, torch.Generator().manual_seed(7)).view(8, cfg.rows, cfg.cols)

    def held_loss():
        with torch.no_grad():
            return specmaskgit.masked_loss(trainer.model.eval(), tokens, batch["cond"], mask=mask,
                                           drop_cond=torch.zeros(8, dtype=torch.bool))[0].item()
    before = held_loss()
    for step in range(20):
        trainer.step(batch, step)
    assert held_loss() < before - 0.1


def test_magnets_fields_need_magnets_loss_and_old_configs_load_with_specmaskgits_training():
    for change in (dict(span_len=3), dict(by_row=True), dict(ratio_draw="cosine"), dict(context=0)):
        try:
            specmaskgit.Trainer(dataclasses.replace(SMALL, **change))
            raise AssertionError(f"a trainer with {change} but Eq. 1's masks was built")
        except ValueError as e:
            assert "magnet.training_loss" in str(e)
    new = ("span_len", "by_row", "ratio_draw", "context")
    saved = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in new}   # a checkpoint from before
    cfg = config_from_dict(specmaskgit.Config, saved)
    assert (cfg.span_len, cfg.by_row, cfg.ratio_draw, cfg.context) == (1, False, "gaussian", -1)
    assert not specmaskgit.trains_as_magnet(cfg)


def test_both_maskings_train_and_the_sampler_runs_at_the_full_presets_grid():
    """The full preset's grid (5 x 53 tokens, 1024 codes; a narrow model so that the test stays small):
    a span-masked training step and MAGNeT's sampler with every option, shapes and ranges as at full size."""
    full = specmaskgit.PRESETS["full"]
    cfg = dataclasses.replace(full, n_layers=1, width=32, n_heads=2, mlp=64, span_len=3)
    assert (cfg.rows, cfg.cols, cfg.n_codes) == (5, 53, 1024)
    g = torch.Generator().manual_seed(9)
    mask = magnet.span_mask(64, cfg.rows * cfg.cols, cfg, g).view(64, cfg.rows, cfg.cols)
    assert runs_per_row(mask.reshape(-1, cfg.cols)) and min(runs_per_row(mask.reshape(-1, cfg.cols))) >= 3
    batch = {"tokens": torch.randint(0, 1024, (2, 5, 53), generator=g), "cond": torch.randn(2, 512, generator=g)}
    for loss in (specmaskgit.masked_loss, magnet.training_loss):
        trainer = specmaskgit.Trainer(dataclasses.replace(cfg, span_len=1 if loss is specmaskgit.masked_loss else 3),
                                      loss=loss)
        metrics = trainer.step(batch, 0)
        assert torch.isfinite(metrics["loss"])
    model = specmaskgit.SpecMaskGIT(cfg).eval()
    tokens, order = magnet.generate(model, torch.randn(2, 512), span_len=3, context=2, prefix_cols=2, seed=0,
                                    rescorer=specmaskgit.SpecMaskGIT(cfg).eval(), record_order=True)
    assert tokens.shape == (2, 5, 53) and 0 <= tokens.min() and tokens.max() < 1024
    assert (order >= 0).all()                                                  # every token decoded
