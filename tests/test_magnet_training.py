"""magnet.py's training as MAGNeT trains: one token row per step (rows as MAGNeT's codebook stages), mask ratios
drawn as cos(pi/2 u), span masks, and restricted context for the rows above the first in training and in
sampling; and its rescorer judging the drawn tokens. Each against an independent computation."""

import dataclasses
import math
import os

import torch
import torch.nn.functional as F

import magnet
import specmaskgit
import train
from conftest import SMALL, TOY, log_rows, refused, small_model
from ground.runtime import load_checkpoint

MAGNET = dict(span_len=2, by_row=True, ratio_draw="cosine", context=1)


def band_by_hand(rows, cols, k):
    """context_mask written out position by position: grid tokens hear grid tokens within +-k columns and
    the CLAP token (the last); the CLAP token hears itself only."""
    n = rows * cols
    allowed = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    for i in range(n + 1):
        for j in range(n + 1):
            if i == n:
                allowed[i, j] = j == n
            elif j == n:
                allowed[i, j] = True
            else:
                allowed[i, j] = abs(i % cols - j % cols) <= k
    return allowed


def test_cosine_ratios_follow_the_distribution_of_cos_of_a_uniform_quarter_turn():
    cfg = dataclasses.replace(SMALL, ratio_draw="cosine")
    r = magnet.mask_ratios(20000, cfg, torch.Generator().manual_seed(0)).double().sort().values
    # P(cos(pi/2 u) <= x) = P(u >= 2/pi arccos x) = 1 - 2/pi arccos x
    cdf = 1 - 2 / math.pi * torch.arccos(r)
    empirical = torch.arange(1, len(r) + 1, dtype=torch.float64) / len(r)
    assert (cdf - empirical).abs().max() < 0.015                              # Kolmogorov-Smirnov distance
    assert abs(r.mean().item() - 2 / math.pi) < 0.01                          # E cos(pi/2 u) = 2/pi
    gaussian = magnet.mask_ratios(20000, SMALL, torch.Generator().manual_seed(0))
    assert abs(gaussian.mean().item() - 2 / math.pi) > 0.05                   # the other draw is another distribution


def test_row_masks_show_the_rows_below_hide_those_above_and_span_mask_the_row_itself():
    cfg = dataclasses.replace(SMALL, **MAGNET)
    shares = []
    for row in range(cfg.rows):
        m = magnet.row_mask(3000, cfg, row, torch.Generator().manual_seed(row))    # (B, R, C)
        assert not m[:, :row].any() and m[:, row + 1:].all()
        own = m[:, row]                                                       # (B, C)
        assert own.any(1).all()                                               # every sample has something to learn
        for sample in own[:200].tolist():                                     # runs of at least span_len columns
            runs, length = [], 0
            for v in sample + [False]:
                if v:
                    length += 1
                elif length:
                    runs.append(length)
                    length = 0
            assert min(runs) >= cfg.span_len
        shares.append(own.float().mean().item())
    # the expected share of a row is the cosine's mean 2/pi, except that at least one span is always drawn
    assert all(abs(s - 2 / math.pi) < 0.03 for s in shares), shares


class Spy(torch.nn.Module):
    """A transformer that records every call's mask and attention mask, and the logits it returned."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.calls = model, model.cfg, []

    def forward(self, tokens, cond, mask, drop_cond=None, attn_mask=None):
        logits = self.model(tokens, cond, mask, drop_cond, attn_mask=attn_mask)
        self.calls.append(dict(tokens=tokens.clone(), mask=mask.clone(), attn_mask=attn_mask, logits=logits.detach()))
        return logits


def test_training_by_row_scores_the_drawn_row_alone_and_restricts_the_rows_above_the_first():
    cfg = dataclasses.replace(SMALL, **MAGNET)
    spy = Spy(small_model(**MAGNET))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.n_codes, (4, cfg.rows, cfg.cols), generator=g)
    cond = torch.randn(4, cfg.cond_dim, generator=g)
    band = band_by_hand(cfg.rows, cfg.cols, cfg.context)
    seen = torch.zeros(cfg.rows)
    for seed in range(60):
        loss, _ = magnet.training_loss(spy, tokens, cond, torch.Generator().manual_seed(seed))
        call = spy.calls[-1]
        mask = call["mask"]                                                   # (B, R, C)
        hidden_rows = mask.all(2).all(0)                                      # rows entirely masked in every sample
        row = int((~mask.all(2)).any(0).nonzero().max())                      # the highest row with something shown
        assert not mask[:, :row].any() and hidden_rows[row + 1:].all()
        seen[row] += 1
        # Eq. 1 by hand, on the drawn row's masked positions only
        logits = call["logits"].view(4, cfg.rows, cfg.cols, -1)[:, row][mask[:, row]]
        expected = F.cross_entropy(logits, tokens[:, row][mask[:, row]], label_smoothing=0.1)
        assert torch.allclose(loss, expected, atol=1e-5)
        if row == 0:
            assert call["attn_mask"] is None
        else:
            assert torch.equal(call["attn_mask"], band)
    assert (seen >= 5).all(), seen                                            # every row is drawn


def test_without_by_row_the_span_masks_cover_every_row_and_the_loss_every_masked_token():
    cfg = dataclasses.replace(SMALL, span_len=2, ratio_draw="cosine")
    spy = Spy(small_model(span_len=2, ratio_draw="cosine"))
    g = torch.Generator().manual_seed(2)
    tokens, cond = torch.randint(0, cfg.n_codes, (64, cfg.rows, cfg.cols), generator=g), torch.randn(64, 16, generator=g)
    loss, _ = magnet.training_loss(spy, tokens, cond, torch.Generator().manual_seed(3))
    mask, logits = spy.calls[-1]["mask"], spy.calls[-1]["logits"].view(64, cfg.rows, cfg.cols, -1)
    assert mask.any(2).float().mean() > 0.8 and spy.calls[-1]["attn_mask"] is None
    assert torch.allclose(loss, F.cross_entropy(logits[mask], tokens[mask], label_smoothing=0.1), atol=1e-5)


def test_the_sampler_restricts_the_rows_above_the_first_and_takes_the_window_the_model_trained_with():
    band1, band0 = band_by_hand(SMALL.rows, SMALL.cols, 1), band_by_hand(SMALL.rows, SMALL.cols, 0)
    spy = Spy(small_model())
    magnet.generate(spy, torch.randn(1, 16), row_steps=(2, 1, 1, 1, 1), span_len=1, context=1, prefix_cols=1, seed=0)
    masks = [c["attn_mask"] for c in spy.calls]                               # prefix, 2 steps of row 0, then rows 1-4
    assert masks[:3] == [None, None, None]
    assert len(masks) == 7 and all(torch.equal(m, band1) for m in masks[3:])
    trained = Spy(small_model(by_row=True, context=0))                        # no --context: the trained window
    magnet.generate(trained, torch.randn(1, 16), row_steps=(1, 1, 1, 1, 1), span_len=1, seed=0)
    assert trained.calls[0]["attn_mask"] is None and all(torch.equal(c["attn_mask"], band0) for c in trained.calls[1:])
    trained.calls.clear()
    magnet.generate(trained, torch.randn(1, 16), row_steps=(1, 1, 1, 1, 1), span_len=1, context=-1, seed=0)
    assert all(c["attn_mask"] is None for c in trained.calls)                 # -1 switches it off
    trained.calls.clear()
    magnet.generate(trained, torch.randn(1, 16), row_steps=(4,), span_len=1, seed=0)
    assert all(c["attn_mask"] is None for c in trained.calls)                 # one phase holds the first row


def test_the_rescorer_judges_the_drawn_tokens_every_other_span_at_a_time():
    model, rescorer = small_model(seed=0), Spy(small_model(seed=1))
    steps = []
    magnet.generate(model, torch.randn(2, 16), row_steps=(3,), span_len=2, rescorer=rescorer, seed=0,
                    on_step=lambda info: steps.append({k: info[k].clone() for k in ("belief", "masked", "committed")}))
    calls = rescorer.calls
    assert len(calls) == 2 * len(steps)                                       # two passes per step
    before = torch.ones(2, SMALL.rows * SMALL.cols, dtype=torch.bool)         # masked entering the step
    ids = magnet.span_ids(SMALL.rows, SMALL.cols, 2)
    for s, info in enumerate(steps):
        now = before                                                          # one phase: every masked position draws
        shown = []
        for parity, call in enumerate(calls[2 * s:2 * s + 2]):
            tokens, mask = call["tokens"][:2].view(2, -1), call["mask"][:2].view(2, -1)   # the prompted half
            assert torch.equal(mask, now & (ids % 2 == parity))               # it scores every other span of the draw
            visible = ~mask
            assert torch.equal(tokens[visible], info["belief"].view(2, -1)[visible])   # and sees the draw elsewhere
            shown.append(mask)
        assert torch.equal(shown[0] | shown[1], now) and not (shown[0] & shown[1]).any()
        before = info["masked"].view(2, -1).clone()


def test_train_py_trains_by_row_with_cosine_ratios_spans_and_restricted_context(prerequisites, tmp_path, monkeypatch):
    import shutil
    out = tmp_path / "magnet"
    shutil.copytree(prerequisites, out)
    rows = []
    real = magnet.row_mask
    monkeypatch.setattr(magnet, "row_mask", lambda B, cfg, row, *a, **k: rows.append((row, cfg)) or real(B, cfg, row, *a, **k))
    flags = ["--transformer.span_len", "2", "--transformer.by_row", "true", "--transformer.ratio_draw", "cosine",
             "--transformer.context", "0"]
    assert train.main(TOY + ["--stage", "transformer", "--steps", "4", "--log-every", "1", "--out", str(out)] + flags) == 0
    assert len(rows) == 4 and all(c.by_row and c.ratio_draw == "cosine" and c.span_len == 2 for _, c in rows)
    saved = load_checkpoint(os.path.join(out, "transformer.pt"), "transformer")["config"]
    assert (saved["span_len"], saved["by_row"], saved["ratio_draw"], saved["context"]) == (2, True, "cosine", 0)
    assert len(log_rows(out, "transformer")) == 4


def test_train_py_refuses_a_restricted_context_without_training_by_row(prerequisites, tmp_path, capsys):
    import shutil
    out = tmp_path / "context"
    shutil.copytree(prerequisites, out)
    refused(capsys, train.main, TOY + ["--stage", "transformer", "--steps", "1", "--out", str(out),
                                       "--transformer.context", "0"], ["--transformer.by_row"])
    empty = tmp_path / "empty"                                                # refused with the flags, before any work
    refused(capsys, train.main, TOY + ["--stage", "all", "--steps", "1", "--out", str(empty),
                                       "--transformer.context", "0"], ["--transformer.by_row"], folder=empty)
    refused(capsys, train.main, TOY + ["--stage", "transformer", "--steps", "1", "--out", str(out),
                                       "--transformer.ratio_draw", "uniform"], ["ratio_draw", "cosine"])
    refused(capsys, train.main, TOY + ["--stage", "transformer", "--steps", "1", "--out", str(out),
                                       "--transformer.context", "-2"], ["context", "-1"])
