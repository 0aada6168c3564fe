"""
magnet.py — MAGNeT's training and decoding ideas, as differences from specmaskgit.py.

Paper: "Masked Audio Generation using a Single Non-Autoregressive Transformer" (Ziv et al., ICLR 2024),
official code: audiocraft's models/lm_magnet.py (MagnetLMModel) and solvers/magnet.py (MagnetSolver).
MAGNeT is SpecMaskGIT's closest relative: one bidirectional transformer over audio tokens, trained to fill
masks and sampled by iterative parallel decoding with classifier-free guidance. Its tokens are EnCodec's
four residual codebook streams at 50 Hz; ours are a 5 x 53 grid of SpecVQGAN tokens, one row per band of
16 mel bins, one column per 16 mel frames by default (16 x 256 / 22050 Hz = 186 ms of audio; see
vqgan.Config.patch_frames). This file reuses specmaskgit.py's transformer, conditioner interface and
masked_counts, and holds only what differs (named as the MAGNeT paper names its ideas):
  masking strategy    span masking in training: spans of span_len columns inside one row (span_mask), at
                      mask ratios drawn as cos(pi/2 u) (mask_ratios)
  training by stage   one token row per step, the rows below it shown and those above masked, the loss on
                      that row alone (row_mask, training_loss): MAGNeT's codebook streams are our rows
  restricted context  in the rows above the first, a token attends only to tokens within +-k columns
                      (context_mask), in training and in sampling
  inference           guidance annealed from 10 down to 1 as the mask shrinks, softmax temperature 3 -> 0,
                      top-p 0.9, a step count per token row, one row after another (guidance_scale,
                      temperature, top_p)
  rescoring           confidence = 0.7 p_external + 0.3 p_self, the external model judging the drawn
                      tokens (rescore, rescorer_probs)
  hybrid              the first columns one after another, the rest in parallel (generate, prefix_cols);
                      MAGNeT trains one model with a joint autoregressive and non-autoregressive loss and a
                      random switch point, ours takes the prefix's columns from the same masked model at
                      sampling time only, a stand-in: this model was never trained left to right
The training ideas are fields of specmaskgit.Config (span_len, by_row, ratio_draw, context), so train.py
reaches them as --transformer.span_len 3 --transformer.by_row true --transformer.ratio_draw cosine
--transformer.context 0; SpecMaskGIT's defaults leave them all off.

In:  a SpecMaskGIT model (specmaskgit.py), a CLAP embedding (B, 512)
Out: a training loss for specmaskgit.Trainer (training_loss); tokens (B, 5, 53) from generate()
Run alone: python magnet.py   # prints the span counts and the guidance/temperature schedules
"""

import dataclasses
import math
import sys

import torch

import specmaskgit


# ---------------------------------------------------------------------------------------------------
# MAGNeT's masking strategy: spans in training.
# ---------------------------------------------------------------------------------------------------
# MAGNeT masks spans of consecutive tokens rather than single tokens: EnCodec's receptive field makes
# neighbouring tokens share information, so a single masked token is often given away by its neighbours
# and the model learns to copy instead of to generate. SpecVQGAN's encoder overlaps neighbouring patches
# too (3 x 3 convolutions at every level and attention at the lowest one). MAGNeT's best span is 3 tokens
# = 60 ms (its ablation of the span length); here a span of 3 is 3 columns of one row: 48 mel frames = 557 ms of one band
# of 16 mel bins. A span never crosses from one row into the next (that would join two frequency bands at
# opposite ends of the clip).

def mask_ratios(B: int, cfg: specmaskgit.Config, generator=None) -> torch.Tensor:
    """(B,) training mask ratios: MAGNeT's cos(pi/2 u), u uniform on [0, 1) (audiocraft's MagnetSolver draws
    its masking rates so), which puts half of the ratios above cos(pi/4) = 0.71; or, with cfg.ratio_draw
    "gaussian", SpecMaskGIT's truncated Gaussian around 0.55 (specmaskgit.mask_ratios)."""
    if cfg.ratio_draw == "cosine":
        return torch.cos(math.pi / 2 * torch.rand(B, generator=generator))
    return specmaskgit.mask_ratios(B, cfg, generator)


def span_starts_per_column(cols: int, span_len: int) -> torch.Tensor:
    """(cols,) how many span starts in a row cover each column: a span may start at columns
    0 .. cols - span_len (it must fit inside the row), and column j is covered by the starts j - L + 1 .. j."""
    j = torch.arange(cols)
    return (torch.clamp(j, max=cols - span_len) - torch.clamp(j - span_len + 1, min=0) + 1)


def expected_masked_share(rows: int, cols: int, span_len: int) -> torch.Tensor:
    """(S + 1,) float64: the expected masked share of the grid when u = 0 .. S distinct span starts are
    drawn uniformly from the S = rows (cols - span_len + 1) places a span fits (MAGNeT appendix C).

    A position covered by n of the S starts stays unmasked only if none of its n starts is drawn:
    C(S - n, u) / C(S, u) = prod_{i < u} (S - n - i) / (S - i) (the product avoids huge binomials, as in
    audiocraft's MagnetSolver._calc_mean_maskrate_to_u_LUT). The masked share is one minus its mean.
    """
    S = rows * (cols - span_len + 1)
    n = span_starts_per_column(cols, span_len).double()[:, None]                # (cols, 1)
    i = torch.arange(S, dtype=torch.float64)[None, :]                           # (1, S)
    factors = ((S - n - i) / (S - i)).clamp(min=0)                              # (cols, S)
    unmasked = torch.cat([torch.ones(cols, 1, dtype=torch.float64), factors.cumprod(1)], dim=1)  # (cols, S + 1)
    return 1 - unmasked.mean(0)                                                 # every row alike


def spans_for_ratio(ratios: torch.Tensor, rows: int, cols: int, span_len: int, generator=None) -> torch.Tensor:
    """(B,) long: how many spans to draw so that the expected masked share equals each ratio.

    The expected share grows in jumps of up to span_len / (rows x cols) per span (3/80 on the toy grid), so a whole
    number of spans rarely hits the ratio. MAGNeT's table takes the smallest count whose share reaches it
    (searchsorted); we draw the count below or the one above, with the probabilities that make the
    expected share exactly the ratio. At least one span, so every sample has a loss.
    """
    share = expected_masked_share(rows, cols, span_len)                         # (S + 1,) rising from 0 to 1
    r = ratios.double().clamp(0, 1)
    hi = torch.searchsorted(share, r).clamp(1, len(share) - 1)                  # share[hi - 1] < r <= share[hi]
    lo = hi - 1
    p_hi = (r - share[lo]) / (share[hi] - share[lo])                            # linear between the two counts
    u = lo + (torch.rand(len(r), generator=generator, dtype=torch.float64) < p_hi).long()
    return u.clamp(min=1)


def span_mask(B: int, n: int, cfg: specmaskgit.Config, generator=None, device="cpu") -> torch.Tensor:
    """(B, n) bool training masks of spans of cfg.span_len columns within one row (MAGNeT's masking strategy;
    audiocraft MagnetSolver._spans_mask). Per sample: a mask ratio (mask_ratios: MAGNeT's cosine or
    SpecMaskGIT's Gaussian, as cfg.ratio_draw says), the number of spans whose expected coverage is that ratio
    (spans_for_ratio), that many distinct start places, and each start masks span_len columns.
    Spans may overlap or touch, so a masked run is span_len long or longer. Same signature as
    specmaskgit.sample_mask, so specmaskgit.masked_loss(draw_mask=span_mask) trains with it.

    The ratios and span counts are drawn on the host from `generator` (a CPU one), B numbers copied over
    without waiting; the places are drawn and the mask is built on `device`, by a generator there seeded
    from `generator`, so a seeded step draws the same mask again and no (B, n) tensor crosses to the device."""
    R, C, L = cfg.rows, cfg.cols, cfg.span_len
    assert n == R * C and 1 <= L <= C, "span masks need the grid of the config"
    u = spans_for_ratio(mask_ratios(B, cfg, generator), R, C, L, generator)  # (B,) on the host
    u = u.to(device, non_blocking=True)
    on_device = None
    if generator is not None:                                                   # its seed is read on the host
        on_device = torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=generator)))
    places = R * (C - L + 1)                                                    # where a whole span fits
    keys = torch.rand(B, places, generator=on_device, device=device)            # (B, places)
    rank = keys.argsort(dim=1).argsort(dim=1)                                   # a random order per sample
    starts = (rank < u[:, None]).view(B, R, C - L + 1)                          # (B, R, C - L + 1)
    mask = torch.zeros(B, R, C, dtype=torch.bool, device=device)
    for offset in range(L):                                                     # each start covers L columns
        mask[:, :, offset:offset + C - L + 1] |= starts
    return mask.view(B, n)


# ---------------------------------------------------------------------------------------------------
# MAGNeT's restricted context.
# ---------------------------------------------------------------------------------------------------
# MAGNeT lets its model attend only to +-5 time steps (audiocraft's subcodes_context: 11 frames at 50 Hz,
# a window of 220 ms) whenever it predicts a codebook stream above the first, in training and in sampling;
# for the first stream it attends everywhere. EnCodec's encoder has a bounded receptive field, so a fine
# code depends on its neighbourhood only. Here, for the rows above the first, every token attends to the
# tokens of every row within +-k columns: a window of 2k + 1 columns of 186 ms with 16-frame tokens, so
# k = 0 (186 ms) is the nearest to MAGNeT's 220 ms. The CLAP token, which carries the prompt, is always
# heard (MAGNeT's cross-attention to the text is never restricted either), and it attends only to itself:
# were it to read the whole grid, it would carry far tokens into every near one in the next block.
# The limit is per attention layer, as in MAGNeT: through n blocks a token hears n k columns away.

def context_mask(rows: int, cols: int, k: int, device="cpu") -> torch.Tensor:
    """(rows cols + 1, rows cols + 1) bool, True = may attend: grid tokens within +-k columns and the
    CLAP token (last); the CLAP token itself only. For specmaskgit.SpecMaskGIT's attn_mask."""
    col = torch.arange(rows * cols, device=device) % cols                     # (n,) the column of each position
    near = (col[:, None] - col[None, :]).abs() <= k                           # (n, n)
    allowed = torch.zeros(rows * cols + 1, rows * cols + 1, dtype=torch.bool, device=device)
    allowed[:-1, :-1] = near
    allowed[:, -1] = True                                                     # everyone hears the prompt
    return allowed


# ---------------------------------------------------------------------------------------------------
# MAGNeT's training by stage, with rows as stages, and the loss specmaskgit.Trainer calls.
# ---------------------------------------------------------------------------------------------------
# MAGNeT decodes its codebook streams one after another, each given the ones before, and trains for just
# that: each step draws one stream, shows the streams below it, masks those above it entirely, span-masks
# the drawn one and scores it alone (audiocraft's MagnetSolver: stage_ = random.randint(0, K - 1)). Our
# sampler decodes the rows of the grid the same way, low band first (generate's phases), so the rows are
# the stages. Trained on all rows at once (SpecMaskGIT's way), the model rarely sees the state generate
# puts it in: some rows complete and every row above them fully masked.

def row_mask(B: int, cfg: specmaskgit.Config, row: int, generator=None, device="cpu") -> torch.Tensor:
    """(B, R, C) bool training masks of training by stage: rows below `row` shown, rows above it masked,
    `row` itself span-masked as a grid of one row would be (span_mask; a ratio per sample)."""
    R, C = cfg.rows, cfg.cols
    spans = span_mask(B, C, dataclasses.replace(cfg, rows=1), generator, device).view(B, 1, C)   # (B, 1, C)
    rows = torch.arange(R, device=device)[None, :, None]                      # (1, R, 1)
    return torch.where(rows == row, spans, rows > row)                        # (B, R, C)


def training_loss(model, tokens, cond, generator=None):
    """Eq. 1 on MAGNeT's masks (loss, accuracy), for specmaskgit.Trainer(loss=training_loss).

    cfg.by_row: one row per step from `generator` (the whole batch alike, as audiocraft draws one stage per
    step), row_mask's masks, the loss on that row's masked positions alone, and for a row above the first
    the restricted context of cfg.context (if >= 0). Otherwise span masks on every row at once (span_mask)."""
    cfg = model.cfg
    if not cfg.by_row:
        return specmaskgit.masked_loss(model, tokens, cond, generator, draw_mask=span_mask)
    B, R, C = tokens.shape
    row = int(torch.randint(R, (), generator=generator))                     # the stage of this step
    mask = row_mask(B, cfg, row, generator, tokens.device)                    # (B, R, C)
    scored = mask & (torch.arange(R, device=tokens.device)[None, :, None] == row)   # (B, R, C) this row only
    attn_mask = context_mask(R, C, cfg.context, tokens.device) if row > 0 and cfg.context >= 0 else None
    return specmaskgit.masked_loss(model, tokens, cond, generator, mask=mask, scored=scored, attn_mask=attn_mask)


# ---------------------------------------------------------------------------------------------------
# The schedules of MAGNeT's decoding (audiocraft MagnetLMModel._generate_stage).
# ---------------------------------------------------------------------------------------------------

GUIDANCE = (10.0, 1.0)   # (lambda_0, lambda_1): guidance while everything is masked, and at the end (the best of its guidance-annealing ablation)
TEMPERATURE = 3.0        # softmax temperature at the first step, annealed linearly to 0
TOP_P = 0.9              # nucleus sampling
ROW_STEPS = (8, 4, 4, 4, 4)   # steps per token row, low band first: MAGNeT gives its first stream 20, the others 10
RESCORE_WEIGHT = 0.7     # weight of the external model's probability (MAGNeT's rescoring)
# These are the paper's values and audiocraft's MAGNeT.set_generation_params defaults. audiocraft's solver
# config for its text-to-sound model (config/solver/magnet/audio_magnet_16khz.yaml, the samples it draws
# while training) sets temperature 3.5, top-p 0.8 and guidance 20 -> 1 instead; evaluation/magnet_table.py
# has a row with them.


def masked_share(step: int, steps: int) -> float:
    """gamma: the share of spans masked entering `step` of `steps`: cos(pi/2 t) at t = 0, 1/(S-1), ..., 1
    (audiocraft: torch.linspace(0, 1, steps)), so the first step sees everything masked."""
    return math.cos(math.pi / 2 * (step / (steps - 1) if steps > 1 else 0.0))


def spans_masked(step: int, steps: int, n_spans: int) -> int:
    """How many of n_spans are masked entering `step`: floor(gamma n), at least one (audiocraft's
    max(int(mask_p * n), 1)); the last step re-draws the one least confident span."""
    return min(n_spans, max(int(masked_share(step, steps) * n_spans), 1))


def guidance_scale(gamma: float, high: float = GUIDANCE[0], low: float = GUIDANCE[1]) -> float:
    """MAGNeT's CFG annealing: lambda = gamma lambda_0 + (1 - gamma) lambda_1, used in Eq. 2 of SpecMaskGIT
    (l_u + lambda (l_c - l_u)). High while most is masked (follow the prompt while the sketch is drawn),
    low at the end (fill in what the context already implies). SpecMaskGIT ramps the other way: 0 -> 3.
    (high, low) = (0, 3) gives a rising ramp like SpecMaskGIT's, (3, 3) a constant scale."""
    return gamma * high + (1 - gamma) * low


def temperature(step: int, steps: int, start: float = TEMPERATURE) -> float:
    """Softmax temperature of `step`: start (S - 1 - s) / S, from almost `start` down to 0 at the last step
    (audiocraft: temp * steps_left / timesteps). MAGNeT puts its randomness into the draw; SpecMaskGIT
    draws at temperature 1 and puts Gumbel noise into the confidence instead (Eq. 3)."""
    return start * (steps - 1 - step) / steps


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling's distribution: keep the smallest set of most likely tokens whose mass reaches p,
    renormalised (Holtzman et al. 2020; audiocraft utils.sample_top_p). p >= 1 keeps everything."""
    if p >= 1:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)                        # (..., K)
    before = sorted_p.cumsum(-1) - sorted_p                                    # mass of the more likely tokens
    sorted_p = sorted_p * (before < p)                                         # the first one always stays
    kept = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------
# Span-level confidence, and rescoring with an external model (MAGNeT's span decoding and rescoring).
# ---------------------------------------------------------------------------------------------------

def span_ids(rows: int, cols: int, span_len: int, device="cpu") -> torch.Tensor:
    """(rows cols,) long: the decoding span of each grid position. Each row is cut into non-overlapping
    spans of span_len columns (audiocraft's span_arrangement 'nonoverlap'); where cols is no multiple of
    span_len the last span of a row is shorter (audiocraft trims the sequence instead: we keep the clip)."""
    per_row = -(-cols // span_len)                                            # ceil(cols / span_len)
    pos = torch.arange(rows * cols, device=device)
    return (pos // cols) * per_row + (pos % cols) // span_len


def rescore(p_self: torch.Tensor, p_external: torch.Tensor, weight: float = RESCORE_WEIGHT) -> torch.Tensor:
    """MAGNeT's rescoring: a drawn token's confidence is w p_external + (1 - w) p_self: a second model's opinion of
    the same draw (MAGNeT's is an autoregressive MusicGen/AudioGen; here another transformer checkpoint)."""
    return weight * p_external + (1 - weight) * p_self


def span_confidence(token_conf: torch.Tensor, ids: torch.Tensor, counted: torch.Tensor, n_spans: int,
                    scoring: str = "max") -> torch.Tensor:
    """(B, n) per-token confidence -> (B, n_spans): 'max' = the most confident token of the span, 'prod' =
    the product of its tokens' confidences, kept as a sum of logs (audiocraft: 1 - max p and -sum log p
    as the scores to re-mask by). Only positions with counted (B, n) True take part."""
    B = token_conf.shape[0]
    index = ids.expand(B, -1)
    out = torch.zeros(B, n_spans, dtype=torch.float32, device=token_conf.device)
    if scoring == "max":
        return out.scatter_reduce(1, index, torch.where(counted, token_conf, 0.0).float(), "amax")
    if scoring == "prod":
        return out.scatter_reduce(1, index, torch.where(counted, token_conf.clamp_min(1e-30).log(), 0.0).float(), "sum")
    raise ValueError(f"span scoring must be 'max' or 'prod', not {scoring!r}")


# ---------------------------------------------------------------------------------------------------
# MAGNeT's decoding, with the hybrid's prefix.
# ---------------------------------------------------------------------------------------------------

def logits_with_guidance(model, tokens, cond, masked, scale, attn_mask):
    """Eq. 2 with a per-sample scale (B,): l_u + scale (l_c - l_u), both halves in one batch of 2B."""
    B, n = tokens.shape
    grid, mask = tokens.view(B, model.cfg.rows, model.cfg.cols), masked.view(B, model.cfg.rows, model.cfg.cols)
    attention = {} if attn_mask is None else {"attn_mask": attn_mask}
    if cond is None:
        return model(grid, None, mask, **attention)
    both = model(torch.cat([grid, grid]), torch.cat([cond, cond]), torch.cat([mask, mask]),
                 drop_cond=torch.arange(2 * B, device=tokens.device) >= B, **attention)   # (2B, n, K)
    l_c, l_u = both[:B], both[B:]
    return l_u + scale[:, None, None] * (l_c - l_u)


def rescorer_probs(rescorer, drawn, cond, hidden, now, ids, scale, temp):
    """(B, n) the rescorer's probability of each drawn token at the `now` positions (B, n), at the same
    guidance scale and temperature as the model's own. MAGNeT's autoregressive rescorer reads the draw and
    scores each token given the drawn tokens before it; a bidirectional one cannot score a token it can see,
    so it sees the draw everywhere but every other span of it: the even spans are scored with the odd ones
    shown, then the odd with the even shown. `hidden` (B, n): positions it never sees (still to be decided
    outside this draw). Two passes, each with and without the prompt."""
    out = torch.zeros(drawn.shape, device=drawn.device)
    for parity in (0, 1):
        scored = now & (ids % 2 == parity)                                    # (B, n)
        logits = logits_with_guidance(rescorer, drawn, cond, hidden | scored, scale, None).float()   # (B, n, K)
        p = torch.softmax(logits / max(temp, 1e-2), dim=-1).gather(-1, drawn[..., None])[..., 0]  # (B, n)
        out = torch.where(scored, p, out)
    return out


@torch.no_grad()
def generate(model, cond, row_steps=ROW_STEPS, guidance=GUIDANCE, temperature_start=TEMPERATURE, top_p=TOP_P,
             span_len=None, scoring="max", context=None, rescorer=None, rescore_weight=RESCORE_WEIGHT,
             prefix_cols=0, known_tokens=None, known_mask=None, seed=None, batch_size=None, record_order=False,
             on_step=None):
    """MAGNeT's iterative decoding of (B, rows, cols) token grids with a SpecMaskGIT model.

    1. Hybrid, prefix_cols > 0: the first columns one after another, left to right, each in one
       forward pass with every later column masked, sampled at temperature 1 and top-p. MAGNeT's hybrid is
       one model trained with a joint autoregressive and non-autoregressive loss (a random switch point),
       whose prefix is decoded autoregressively with a key/value cache; ours is a sampling-time stand-in
       on a model trained only to fill masks, each prefix column a full forward pass over the grid.
    2. Then the rest in parallel, a phase per token row from the low band up, row r in row_steps[r] steps
       (MAGNeT decodes its codebook streams one after another, [20, 10, 10, 10] steps; here rows are
       frequency bands and none is a residual of another, but the low bands hold most of the toy's energy
       and fundamentals, which the higher bands' harmonics follow; so the lowest gets twice the steps).
       A single number, row_steps=(16,), decodes all rows together, as SpecMaskGIT does. In a phase, at
       step s of S: spans_masked(s, S) of the phase's spans are masked; one pass gives the logits with
       guidance_scale(gamma_s) (Eq. 2); every masked position draws a token at temperature(s, S) with
       top-p; each span is scored by span_confidence of its drawn tokens' probabilities (mixed with the
       rescorer's by rescore); the least confident spans stay masked, the others are committed for good.
    Known positions (inpainting) are never masked nor re-drawn; rows of later phases stay masked meanwhile.
    span_len None: the model's training span (cfg.span_len). context k >= 0: the phases of rows above the
    first attend within +-k columns (context_mask), as MAGNeT restricts its streams above the first; None =
    the model's cfg.context, the window it was trained with; -1 = everywhere. The prefix and a single phase
    over all rows include the first row, so they attend everywhere.
    on_step gets the same record as specmaskgit.generate's (decoding_page.step_record reads it).
    The loop stays on the model's device, as specmaskgit.generate's does: which phases run is settled before
    it starts, the per-sample span counts are kept there, and nothing is read back while it runs but for
    on_step's two numbers (one copy per step, made only when there is a hook).
    """
    c = model.cfg
    R, C, n = c.rows, c.cols, c.rows * c.cols
    L = span_len or c.span_len
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(0 if seed is None else seed)
    row_steps = tuple(row_steps)
    assert len(row_steps) in (1, R) and min(row_steps) >= 1 and 1 <= L <= C and 0 <= prefix_cols <= C
    tokens, known = specmaskgit.start_grid(n, cond, known_tokens, known_mask, batch_size, device)   # (B, n), (B, n)
    B = tokens.shape[0]
    masked = ~known                                                           # (B, n) not decided yet
    order = torch.full((B, n), -1, dtype=torch.long, device=device)
    k = c.context if context is None else context
    restricted = None if k < 0 else context_mask(R, C, k, device)           # for the rows above the first
    ids = span_ids(R, C, L, device)                                           # (n,)
    index = ids.expand(B, -1)                                                 # (B, n) each position's span
    n_spans = R * -(-C // L)                                                  # span_ids' count: rows x ceil(C / L)
    row_of, col_of = torch.arange(n, device=device) // C, torch.arange(n, device=device) % C
    phases = [torch.ones(n, dtype=torch.bool, device=device)] if len(row_steps) == 1 else \
             [row_of == r for r in range(R)]
    # A phase with nothing to draw in any sample (inpainting a whole row) is skipped. The prefix decides all
    # of its columns, so what a phase will find masked is known now: one read before the loop, none in it,
    # and none at all without known tokens (text to audio), where every phase has work.
    if known_tokens is None:
        has_work = [True] * len(phases)
    else:
        unknown = masked & (col_of >= prefix_cols)                            # (B, n) left after the prefix
        has_work = torch.stack([(unknown & in_phase).any() for in_phase in phases]).tolist()
    total = prefix_cols + sum(row_steps)
    step = 0

    def draw(now, scale, temp, attn_mask=None):
        """One forward pass; tokens drawn at the `now` positions (B, n): (drawn, p_drawn)."""
        logits = logits_with_guidance(model, tokens, cond, masked, scale, attn_mask).float()       # (B, n, K)
        probs = torch.softmax(logits / max(temp, 1e-2), dim=-1)               # audiocraft's floor of 0.01
        kept = top_p_filter(probs, top_p)
        drawn = (kept.clamp_min(1e-30).log() + specmaskgit.gumbel(kept.shape, g, device)).argmax(-1)  # a draw from kept
        drawn = torch.where(now, drawn, tokens)                                # (B, n)
        p_self = probs.gather(-1, drawn[..., None])[..., 0]                   # (B, n) p(drawn) at this temperature
        return drawn, p_self

    def report(committed, p_self, scale, temp):
        if on_step is not None:                                               # its two numbers in one copy
            n_masked, cfg_scale = torch.stack([masked.sum().float(), scale.mean()]).tolist()
            on_step(dict(step=step, steps=total, n_masked=int(n_masked), committed=committed, masked=masked,
                         known=known, belief=tokens, logp_drawn=p_self.clamp_min(1e-30).log(),
                         cfg_scale=cfg_scale, temperature=temp, schedule="MAGNeT's span schedule"))

    # 1. the hybrid's prefix, one column per pass
    for col in range(prefix_cols):
        now = masked & (col_of == col)                                        # (B, n)
        gamma = masked.sum(1).float() / max(1, n)                             # the share still masked: (B,)
        scale = guidance[0] * gamma + guidance[1] * (1 - gamma)
        drawn, p_self = draw(now, scale, 1.0)
        tokens = drawn
        masked = masked & ~now
        order.masked_fill_(now, step)
        report(now, p_self, scale, 1.0)
        step += 1

    # 2. the rest in parallel: one phase per row (or all rows in one phase)
    for phase, (in_phase, S, work) in enumerate(zip(phases, row_steps, has_work)):
        if not work:
            continue
        attn_mask = restricted if len(phases) > 1 and phase > 0 else None    # MAGNeT: streams above the first
        todo = masked & in_phase                                              # (B, n) positions of this phase
        per_span = torch.zeros(B, n_spans, dtype=torch.long, device=device)
        per_span.scatter_add_(1, index, todo.long())                          # (B, n_spans) positions to draw
        span_masked = per_span > 0                                            # (B, n_spans) spans with work
        n_b = span_masked.sum(1)                                              # (B,) spans per sample
        # no step finds the phase done early: a sample with work keeps >= 1 span masked until the last step
        for s in range(S):
            now = todo & span_masked.gather(1, index)                         # (B, n) masked positions of the phase
            gamma = torch.full((B,), masked_share(s, S), device=device)       # one share for every sample: (B,)
            scale = guidance[0] * gamma + guidance[1] * (1 - gamma)           # guidance_scale, per sample
            temp = temperature(s, S, temperature_start)
            drawn, p_self = draw(now, scale, temp, attn_mask)
            conf = p_self
            if rescorer is not None:                                          # rescoring: the external model's view
                p_ext = rescorer_probs(rescorer, drawn, cond, masked & ~now, now, ids, scale, temp)
                conf = rescore(p_self, p_ext, rescore_weight)
            score = span_confidence(conf, ids, now, n_spans, scoring)         # (B, n_spans)
            score = score.masked_fill(~span_masked, float("inf"))             # committed spans stay committed
            if s < S - 1:                                                     # spans_masked(s + 1, S, u) of each u
                keep = torch.minimum(n_b, (masked_share(s + 1, S) * n_b.double()).long().clamp(min=1))   # (B,)
            else:
                keep = torch.zeros_like(n_b)                                  # the last step commits them all
            rank = score.argsort(dim=1).argsort(dim=1)                        # 0 = least confident span
            span_masked = span_masked & (rank < keep[:, None])
            committed = now & ~span_masked.gather(1, index)
            tokens = torch.where(now, drawn, tokens)                          # beliefs at still-masked positions
            masked = masked & ~committed
            todo = todo & ~committed
            order.masked_fill_(committed, step)
            report(committed, p_self, scale, temp)
            step += 1
    tokens = tokens.view(B, R, C)
    return (tokens, order.view(B, R, C).cpu()) if record_order else tokens


MAX_ROWS, MAX_COLS = 16, 512   # `python magnet.py R C`: its tables grow as R x C^2 (expected_masked_share)


def main(argv: list[str]) -> int:
    """python magnet.py [ROWS COLS]: the span counts and the guidance/temperature schedules on a grid (5 x 53,
    the paper's, by default). A bad grid is one sentence and exit code 2, as in the commands."""
    if argv in (["-h"], ["--help"]):
        print(main.__doc__.split("\n")[0])
        return 0
    try:
        R, C = (int(x) for x in argv) if argv else (5, 53)
        ok = 1 <= R <= MAX_ROWS and 4 <= C <= MAX_COLS                        # span_len goes up to 4
    except ValueError:                                                          # not numbers, or not two
        ok = False
    if not ok:
        print(f"error: python magnet.py takes no argument or two whole numbers, ROWS from 1 to {MAX_ROWS} and "
              f"COLS from 4 to {MAX_COLS} (e.g. 5 53), not {' '.join(argv)!r}.", file=sys.stderr)
        return 2
    for L in (1, 2, 3, 4):
        share = expected_masked_share(R, C, L)
        spans = [int(torch.searchsorted(share, torch.tensor(r, dtype=torch.float64))) for r in (0.25, 0.55, 0.9)]
        print(f"span_len {L} on a {R} x {C} grid: spans for 25/55/90 % masked: {spans}")
    S = ROW_STEPS[0]
    print("step:        " + " ".join(f"{s + 1:5d}" for s in range(S)))
    print("guidance:    " + " ".join(f"{guidance_scale(masked_share(s, S)):5.2f}" for s in range(S)))
    print("temperature: " + " ".join(f"{temperature(s, S):5.2f}" for s in range(S)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
