"""
specmaskgit.py — the masked generative transformer of SpecMaskGIT and its sampler.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 3.2  training on randomly masked token grids (Eq. 1)
  Sec. 3.3  CLAP conditioning as one extra token; the conditional mask
  Sec. 3.4  parallel iterative sampling with classifier-free guidance (Eq. 2, 3)

In:  tokens (B, 5, 53) from vqgan.encode, a CLAP embedding (B, 512)
Out: logits (B, 265, 1024) in training; tokens (B, 5, 53) from generate()
Run alone: python specmaskgit.py   # builds the full-size model, prints its size and the mask schedule
"""

import dataclasses
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_layers: int = 24            # Sec. 4: 24 transformer blocks ...
    width: int = 768              # ... of width 768 ...
    n_heads: int = 8              # ... with 8 attention heads ...
    mlp: int = 3072               # ... and a 3072-wide MLP (about 170 M parameters in all)
    n_codes: int = 1024           # SpecVQGAN codebook size (Sec. 3.1)
    rows: int = 5                 # 80 mel bins / 16
    cols: int = 53                # 848 frames / 16
    cond_dim: int = 512           # CLAP embedding width (Sec. 3.3)
    dropout: float = 0.0
    label_smoothing: float = 0.1  # Eq. 1 is a cross-entropy with label smoothing 0.1 (Sec. 3.2)
    mask_mean: float = 0.55       # mask ratio: a truncated Gaussian centred at 55 % over 0-100 % (Sec. 3.2)
    mask_std: float = 0.25        # its spread is MAGE's (the paper's ref. [31]); the paper gives none
    cfg_dropout: float = 0.1      # CFG: the condition replaced by [M] on 10 % (Sec. 3.4: of steps; here of samples)
    conditional_mask: bool = True # masked positions show the CLAP embedding instead of [M] (Sec. 3.3)
    mask_schedule: str = "cosine" # how many tokens stay masked after each sampling step (Sec. 3.4)
    # MAGNeT's training (magnet.py); the defaults are SpecMaskGIT's, and any other value trains with magnet.training_loss
    span_len: int = 1             # training masks in spans of this many columns; 1 = per token
    by_row: bool = False          # one token row per step, the rows below it shown and those above masked
    ratio_draw: str = "gaussian"  # how a mask ratio is drawn: "gaussian" (mask_mean, mask_std) or MAGNeT's "cosine"
    context: int = -1             # restricted context: rows above the first attend +-context columns; -1 = everywhere


def trains_as_magnet(cfg: Config) -> bool:
    """Whether any of the MAGNeT fields above differs from SpecMaskGIT's default."""
    return cfg.span_len > 1 or cfg.by_row or cfg.ratio_draw != "gaussian" or cfg.context >= 0


PRESETS = {
    "full": Config(),
    # The toy world: 256-frame clips = 5 x 16 tokens; 2.9 M parameters, fast on 2 CPU cores.
    "tiny": Config(n_layers=6, width=192, n_heads=4, mlp=768, n_codes=256, cols=16),
}


# ---------------------------------------------------------------------------------------------------
# The transformer: pre-norm ViT blocks (as in Audio-MAE).
# ---------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x, attn_mask=None):                                      # (B, N, C)
        """attn_mask (N, N) bool, True = may attend: None here (every token sees all); magnet.py restricts it."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, C/h)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)      # bidirectional: no causal mask
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)): the pre-norm block of ViT / Audio-MAE."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp), nn.GELU(), nn.Linear(cfg.mlp, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask=None):
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class SpecMaskGIT(nn.Module):
    """Token grid + CLAP embedding -> logits over the codebook at every grid position (Fig. 4)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.n_codes, cfg.width)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.width))                    # the learned [M]
        # 2-D position: a learned vector per row plus one per column (frequency band + time), so the
        # model knows both where in the spectrum and when each token sits.
        self.row_emb = nn.Parameter(torch.zeros(cfg.rows, 1, cfg.width))
        self.col_emb = nn.Parameter(torch.zeros(1, cfg.cols, cfg.width))
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.width)                     # 512 -> 768 (Sec. 3.3)
        self.cond_pos = nn.Parameter(torch.zeros(cfg.width))                    # position of the CLAP token
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_codes)
        # MAE / MAGE's initialisation: Xavier-uniform linears, zero biases, every embedding N(0, 0.02). With
        # PyTorch's N(0, 1) token embeddings, [M], the positions and the CLAP fill would start 50x quieter.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.tok_emb.weight, self.mask_emb, self.row_emb, self.col_emb, self.cond_pos):
            nn.init.normal_(p, std=0.02)

    def embed(self, tokens, cond, mask, drop_cond=None):
        """The input sequence (B, R C + 1, W): token embeddings, masked positions filled, 2-D positions added,
        the CLAP token appended. cond None: unconditional; drop_cond (B,) bool: unconditional for some (CFG)."""
        cfg = self.cfg
        B, R, C = tokens.shape
        x = self.tok_emb(tokens).view(B, R * C, cfg.width)                      # (B, 265, W)
        # What a masked position shows: the projected CLAP embedding (the "conditional mask", Sec. 3.3),
        # or the learned [M] vector when unconditional or when the ablation turns it off.
        m = self.mask_emb.expand(B, cfg.width).to(x.dtype)                      # (B, W)
        if cond is None:
            c = m
        else:
            c = self.cond_proj(cond.to(self.cond_proj.weight.dtype)).to(x.dtype)  # (B, W)
            if drop_cond is not None:                                           # CFG: replace the condition ...
                c = torch.where(drop_cond[:, None], m, c)                       # ... by [M] everywhere it appears
        fill = c if cfg.conditional_mask else m                                 # (B, W)
        x = torch.where(mask.reshape(B, R * C, 1), fill[:, None, :], x)
        pos = (self.row_emb + self.col_emb[:, :C]).reshape(1, R * C, cfg.width)  # (1, 265, W)
        x = x + pos
        return torch.cat([x, (c + self.cond_pos)[:, None, :]], dim=1)           # (B, 266, W): CLAP token last

    def forward(self, tokens, cond, mask, drop_cond=None, attn_mask=None):
        """tokens (B, R, C) long, cond (B, 512) or None, mask (B, R, C) bool -> logits (B, R C, n_codes).
        attn_mask (R C + 1, R C + 1) bool or None: who may attend to whom (magnet.context_mask)."""
        x = self.embed(tokens, cond, mask, drop_cond)                           # (B, 266, W)
        for block in self.blocks:
            x = block(x, attn_mask)
        n = tokens.shape[1] * tokens.shape[2]
        return self.head(self.norm(x[:, :n]))                                   # (B, 265, n_codes)


# ---------------------------------------------------------------------------------------------------
# The training loss (Sec. 3.2, Eq. 1).
# ---------------------------------------------------------------------------------------------------

def mask_ratios(B: int, cfg: Config, generator=None) -> torch.Tensor:
    """(B,) training mask ratios from N(0.55, 0.25) truncated to (0, 1].
    The paper draws the ratio over 0-100 % centred at 55 % (Sec. 3.2); the std 0.25 is MAGE's, which
    truncates to [0.5, 1] and draws one ratio per batch; we keep the paper's range and draw one per sample.
    Drawn on the host (`generator` is a CPU one), so the rejection loop reads host numbers only: a GPU
    never waits for it."""
    ratios = []
    while len(ratios) < B:                                   # rejection sampling = truncation
        r = torch.randn(4 * B, generator=generator) * cfg.mask_std + cfg.mask_mean
        ratios += [v for v in r.tolist() if 0 < v <= 1]
    return torch.tensor(ratios[:B])


def sample_mask(B: int, n: int, cfg: Config, generator=None, device="cpu") -> torch.Tensor:
    """(B, n) bool training masks: per sample a mask_ratios ratio, then that many random positions (at
    least one, so every sample has a loss), moved to `device` at the end. magnet.span_mask draws spans
    instead, with the same signature."""
    n_masked = (mask_ratios(B, cfg, generator) * n).ceil().clamp(1, n).long()              # (B,)
    rank = torch.rand(B, n, generator=generator).argsort(dim=1).argsort(dim=1)             # (B, n) a random permutation per row
    return (rank < n_masked[:, None]).to(device, non_blocking=True)


def masked_loss(model, tokens, cond, generator=None, mask=None, drop_cond=None, draw_mask=sample_mask,
                scored=None, attn_mask=None):
    """Eq. 1: cross-entropy (label smoothing 0.1) at the masked positions only. Returns (loss, accuracy).
    draw_mask(B, n, cfg, generator, device) -> (B, n) bool makes the mask when none is given.
    scored (B, R, C) bool: where the loss falls, if not at every masked position (MAGNeT's training by row
    masks the rows above the one it scores); attn_mask: who may attend to whom (magnet.context_mask).

    Every position's loss is computed and weighted by `scored` (1 scored, 0 not), then divided by the
    number of scored positions: their mean, without selecting them by a boolean index, whose output size
    the host would have to wait for the device to know."""
    cfg = model.cfg
    B, R, C = tokens.shape
    if mask is None:
        mask = draw_mask(B, R * C, cfg, generator, tokens.device).view(B, R, C)
    if drop_cond is None and cond is not None:
        drop_cond = (torch.rand(B, generator=generator) < cfg.cfg_dropout).to(tokens.device, non_blocking=True)
    attention = {} if attn_mask is None else {"attn_mask": attn_mask}
    logits = model(tokens, cond, mask, drop_cond, **attention)                  # (B, 265, n_codes)
    weight = (mask if scored is None else scored).reshape(B * R * C).float()    # (B 265,) 1 where scored
    target = tokens.reshape(B * R * C)                                          # (B 265,)
    logits = logits.reshape(B * R * C, -1).float()                              # (B 265, n_codes)
    per_token = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing, reduction="none")  # (B 265,)
    count = weight.sum()
    loss = (per_token * weight).sum() / count
    acc = ((logits.argmax(-1) == target).float() * weight).sum() / count
    return loss, acc


# ---------------------------------------------------------------------------------------------------
# Sampling (Sec. 3.4, Eq. 2-3).
# ---------------------------------------------------------------------------------------------------

MASK_SCHEDULES = {                       # share of the unknown tokens still masked after a share r of the steps
    "cosine": lambda r: math.cos(math.pi / 2 * r),   # MaskGIT's and Sec. 3.4's: stays high longest
    "linear": lambda r: 1 - r,
    "sqrt": lambda r: 1 - math.sqrt(r),
}


def mask_schedule(step: int, steps: int, n_tokens: int, kind: str = "cosine") -> int:
    """How many tokens stay masked after `step` of `steps` (MaskGIT; cosine in Sec. 3.4). Early steps
    re-mask most of the grid (the first guesses are poor); late steps keep almost everything."""
    return math.floor(n_tokens * MASK_SCHEDULES[kind]((step + 1) / steps))


def guided_logits(model, tokens, cond, masked, t):
    """Eq. 2: l_u + t (l_c - l_u), from the model's logits with the prompt (l_c) and without it (l_u).
    Both passes run as one batch of 2B (one weight read per layer); at t = 0 Eq. 2 is l_u alone, so the
    conditional pass is left out there (speed/benchmark.py times what the two shortcuts buy)."""
    B, n = tokens.shape
    grid = tokens.view(B, model.cfg.rows, model.cfg.cols)
    mask = masked.view_as(grid)
    if cond is None or t == 0:
        return model(grid, None, mask)                                          # l_u only
    both = model(torch.cat([grid, grid]), torch.cat([cond, cond]), torch.cat([mask, mask]),
                 drop_cond=torch.arange(2 * B, device=tokens.device) >= B)      # (2B, n, K): first B conditional
    l_c, l_u = both[:B], both[B:]
    return l_u + t * (l_c - l_u)                                                # Eq. 2


def masked_counts(n_unknown: list, steps: int, kind: str = "cosine") -> list:
    """[B][steps]: how many of each sample's n_unknown positions stay masked after each step: the
    mask_schedule, clamped as in MaskGIT's decoder. Every step but the last keeps at least one token masked
    and commits at least one (with fewer unknown tokens than steps, committing wins); the last commits all."""
    counts = []
    for u in n_unknown:
        still_masked, row = u, []
        for s in range(steps):
            target = 0 if s == steps - 1 else min(max(mask_schedule(s, steps, u, kind), 1), still_masked - 1)
            still_masked = max(target, 0)
            row.append(still_masked)
        counts.append(row)
    return counts


def gumbel(shape, generator, device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u), u ~ U(0, 1), drawn on `device`."""
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def start_grid(n: int, cond, known_tokens=None, known_mask=None, batch_size=None, device="cpu"):
    """The grid a sampler starts from: token ids (B, n) and which of them are known (B, n) bool.
    Without known tokens nothing is known; with them, known_mask says which (default: all). B comes from
    the prompts, else the known tokens, else batch_size (unconditional sampling)."""
    B = cond.shape[0] if cond is not None else (known_tokens.shape[0] if known_tokens is not None else (batch_size or 1))
    if known_tokens is None:
        tokens = torch.zeros(B, n, dtype=torch.long, device=device)
        known = torch.zeros(B, n, dtype=torch.bool, device=device)
    else:
        tokens = known_tokens.reshape(B, n).to(device)
        known = (known_mask.reshape(B, n).to(device) if known_mask is not None else torch.ones_like(tokens, dtype=torch.bool))
        tokens = torch.where(known, tokens, 0)                                  # what masked positions hold is never read
    return tokens, known


@torch.no_grad()
def generate(model, cond, steps=16, guidance=3.0, temperature=1.5, known_tokens=None, known_mask=None, seed=None,
             batch_size=None, cfg_ramp=True, on_step=None):
    """MaskGIT sampling of (B, rows, cols) token grids.

    Start with every unknown position masked. At step s of S:
      1. one forward pass predicts logits at every position, with and without the prompt; the guided
         logits are l_u + t (l_c - l_u), t ramped linearly from 0 to `guidance` (Eq. 2: early steps explore,
         late steps follow the prompt);
      2. every masked position draws a token from softmax(guided logits);
      3. confidence = log p(drawn token) + t_g * Gumbel noise, t_g annealed linearly from `temperature`
         to 0 (Eq. 3: randomness in *which* tokens are kept, large early, none at the end);
      4. the masked_counts(s) least confident newly drawn tokens are masked again; the rest are kept.
    Known positions (inpainting, bandwidth extension) are never masked and never re-drawn.
    cfg_ramp=False keeps the scale at `guidance` from the first step (Table 1's "w/o CFG linear scheduler").
    The loop stays on the model's device, random numbers included, so a GPU never waits for the host.
    on_step(info): called after every step with that step's tensors (on the device; the decoding page
    copies them): info["committed"] marks the positions committed at step info["step"], from which a caller
    reads the decoding order (pipeline.sample_tokens). Returns tokens (B, rows, cols).
    """
    c = model.cfg
    n = c.rows * c.cols
    device = next(model.parameters()).device                                    # drawing and ranking run here too
    g = torch.Generator(device).manual_seed(0 if seed is None else seed)
    tokens, known = start_grid(n, cond, known_tokens, known_mask, batch_size, device)   # (B, n), (B, n)
    B = tokens.shape[0]
    masked = ~known                                                             # (B, n)
    n_unknown = masked.sum(1).tolist()                                          # differs per sample only by the caller
    counts = masked_counts(n_unknown, steps, c.mask_schedule)                   # [B][S], known before the loop
    n_masked_after = torch.tensor(counts, dtype=torch.long, device=device).view(B, steps)  # (B, S)
    total_after = [sum(row[s] for row in counts) for s in range(steps)]        # still masked after step s, all samples
    total_before = [sum(n_unknown)] + total_after[:-1]                          # still masked before step s
    for s in range(steps):
        if total_before[s] == 0:                                                # nothing left to draw
            break
        t = guidance * s / max(1, steps - 1) if cfg_ramp else guidance          # Eq. 2 ramp: 0 -> guidance
        t_g = temperature * (1 - (s + 1) / steps)                               # Eq. 3 anneal: -> 0
        logits = guided_logits(model, tokens, cond, masked, t)                  # (B, n, K)
        logp = logits.float().log_softmax(-1)                                   # (B, n, K)
        drawn = (logp + gumbel(logp.shape, g, device)).argmax(-1)              # 2. Gumbel-max: a draw from softmax
        drawn = torch.where(masked, drawn, tokens)                              # (B, n)
        logp_drawn = logp.gather(-1, drawn[..., None])[..., 0]                  # (B, n) log p(drawn token)
        confidence = logp_drawn + t_g * gumbel((B, n), g, device)               # 3. Eq. 3
        confidence = confidence.masked_fill(~masked, float("inf"))             # kept tokens are never re-masked
        # a position's rank = how many positions are less confident: argsort lists positions from least to
        # most confident, and argsort of that list gives each position its place in it
        rank = confidence.argsort(dim=1).argsort(dim=1)                         # (B, n): 0 = least confident
        remask = rank < n_masked_after[:, s, None]                              # 4. the least confident stay masked
        newly = masked & ~remask
        tokens = drawn
        masked = remask & masked
        if on_step is not None:
            on_step(dict(step=s, steps=steps, n_masked=total_after[s], committed=newly, masked=masked, known=known,
                         belief=tokens, logp_drawn=logp_drawn, cfg_scale=t, temperature=t_g,
                         schedule=f"{c.mask_schedule} schedule"))
    return tokens.view(B, c.rows, c.cols)


# ---------------------------------------------------------------------------------------------------
# Training: the optimiser and one step (train.py runs the loop).
# ---------------------------------------------------------------------------------------------------

class Trainer:
    """The model, AdamW (betas 0.9, 0.95, weight decay 0.05: MAE's and MAGE's recipe; the paper names no
    optimiser) and one optimisation step with gradient clipping at 1.0 (train.py runs the loop).
    loss(model, tokens, cond, generator) -> (loss, accuracy): Eq. 1 by default; a config with MAGNeT's
    fields needs MAGNeT's (magnet.training_loss)."""

    def __init__(self, cfg: Config, device: str = "cpu", lr: float = 1e-3 * 48 / 256,
                 amp_dtype: torch.dtype = torch.float32, loss=masked_loss):
        if trains_as_magnet(cfg) and loss is masked_loss:
            raise ValueError("a config with MAGNeT's training fields needs its loss: pass loss=magnet.training_loss.")
        self.cfg, self.device, self.amp_dtype, self.loss = cfg, device, amp_dtype, loss
        self.model = SpecMaskGIT(cfg).to(device)
        # what step() calls for the pass that learns: the model itself, unless the training loop puts a
        # stand-in here that also shares the gradients between copies of the model (training/edges.py)
        self.step_modules = {"model": self.model}
        # the masks of step s come from the seed s * mask_streams + mask_stream: one stream here; the training
        # loop may run several side by side, each copy of the model drawing its own masks (training/edges.py)
        self.mask_streams, self.mask_stream = 1, 0
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizers = [torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95),
                                            fused=device.startswith("cuda"))]          # one kernel for all weights on a GPU

    def step(self, batch: dict, step: int) -> dict:
        self.model.train()
        tokens = batch["tokens"].to(self.device, non_blocking=True)             # queued: the host does not wait
        cond = batch["cond"].to(self.device, non_blocking=True)
        g = torch.Generator().manual_seed(step * self.mask_streams + self.mask_stream)   # masks replay on --resume
        with torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            loss, acc = self.loss(self.step_modules["model"], tokens, cond, generator=g)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.detach(), "acc": acc.detach(), "grad_norm": grad_norm.detach()}   # read at log time

    def checkpoint(self) -> dict:
        return {"stage": "transformer", "config": dataclasses.asdict(self.cfg), "model": self.model.state_dict()}

    def state_dict(self) -> dict:
        return {**self.checkpoint(), "optimizer": self.optimizers[0].state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizers[0].load_state_dict(d["optimizer"])


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "full"
    model = SpecMaskGIT(PRESETS[name])
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    n = model.cfg.rows * model.cfg.cols
    print("step:   " + " ".join(f"{s + 1:4d}" for s in range(16)))
    print("masked: " + " ".join(f"{mask_schedule(s, 16, n):4d}" for s in range(16)))
