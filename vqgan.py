"""
vqgan.py — SpecVQGAN, the spectrogram tokenizer: 16 x 16 mel patches <-> ids of a 1024-code codebook.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms for Efficient Audio Synthesis
and Beyond" (ISMIR 2024).
  Sec. 3.1  a modified SpecVQGAN turns each non-overlapping 16-by-16 (mel x time) patch of the mel,
            clipped to [-80, 20] dB and mapped to [-1, 1] (mel.normalize), into one token and back (Fig. 3)
  Sec. 4    the "VGGSound" codebook configuration of the SpecVQGAN repository, without the LPAPS loss;
            about 75 M parameters; 1024 codes of 256 dimensions; 80 x 848 mel -> 5 x 53 = 265 tokens

SpecVQGAN (Iashin & Rahtu, BMVC 2021) is the VQGAN of Esser et al. ("Taming Transformers", CVPR 2021)
applied to a spectrogram seen as a 1-channel image. Its three ideas, in the order of this file:
  1. a convolutional encoder that shrinks the image 16x on both axes, and a mirror-image decoder;
  2. a vector quantiser between them (van den Oord et al., "VQ-VAE", 2017): every encoder vector is
     replaced by its nearest codebook entry, so the image becomes a grid of integers, the tokens
     specmaskgit.py learns to generate (plus our addition: unused codes are re-seeded);
  3. besides the L1 reconstruction loss, a patch discriminator (pix2pix's PatchGAN) whose adversarial
     loss makes the decoder draw sharp, plausible detail instead of the blurry average L1 alone favours.

In:  normalised mels (B, 80, frames) in [-1, 1], frames a multiple of 16 (of Config.patch_frames)
Out: tokens (B, 5, frames / 16) long in [0, n_codes); reconstructed normalised mels (B, 80, frames)
     (with patch_frames 8, tokens half as wide in time: (B, 5, frames / 8))
Run alone: python vqgan.py [full|tiny]   # builds the model and prints its parameter counts
"""

import dataclasses
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import mel


@dataclass
class Config:
    # the input: a normalised log-mel is a 1-channel image of n_mels x frames (Sec. 3.1)
    n_mels: int = 80                  # mel bins (Sec. 4); a multiple of 16 (five token rows for 80)
    in_channels: int = 1
    patch_frames: int = 16            # frames per token: 16 = the paper's square 16 x 16 patch (Fig. 3); 8 gives
                                      # twice the tokens, each 93 ms long (a power of 2, the last downsamplings mel-only)
    # encoder / decoder ("VGGSound" codebook config of SpecVQGAN, Sec. 4)
    base_channels: int = 128          # width of the first level
    channel_mult: tuple = (1, 1, 2, 2, 4)   # width per level = base x mult; a 2x downsampling between levels
    n_res_blocks: int = 2             # ResNet blocks per encoder level
    dec_res_blocks: int = 3           # per decoder level (Taming's decoder has one more than the encoder)
    attn_lowest: bool = True          # self-attention after each ResNet block of the lowest-resolution level
    norm_groups: int = 32             # GroupNorm groups (every width must be divisible by it)
    z_channels: int = 256             # channels of the encoder's output
    dropout: float = 0.0
    # vector quantiser (Sec. 4: 1024 codes x 256 dims)
    n_codes: int = 1024
    code_dim: int = 256
    l2_codes: bool = False            # look codes up by cosine on the unit sphere (ViT-VQGAN's factorised codes, below)
    beta: float = 0.25                # commitment weight (VQ-VAE, Eq. 3 of van den Oord et al.)
    dead_code_steps: int = 200        # a code not chosen for this many training steps is re-seeded (0: never)
    # losses (SpecVQGAN's configs/vggsound_codebook.yaml; no LPAPS, Sec. 4)
    codebook_weight: float = 1.0
    disc_start: int = 30001           # steps of L1 + VQ only before the discriminator is switched on
    disc_weight: float = 0.8          # scales the adaptive weight of the adversarial term
    min_adapt_weight: float = 1.0     # the adaptive weight is clamped to [min, max] before disc_weight scales it:
    max_adapt_weight: float = 1.0     # SpecVQGAN's 1.0 / 1.0 make lambda = 0.8 constant (Taming: 0 / 1e4)
    disc_channels: int = 64           # PatchGAN width of its first layer
    disc_layers: int = 3              # PatchGAN's strided layers (pix2pix's n_layers)


PRESETS = {
    # 72.1 M parameters without the discriminator, 74.9 M with it: the paper's "around 75M" (Sec. 4)
    "full": Config(),
    # The toy world (data/toyworld.py): 256-frame clips -> 5 x 16 tokens, 0.94 M parameters. The full-resolution
    # levels, where a CPU spends most of its time, are only 8 and 16 channels wide. 256 codes of 64 dims:
    # enough for the 12 kinds of sound, few enough that all see use. The discriminator joins halfway (800 of
    # train.py's 1600 steps): without it the decoder draws the blurred average of a click or a trill.
    "tiny": Config(base_channels=8, channel_mult=(1, 2, 4, 8, 8), n_res_blocks=1, dec_res_blocks=1,
                   norm_groups=4, z_channels=64, n_codes=256, code_dim=64, dead_code_steps=50,
                   disc_start=800, disc_channels=16, disc_layers=2,
                   min_adapt_weight=0.0, max_adapt_weight=1e4),   # Taming's unclamped weight, which the toy recipe's settings assume
}

DOWNSAMPLE = 16   # four 2x downsamplings of the mel axis: one token row per 16 mel bins (Sec. 3.1, Fig. 3)


# ---------------------------------------------------------------------------------------------------
# Building blocks of the encoder and decoder (the Taming Transformers / SpecVQGAN layer set).
# ---------------------------------------------------------------------------------------------------

class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus the input (through a 1x1 conv when the width changes).
    The residual path lets a deep stack train: at initialisation each block is close to the identity."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):                                              # (B, c_in, H, W)
        h = self.conv1(F.silu(self.norm1(x)))                          # (B, c_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H x W positions of a feature map, with a residual. Only where
    the map is small (5 x 53 = 265 positions for a 10 s clip): a convolution sees a 3 x 3 neighbourhood,
    attention lets every patch look at the whole clip (e.g. a repeating sound)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)                # q, k, v in one 1x1 conv
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):                                              # (B, C, H, W)
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)               # 3 x (B, C, H, W)
        q, k, v = (t.flatten(2).transpose(1, 2) for t in (q, k, v))    # (B, H*W, C)
        h = F.scaled_dot_product_attention(q, k, v)                    # softmax(q k^T / sqrt(C)) v
        h = h.transpose(1, 2).reshape(B, C, H, W)                      # (B, H*W, C) -> (B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv after padding one row/column at the end (80 -> 40, 848 -> 424).
    With time=False only H: stride (2, 1), and a column of padding on each side keeps W."""

    def __init__(self, channels: int, time: bool = True):
        super().__init__()
        self.pad = (0, 1, 0, 1) if time else (1, 1, 0, 1)
        self.conv = nn.Conv2d(channels, channels, 3, stride=(2, 2 if time else 1))

    def forward(self, x):                                              # (B, C, H, W)
        return self.conv(F.pad(x, self.pad))                           # (B, C, H/2, W/2) or (B, C, H/2, W)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour copy, then a 3x3 conv to smooth (no checkerboard artefacts).
    With time=False only H, the mirror image of Downsample's."""

    def __init__(self, channels: int, time: bool = True):
        super().__init__()
        self.scale = (2.0, 2.0 if time else 1.0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):                                              # (B, C, H, W)
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))   # (B, C, 2H, 2W) or (B, C, 2H, W)


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResNet blocks (each followed by attention at the
    lowest resolution), then a resampling layer (None at the last level)."""

    def __init__(self, c_in, c_out, n_blocks, attn, resample, cfg):
        super().__init__()
        self.blocks = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, cfg.norm_groups, cfg.dropout)
                                    for i in range(n_blocks))
        self.attns = nn.ModuleList(AttnBlock(c_out, cfg.norm_groups) for _ in range(n_blocks if attn else 0))
        self.resample = resample

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.attns):
                x = self.attns[i](x)
        return self.resample(x) if self.resample is not None else x


class Middle(nn.Module):
    """ResNet block, attention, ResNet block at the lowest resolution (between encoder and code)."""

    def __init__(self, channels, cfg):
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout)
        self.attn = AttnBlock(channels, cfg.norm_groups)
        self.block2 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout)

    def forward(self, x):
        return self.block2(self.attn(self.block1(x)))


def time_halvings(cfg: Config) -> int:
    """How many of the 2x downsamplings also halve time: log2(patch_frames), 4 for the paper's 16 x 16."""
    halvings = len(cfg.channel_mult) - 1
    if cfg.patch_frames not in [2 ** k for k in range(halvings + 1)]:
        raise ValueError(f"patch_frames must be a power of 2 up to {2 ** halvings}, not {cfg.patch_frames}")
    return cfg.patch_frames.bit_length() - 1


class Encoder(nn.Module):
    """(B, 1, 80, F) -> (B, z_channels, 5, F/16): widths 128, 128, 256, 256, 512 (full preset), a 2x
    downsampling after every level but the last. The first log2(patch_frames) halve time as well as
    frequency, the rest frequency only (with patch_frames 8, the last: 5 x F/8)."""

    def __init__(self, cfg: Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        n, halve_time = len(widths), time_halvings(cfg)
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], cfg.n_res_blocks, cfg.attn_lowest and i == n - 1,
                  Downsample(widths[i], time=i < halve_time) if i < n - 1 else None, cfg)
            for i in range(n))
        self.mid = Middle(widths[-1], cfg)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x):                                              # (B, 1, 80, F)
        h = self.conv_in(x)                                            # (B, 128, 80, F)
        for level in self.levels:
            h = level(h)                                               # ... -> (B, 512, 5, F/patch_frames)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))                 # (B, z_channels, 5, F/patch_frames)


class Decoder(nn.Module):
    """The mirror image: (B, z_channels, 5, F/16) -> (B, 1, 80, F); the first upsamplings double frequency
    only where the encoder's last downsamplings halved it alone."""

    def __init__(self, cfg: Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult][::-1]   # 512, 256, 256, 128, 128
        n = len(widths)
        freq_only = n - 1 - time_halvings(cfg)                             # upsamplings before time doubles too
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[0], 3, padding=1)
        self.mid = Middle(widths[0], cfg)
        self.levels = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], cfg.dec_res_blocks, cfg.attn_lowest and i == 0,
                  Upsample(widths[i], time=i >= freq_only) if i < n - 1 else None, cfg)
            for i in range(n))
        self.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cfg.in_channels, 3, padding=1)   # the "last layer" of the adaptive weight

    def forward(self, z):                                              # (B, z_channels, 5, F/patch_frames)
        h = self.mid(self.conv_in(z))                                  # (B, 512, 5, F/patch_frames)
        for level in self.levels:
            h = level(h)                                               # ... -> (B, 128, 80, F)
        return self.conv_out(F.silu(self.norm_out(h)))                 # (B, 1, 80, F)


# ---------------------------------------------------------------------------------------------------
# The vector quantiser: nearest codebook entry and straight-through gradients (then: codebook upkeep).
# ---------------------------------------------------------------------------------------------------

class VectorQuantizer(nn.Module):
    """Replace every vector z (code_dim) by its nearest codebook entry e_k; k is the token.

    Training it (VQ-VAE, van den Oord et al. 2017, Eq. 3): argmin has no gradient, so the decoder's
    gradient is copied straight through to the encoder (z_q = z + (e_k - z).detach() has the value e_k
    and the gradient of z); the codebook loss ||sg[z] - e_k||^2 pulls the chosen codes towards the
    encoder outputs; the commitment loss beta ||z - sg[e_k]||^2 keeps the encoder near its codes.
    Taming's (and so SpecVQGAN's) legacy quantiser puts beta on the codebook term; we keep VQ-VAE's form.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_codes, self.code_dim, self.beta, self.l2 = cfg.n_codes, cfg.code_dim, cfg.beta, cfg.l2_codes
        self.dead_code_steps = cfg.dead_code_steps
        self.codebook = nn.Embedding(cfg.n_codes, cfg.code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.n_codes, 1.0 / cfg.n_codes)   # Taming's init
        # re-seeding's bookkeeping (below): steps_unused is saved, so a resumed run continues the same counts;
        # chosen (picks since the last step) and recent (<= n_codes newest encoder outputs) are not
        self.register_buffer("steps_unused", torch.full((cfg.n_codes,), cfg.dead_code_steps, dtype=torch.long))
        self.register_buffer("chosen", torch.zeros(cfg.n_codes), persistent=False)
        self.recent = None

    def project(self, v):
        """With l2_codes, vectors and codes live on the unit sphere (ViT-VQGAN, Yu et al. 2022, Sec. 3.2):
        the nearest code is the one of highest cosine, so a code's length cannot make it win or lose
        everywhere, and in few dimensions (8-32) many more codes stay in use. Without it, the identity."""
        return F.normalize(v, dim=-1) if self.l2 else v

    def lookup(self, ids):
        """Token ids (...) -> code vectors (..., D), the ones the search compared against."""
        return self.project(self.codebook(ids))

    def forward(self, z):                                              # (B, D, R, C)
        B, D, R, C = z.shape
        flat = self.project(z.permute(0, 2, 3, 1).reshape(-1, D))      # (N = B*R*C, D)
        # The search in fp32 even under autocast: bf16 distances round near-ties differently, and the
        # token cache (encoded without autocast) would then hold other codes than training chose.
        with torch.autocast(flat.device.type, enabled=False):
            x, w = flat.detach().float(), self.project(self.codebook.weight.float())   # (N, D), (K, D)
            d = x.pow(2).sum(1, keepdim=True) - 2 * x @ w.t() + w.pow(2).sum(1)[None]   # ||z||^2 - 2 z.e_k + ||e_k||^2, (N, K)
            ids = d.argmin(1)                                          # (N,) argmin_k ||z - e_k||^2: the tokens
        e = self.lookup(ids).to(flat.dtype)                            # (N, D)
        codebook_loss = F.mse_loss(e, flat.detach())                   # ||sg[z] - e||^2
        commit_loss = F.mse_loss(flat, e.detach())                     # ||z - sg[e]||^2
        vq_loss = codebook_loss + self.beta * commit_loss              # VQ-VAE Eq. 3
        q = flat + (e - flat).detach()                                 # straight-through: value e, gradient of z
        q = q.view(B, R, C, D).permute(0, 3, 1, 2)                     # (B, D, R, C)

        counts = torch.zeros(self.n_codes, device=ids.device).index_add_(0, ids, torch.ones(ids.shape, device=ids.device))  # (K,) picks per code
        p = counts / counts.sum()
        info = {"perplexity": torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum()),  # effective number of codes
                "used": (counts > 0).float().mean()}                   # fraction of the codebook in this batch
        if self.training:
            self.remember(flat, counts)
        return q, vq_loss, ids.view(B, R, C), info

    # --- keeping the codebook alive (our addition, the "codebook restart" of Jukebox, Dhariwal et al. 2020) ---
    # Only chosen codes get a gradient, so a code far from every encoder output never moves ("dead code").
    # One unchosen for `dead_code_steps` steps moves onto a random recent encoder output plus a little noise.
    # A fresh codebook counts as unused: the first step seeds every code it did not choose (a data-driven init).

    @torch.no_grad()
    def remember(self, flat, counts):
        """Training mode: add this batch's picks to `chosen` and keep up to n_codes of its vectors in `recent`."""
        self.chosen += counts
        keep = flat.to(self.codebook.weight.dtype)[torch.randperm(flat.shape[0], device=flat.device)[: self.n_codes]]
        old = self.recent if self.recent is not None else keep[:0]
        self.recent = torch.cat([keep, old])[: self.n_codes]           # the newest n_codes encoder outputs

    @torch.no_grad()
    def reseed_dead_codes(self, all_reduce=None, broadcast=None) -> torch.Tensor:
        """After each optimizer.step: re-seed the dead codes, return how many (0-d). Every code draws a
        candidate and only the dead ones take it: a fixed amount of work, no wait for the host.
        When several copies of the model train side by side, the training loop passes `all_reduce` (sum a tensor
        over the copies, in place) and `broadcast` (copy the first copy's tensor to all), so that every copy of
        the codebook agrees (Trainer.codebook_sync)."""
        if all_reduce is not None:
            all_reduce(self.chosen)                                    # count the picks of every copy
        self.steps_unused.add_(1).masked_fill_(self.chosen > 0, 0)     # in place: wrappers keep references to buffers
        self.chosen.zero_()
        if self.dead_code_steps <= 0 or self.recent is None:
            return torch.zeros((), dtype=torch.long)
        dead = self.steps_unused >= self.dead_code_steps               # (K,) bool, the same on every copy
        w = self.codebook.weight
        pick = torch.randint(len(self.recent), (self.n_codes,), device=w.device)
        noise = 0.01 * self.recent.std() * torch.randn(self.n_codes, self.code_dim, device=w.device)
        w.copy_(torch.where(dead[:, None], (self.recent[pick] + noise).to(w.dtype), w))   # two picks of one vector drift apart
        if broadcast is not None:
            broadcast(w.data)                                          # the first copy's new codes for all
        return dead.sum()

    def alive_fraction(self) -> torch.Tensor:
        """Fraction of codes chosen at least once within the last `dead_code_steps` training steps (0-d)."""
        return (self.steps_unused < max(self.dead_code_steps, 1)).float().mean()


# ---------------------------------------------------------------------------------------------------
# The tokenizer: encoder -> quantiser -> decoder.
# ---------------------------------------------------------------------------------------------------

class VQGAN(nn.Module):
    """SpecVQGAN (Fig. 3). Normalised mel (B, 80, F) <-> tokens (B, 5, F/16); F a multiple of patch_frames."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)        # encoder output -> code space
        self.quantizer = VectorQuantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)   # code space -> decoder input
        self.decoder = Decoder(cfg)

    def quantize(self, mel):
        """mel (B, 80, F) -> quantised latent (B, code_dim, 5, F/16), vq loss, tokens (B, 5, F/16), info."""
        z = self.quant_conv(self.encoder(mel[:, None]))                # (B, 1, 80, F) -> (B, code_dim, 5, F/16)
        return self.quantizer(z)

    @torch.no_grad()
    def encode(self, mel):
        """Normalised mel (B, 80, F) -> tokens (B, 5, F/16) long in [0, n_codes). No gradient (ids are integers)."""
        return self.quantize(mel)[2]

    def decode_latent(self, q):
        return self.decoder(self.post_quant_conv(q))[:, 0]            # (B, code_dim, 5, F/16) -> (B, 80, F)

    def decode(self, tokens):
        """Tokens (B, 5, F/16) long -> normalised mel (B, 80, F). Not clipped (mel.denormalize clips)."""
        q = self.quantizer.lookup(tokens).permute(0, 3, 1, 2)          # (B, 5, C, D) -> (B, D, 5, C)
        return self.decode_latent(q)

    def forward(self, mel):
        """mel (B, 80, F) -> (reconstruction (B, 80, F), vq loss, info with "tokens", "perplexity", "used")."""
        q, vq_loss, tokens, info = self.quantize(mel)
        info["tokens"] = tokens
        return self.decode_latent(q), vq_loss, info


# ---------------------------------------------------------------------------------------------------
# The adversary: a patch discriminator, its hinge loss, and the adaptive weight that balances it.
# ---------------------------------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., pix2pix, 2017), as in Taming Transformers and SpecVQGAN: a grid of real/fake
    verdicts, each on a 70 x 70 patch (3 layers). It judges local texture, exactly what L1 blurs away, and
    leaves the global layout to the reconstruction loss. Widths 64, 128, 256, 512, then 1 channel."""

    def __init__(self, cfg: Config):
        super().__init__()
        c = cfg.disc_channels
        layers = [nn.Conv2d(cfg.in_channels, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, cfg.disc_layers + 1):
            c_prev, c = c, cfg.disc_channels * min(2 ** i, 8)
            stride = 2 if i < cfg.disc_layers else 1                     # the last one keeps the resolution
            layers += [nn.Conv2d(c_prev, c, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(c, 1, 4, stride=1, padding=1)]             # one logit per patch
        self.net = nn.Sequential(*layers)
        for m in self.modules():                                        # pix2pix's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, mel):                                            # (B, 80, F)
        return self.net(mel[:, None])                                  # (B, 1, ~80/8, ~F/8) patch logits


def hinge_d_loss(logits_real, logits_fake):
    """Discriminator hinge loss: push real logits above +1 and fake ones below -1 (Lim & Ye 2017)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss, g_loss, last_layer: torch.Tensor, disc_weight: float,
                    min_weight: float = 0.0, max_weight: float = 1e4) -> torch.Tensor:
    """lambda = clamp(||grad_L(rec_loss)|| / (||grad_L(g_loss)|| + 1e-4), min, max) * disc_weight, L = the decoder's last layer.

    Taming Transformers, Eq. 7: the adversarial gradient is scaled to the size of the reconstruction
    gradient where both enter the decoder, so neither drowns the other. Taming clamps to [0, 1e4];
    SpecVQGAN's VGGSound config to [1, 1], i.e. lambda = disc_weight. lambda is a constant (detached).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, min_weight, max_weight).detach() * disc_weight


# ---------------------------------------------------------------------------------------------------
# Training: one step of the two-player game, used by train.py --stage vqgan.
# ---------------------------------------------------------------------------------------------------

class Trainer:
    """The VQGAN, its discriminator, their two optimisers, and one step of Taming's two-player training.

    Generator: L = L1(x, x_hat) + codebook_weight * L_vq + lambda * disc_factor * (-D(x_hat)), disc_factor
    0 before `disc_start` (an adversary against a decoder that still draws noise only destabilises it).
    Discriminator (from `disc_start` on): hinge loss on real mels vs the detached reconstructions.
    """

    def __init__(self, cfg: Config, device: str = "cpu", lr: float = 3.6e-5, amp_dtype: torch.dtype = torch.float32):
        # lr: Taming's (and SpecVQGAN's) 4.5e-6 x batch x GPUs, 3.6e-5 for batch 8 on one GPU (train.py sets it)
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.model = VQGAN(cfg).to(device).train()
        self.disc = PatchDiscriminator(cfg).to(device).train()
        # what step() calls for the passes that learn: the modules themselves, unless the training loop puts
        # stand-ins here that also share the gradients between copies of the model (training/edges.py). The
        # generator's verdict and the preview call self.disc and self.model: nothing of theirs is shared.
        self.step_modules = {"model": self.model, "disc": self.disc}
        # the codebook's upkeep (VectorQuantizer.reseed_dead_codes): alone here; the training loop fills in
        # all_reduce and broadcast when copies of the model train side by side (training/edges.py)
        self.codebook_sync = {}
        fused = device.startswith("cuda")                              # one optimiser kernel for all weights on a GPU
        self.opt_ae = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.5, 0.9), fused=fused)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9), fused=fused)
        self.optimizers = [self.opt_ae, self.opt_disc]

    def mels(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio (B, T) -> the tokenizer's input: HiFiGAN log-mel -> [-1, 1] (Sec. 3.1), (B, 80, F), F a multiple
        of patch_frames."""
        with torch.no_grad():
            x = mel.normalize(mel.mel_spectrogram(wav.to(self.device, non_blocking=True).float()))   # (B, 80, T/256) in [-1, 1]
        p = self.cfg.patch_frames
        frames = x.shape[-1] // p * p
        if frames == 0:
            raise ValueError(f"clips of {wav.shape[-1]} samples are shorter than one token column "
                             f"({p} frames = {p * mel.HOP} samples).")
        return x[..., :frames]                                          # whole token columns only

    def _autocast(self):
        return torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    def step(self, batch: dict, step: int) -> dict:
        x = self.mels(batch["wav"])                                     # audio (B, T) -> normalised mel (B, 80, F)
        disc_on = step >= self.cfg.disc_start
        model, disc = self.model, self.disc

        # --- generator (encoder, quantiser, decoder) ---
        with self._autocast():
            recon, vq_loss, info = self.step_modules["model"](x)        # (B, 80, F)
        rec_loss = (recon.float() - x).abs().mean()                     # L1 (no LPAPS, Sec. 4)
        loss = rec_loss + self.cfg.codebook_weight * vq_loss.float()
        metrics = {}
        if disc_on:
            disc.requires_grad_(False)                                  # only the decoder learns from this verdict
            with self._autocast():                                      # (the module itself: nothing to share)
                g_loss = -disc(recon).float().mean()                    # the decoder wants high "real" logits
            lam = adaptive_weight(rec_loss, g_loss, model.decoder.conv_out.weight, self.cfg.disc_weight,
                                  self.cfg.min_adapt_weight, self.cfg.max_adapt_weight)
            loss = loss + lam * g_loss
            disc.requires_grad_(True)
            metrics.update(g_loss=g_loss.detach(), d_weight=lam)
        self.opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_ae.step()
        reseeded = model.quantizer.reseed_dead_codes(**self.codebook_sync)

        # --- discriminator ---
        if disc_on:
            with self._autocast():
                d_loss = hinge_d_loss(self.step_modules["disc"](x), self.step_modules["disc"](recon.detach()))
            self.opt_disc.zero_grad(set_to_none=True)
            d_loss.float().backward()
            self.opt_disc.step()
            metrics["d_loss"] = d_loss.detach()

        metrics.update(loss=loss.detach(), l1=rec_loss.detach(), vq=vq_loss.detach(), ppl=info["perplexity"],
                       used=info["used"], alive=model.quantizer.alive_fraction(), reseeded=reseeded)
        return metrics                                                  # 0-d tensors: train.py reads them at log time

    @torch.no_grad()
    def preview(self, batch: dict):
        """(input, reconstruction) of the batch's first clip, normalised mels (1, 80, F) each, for the PNG."""
        x = self.mels(batch["wav"][:1])                                 # (1, 80, F)
        model = self.model.eval()
        recon = model(x)[0].float().clamp(-1, 1)                        # (1, 80, F)
        model.train()
        return x.cpu(), recon.cpu()

    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "model": self.model.state_dict(),
                "disc": self.disc.state_dict(), "opt_ae": self.opt_ae.state_dict(), "opt_disc": self.opt_disc.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])                          # train.py has checked d["config"]
        self.disc.load_state_dict(d["disc"])
        self.opt_ae.load_state_dict(d["opt_ae"])
        self.opt_disc.load_state_dict(d["opt_disc"])

    def checkpoint(self) -> dict:
        """The inference checkpoint: config + tokenizer weights (the discriminator is only for training)."""
        return {"stage": "vqgan", "config": dataclasses.asdict(self.cfg), "model": self.model.state_dict()}


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "full"
    if name not in PRESETS:
        sys.exit(f"usage: python vqgan.py [{'|'.join(PRESETS)}]")
    cfg = PRESETS[name]
    model, disc = VQGAN(cfg), PatchDiscriminator(cfg)
    count_parameters = lambda m: sum(p.numel() for p in m.parameters())
    parts = ", ".join(f"{p} {count_parameters(getattr(model, p)) / 1e6:.2f} M" for p in ("encoder", "quantizer", "decoder"))
    print(f"{name}: {parts}; tokenizer {count_parameters(model) / 1e6:.2f} M, with the discriminator "
          f"{(count_parameters(model) + count_parameters(disc)) / 1e6:.2f} M (the paper's ~75 M, Sec. 4)")
