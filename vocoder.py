"""
vocoder.py — HiFiGAN: natural-log mel spectrogram -> waveform, trainable here or loaded from the official weights.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms for Efficient Audio Synthesis
and Beyond" (ISMIR 2024).
  Sec. 3.1  the model generates mel spectrograms; a pretrained HiFiGAN vocoder turns them into sound
            (the mel of mel.py is HiFiGAN's own recipe, so the official weights fit it unchanged)
Vocoder: Kong, Kim & Bae, "HiFi-GAN: Generative Adversarial Networks for Efficient and High Fidelity
Speech Synthesis" (NeurIPS 2020), arXiv:2010.05646. Section numbers below marked "HiFiGAN" are that paper's.
  HiFiGAN Sec. 2.1  the generator: transposed convolutions upsample 256x, each followed by a
                    multi-receptive-field fusion (MRF) of parallel dilated residual blocks; Table 5
                    gives the V1/V2/V3 sizes
  HiFiGAN Sec. 2.2  the discriminators: multi-period (MPD, periods 2, 3, 5, 7, 11) and multi-scale (MSD)
  HiFiGAN Sec. 2.3  the losses: least-squares GAN (Eq. 1-2), mel L1 (Eq. 3), feature matching (Eq. 4),
                    combined with weights 45 and 2 (Eq. 5-6)
  HiFiGAN Sec. 4    AdamW, lr 2e-4, betas (0.8, 0.99), weight decay 0.01, lr x 0.999 every epoch;
                    random 8192-sample segments
The file follows the official implementation (github.com/jik876/hifi-gan, models.py): its order
(generator, discriminators, losses) and its parameter names (conv_pre, ups.N, resblocks.N.convs1.M /
convs2.M or convs.M, conv_post), so the released generators load unchanged; the generator's inference call
(vocode) follows it. formats/hifigan_format.py loads them (weight norm folded); speed/fast.py has a chunked
path that is faster on a CPU (fast.vocode_chunked).

In:  natural-log mel (B, 80, frames) from mel.mel_spectrogram (or mel.denormalize of the VQGAN output)
Out: waveform (B, frames * 256) at 22050 Hz in [-1, 1]
Run alone: python vocoder.py [v1|v2|v3|tiny]   # parameter counts, and one 848-frame clip vocoded
"""

import dataclasses
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import mel

LRELU_SLOPE = 0.1      # slope of every leaky ReLU in HiFiGAN, except one (see Generator.post)
LR_DECAY = 0.999       # HiFiGAN Sec. 4: the learning rate is multiplied by 0.999 after every epoch


@dataclass
class Config:
    # --- the generator (HiFiGAN Table 5 / config_v1.json; the field names are the official ones) ---
    resblock: str = "1"                          # "1": ResBlock1 (two convs per dilation), "2": ResBlock2 (one)
    upsample_rates: tuple = (8, 8, 2, 2)         # strides of the transposed convs; product = hop size 256
    upsample_kernel_sizes: tuple = (16, 16, 4, 4)    # k_u: twice the stride, so every output sample sees 2 inputs
    upsample_initial_channel: int = 512          # h_u: width after conv_pre, halved at every upsampling
    resblock_kernel_sizes: tuple = (3, 7, 11)    # k_r: one residual block per kernel size in each MRF
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))   # D_r: dilations inside each block
    n_mels: int = 80                             # mel bins in (Sec. 4 of SpecMaskGIT; fixed at 80 officially)
    # --- training (HiFiGAN Sec. 2.2-4) ---
    segment_size: int = 8192                     # random waveform crops per training example (0.37 s)
    periods: tuple = (2, 3, 5, 7, 11)            # MPD: primes, so the sub-discriminators overlap little
    mpd_width: int = 32                          # MPD channels: (w, 4w, 16w, 32w, 32w) = 32 ... 1024
    msd_width: int = 128                         # MSD channels: (w, w, 2w, 4w, 8w, 8w, 8w) = 128 ... 1024
    msd_scales: int = 3                          # MSD: raw audio, x2 and x4 average-pooled
    mel_weight: float = 45.0                     # lambda_mel (Eq. 6)
    fm_weight: float = 2.0                       # lambda_fm (Eq. 6)
    disc_start: int = 0                          # steps of mel-loss-only training before the GAN joins in


PRESETS = {
    "v1": Config(),                                                      # 13.93 M: the best quality
    "v2": Config(upsample_initial_channel=128),                          # 0.93 M: same shape, 4x narrower
    "v3": Config(resblock="2", upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8),
                 upsample_initial_channel=256, resblock_kernel_sizes=(3, 5, 7),
                 resblock_dilation_sizes=((1, 2), (2, 6), (3, 12))),     # 1.46 M: three upsamplings, ResBlock2
}
PRESETS["full"] = PRESETS["v1"]   # SpecMaskGIT uses the official V1 (Sec. 3.1)
# The toy world (data/toyworld.py): V3's layout at half width (~0.4 M parameters, still 8 x 8 x 4 = 256x), with
# discriminators ~1/8 as wide. The toy recipe (train.py, 250 steps) trains the mel loss alone for 200 steps,
# what helps most in a short run on a CPU; the last 50 add the adversary to show every loss at work.
PRESETS["tiny"] = dataclasses.replace(PRESETS["v3"], upsample_initial_channel=128, mpd_width=4, msd_width=16,
                                      disc_start=200)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a stride-1 dilated conv: it spans dilation * (kernel_size - 1) + 1 samples."""
    return dilation * (kernel_size - 1) // 2


# ---------------------------------------------------------------------------------------------------
# The generator (HiFiGAN Sec. 2.1, Fig. 1).
# ---------------------------------------------------------------------------------------------------

class ResBlock1(nn.Module):
    """HiFiGAN's residual block for V1/V2: for each dilation d, x = x + conv(lrelu(conv_d(lrelu(x)))).

    convs1[m] is dilated (d = 1, 3, 5: the receptive field grows fast), convs2[m] is not; each pair is
    one residual step, so the block can leave its input unchanged if that is best.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size)))
            for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, C, T) -> (B, C, T)
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = x + xt
        return x


class ResBlock2(nn.Module):
    """V3's lighter residual block: one dilated conv per residual step, x = x + conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple):
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, C, T) -> (B, C, T)
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """log-mel (B, 80, F) -> waveform (B, 1, 256 F) in [-1, 1] (HiFiGAN Fig. 1).

    conv_pre widens the 80 mel bins to h_u channels. Then, once per upsampling rate u: a transposed
    conv stretches time by u and halves the channels, and a multi-receptive-field fusion (MRF) block
    averages len(k_r) residual blocks with different kernel sizes and dilations, each looking at the
    signal over a different span (short ones for transients, long ones for periodic structure).
    Finally conv_post maps to one channel and tanh bounds the samples to [-1, 1].
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()        # flat list, block j of level i at i * num_kernels + j (official layout)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            # output length (T - 1) u - 2 (k - u) / 2 + k = T u exactly: padding (k - u) / 2 trims the overhang
            self.ups.append(weight_norm(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2)))
            ch //= 2
            for kr, dr in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(block(ch, kr, dr))
        self.conv_post = weight_norm(nn.Conv1d(ch, 1, 7, padding=3))
        # PyTorch's default initialisation, as the released models had: the official normal_(0, 0.01) comes
        # after weight_norm, whose hook recomputes the weight from g and v on every forward, undoing it.

    def upsample_level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Level i: transposed conv (time x u_i, channels / 2), then the MRF block (HiFiGAN Fig. 1)."""
        x = self.ups[i](F.leaky_relu(x, LRELU_SLOPE))                      # (B, C, T) -> (B, C/2, u T)
        blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
        xs = blocks[0](x)
        for b in blocks[1:]:
            xs = xs + b(x)
        return xs / self.num_kernels                                       # MRF: the average of the blocks

    def post(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv to one channel, then tanh. The official code uses F.leaky_relu's default slope
        (0.01) before it, not 0.1; the released weights expect it."""
        x = self.conv_post(F.leaky_relu(x, 0.01))                          # (B, C_last, T) -> (B, 1, T)
        return torch.tanh(x)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(log_mel)                                          # (B, 80, F) -> (B, h_u, F)
        for i in range(len(self.ups)):
            x = self.upsample_level(i, x)                                   # ... -> (B, h_u / 2^(i+1), F u_0 ... u_i)
        return self.post(x)                                                 # (B, 1, 256 F)


@torch.inference_mode()
def vocode(generator: Generator, log_mel: torch.Tensor, dtype: torch.dtype = torch.float32, forward=None) -> torch.Tensor:
    """The vocoder's inference call, the last stage of sampling: log-mel (80, F) or (B, 80, F) -> waveform
    (256 F,) or (B, 256 F), fp32.

    The weights keep their dtype; a lower `dtype` (bf16, fp16) runs the convolutions under autocast. `forward`
    is the generator itself unless given: speed/fast.vocode_chunked passes its chunked forward (the same
    waveform up to float rounding). Weight norm still on is recomputed at every call; for inference
    formats/hifigan_format folds it once (remove_weight_norm).
    """
    squeeze = log_mel.dim() == 2
    x = (log_mel[None] if squeeze else log_mel).to(generator.conv_pre.weight.dtype)   # (B, 80, F)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16)):
        wav = (forward or generator)(x)                                  # (B, 1, 256 F)
    wav = wav[:, 0].float()                                              # (B, 256 F)
    return wav[0] if squeeze else wav


# ---------------------------------------------------------------------------------------------------
# The discriminators (HiFiGAN Sec. 2.2, Fig. 2).
# ---------------------------------------------------------------------------------------------------

def conv_stack(x: torch.Tensor, convs, conv_post):
    """The body both discriminators share: convs with leaky ReLU, then a last conv to one channel.

    Returns the flattened realness scores and every layer's output (the feature maps of Eq. 4).
    """
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return x.flatten(1), fmap


class DiscriminatorP(nn.Module):
    """One MPD sub-discriminator: the waveform folded into a 2-D image of width `period`.

    Reshaping (B, 1, T) to (B, 1, T/p, p) puts samples p apart in one column; convolutions of kernel
    (5, 1) then only ever compare samples exactly p apart, so each sub-discriminator judges the
    periodic structure of one period (HiFiGAN Sec. 2.2). Feature maps are returned for Eq. 4.
    """

    def __init__(self, period: int, width: int = 32, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        chans = [1, width, 4 * width, 16 * width, 32 * width, 32 * width]   # 1 -> 32 -> ... -> 1024
        pad = (get_padding(kernel_size), 0)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(cin, cout, (kernel_size, 1), (stride if i < 4 else 1, 1), padding=pad))
            for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])))
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor):
        b, c, t = x.shape
        if t % self.period:                                                  # pad to a whole number of rows
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)                                    # (B, 1, T) -> (B, 1, T/p, p)
        return conv_stack(x, self.convs, self.conv_post)                     # (B, T'/p * p) realness scores


class DiscriminatorS(nn.Module):
    """One MSD sub-discriminator (MelGAN's): strided, grouped 1-D convolutions over the raw (or pooled) waveform."""

    def __init__(self, width: int = 128, spectral: bool = False):
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        w = width
        # (in, out, kernel, stride, groups), official sizes for w = 128
        layers = [(1, w, 15, 1, 1), (w, w, 41, 2, 4), (w, 2 * w, 41, 2, 16), (2 * w, 4 * w, 41, 4, 16),
                  (4 * w, 8 * w, 41, 4, 16), (8 * w, 8 * w, 41, 1, 16), (8 * w, 8 * w, 5, 1, 1)]
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(cin, cout, k, s, groups=g, padding=get_padding(k))) for cin, cout, k, s, g in layers)
        self.conv_post = norm(nn.Conv1d(8 * w, 1, 3, padding=1))

    def forward(self, x: torch.Tensor):
        return conv_stack(x, self.convs, self.conv_post)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, cfg.mpd_width) for p in cfg.periods)

    def forward(self, wav: torch.Tensor):
        """(B, 1, T) -> ([score per sub-discriminator], [[feature maps] per sub-discriminator])."""
        outs = [d(wav) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultiScaleDiscriminator(nn.Module):
    """MSD: one sub-discriminator shape on the waveform, x2 and x4 average-pooled (smoother views). The
    first, on raw audio, uses spectral norm (it stabilised training, HiFiGAN Sec. 2.2), the others weight norm."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorS(cfg.msd_width, spectral=i == 0) for i in range(cfg.msd_scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav: torch.Tensor):
        scores, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                wav = self.pool(wav)                                         # (B, 1, T) -> (B, 1, T/2 + 1)
            s, f = d(wav)
            scores.append(s)
            fmaps.append(f)
        return scores, fmaps


# ---------------------------------------------------------------------------------------------------
# Losses (HiFiGAN Sec. 2.3).
# ---------------------------------------------------------------------------------------------------

def discriminator_loss(real_scores, fake_scores) -> torch.Tensor:
    """Eq. 1, least squares (LSGAN): push D(real) to 1 and D(fake) to 0, summed over sub-discriminators."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(g ** 2) for r, g in zip(real_scores, fake_scores))


def generator_adv_loss(fake_scores) -> torch.Tensor:
    """Eq. 2: the generator wants every sub-discriminator to score its output as real (1)."""
    return sum(torch.mean((1 - g) ** 2) for g in fake_scores)


def feature_matching_loss(real_fmaps, fake_fmaps) -> torch.Tensor:
    """Eq. 4: L1 between the discriminators' hidden features of real and generated audio, every layer.

    A learned perceptual distance: matching what the discriminator looks at, not only its verdict.
    """
    return sum(torch.mean(torch.abs(r.detach() - g)) for rs, gs in zip(real_fmaps, fake_fmaps) for r, g in zip(rs, gs))


# The mel of the L1 loss (Eq. 3) is mel.py's recipe over the whole band, 0 to 11025 Hz (the official configs'
# fmax_for_loss: null); the input mel stops at 8 kHz, so the loss also judges what the generator puts above.
LOSS_FMAX = mel.SR / 2


def loss_mel(wav: torch.Tensor) -> torch.Tensor:
    """Natural-log mel up to 11025 Hz of `wav` (B, T) -> (B, 80, T / 256), for the mel L1 loss (Eq. 3)."""
    return mel.mel_spectrogram(wav, fmax=LOSS_FMAX)


# ---------------------------------------------------------------------------------------------------
# Training: one step of HiFiGAN's two-player game, used by train.py --stage vocoder.
# ---------------------------------------------------------------------------------------------------

class Trainer:
    """The generator, both discriminators, their two AdamW optimisers, and one training step.

    Each step cuts one random `segment_size` crop per clip (HiFiGAN trains on 8192-sample segments: the
    generator is fully convolutional, so short crops teach it everything and batches stay small), then
      1. discriminator step: L_D = Eq. 1 summed over MPD and MSD, on real vs detached generated audio;
      2. generator step: L_G = L_adv (Eq. 2) + 2 L_fm (Eq. 4) + 45 L_mel (Eq. 3), Eq. 6.
    Before cfg.disc_start only the mel term trains the generator (the tiny preset's quick start).
    """

    def __init__(self, cfg: Config, device: str = "cpu", lr: float = 2e-4, amp_dtype: torch.dtype = torch.float32):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.generator = Generator(cfg).to(device).train()
        self.mpd = MultiPeriodDiscriminator(cfg).to(device).train()
        self.msd = MultiScaleDiscriminator(cfg).to(device).train()
        # HiFiGAN Sec. 4: AdamW, beta1 0.8 (less momentum than usual: the adversarial target moves), beta2 0.99
        adamw = dict(lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
        adamw["fused"] = device.startswith("cuda")                          # one optimiser kernel for all weights on a GPU
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), **adamw)
        self.opt_d = torch.optim.AdamW(list(self.mpd.parameters()) + list(self.msd.parameters()), **adamw)
        self.optimizers = [self.opt_g, self.opt_d]
        # what step() calls for the passes that learn: the modules themselves, unless the training loop puts
        # stand-ins here that also share the gradients between copies of the model (training/edges.py)
        self.step_modules = {"generator": self.generator, "mpd": self.mpd, "msd": self.msd}

    def lr_factor(self, step: int, epoch_steps: int) -> float:
        """HiFiGAN's schedule (Sec. 4): lr x 0.999 ** epoch, no warm-up (ExponentialLR stepped per epoch).

        train.py uses it instead of warm-up + cosine. LJSpeech's ~13k clips at batch 16: ~800 steps an epoch.
        """
        return LR_DECAY ** (step // max(1, epoch_steps))

    def _autocast(self):
        return torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    def segments(self, wav: torch.Tensor, step: int) -> torch.Tensor:
        """One random segment_size crop per clip: (B, T) -> (B, segment_size), zero-padded if a clip is short.

        The crop offsets depend only on `step` (a generator seeded by it), so a resumed run cuts the same ones.
        They are drawn on the host and the crops gathered where `wav` lives: no offset is read back.
        """
        n = self.cfg.segment_size
        if wav.shape[1] < n:
            return F.pad(wav, (0, n - wav.shape[1]))
        g = torch.Generator().manual_seed(1_000_003 * (step + 1))
        starts = torch.randint(0, wav.shape[1] - n + 1, (wav.shape[0], 1), generator=g)       # (B, 1)
        index = starts.to(wav.device, non_blocking=True) + torch.arange(n, device=wav.device)  # (B, n)
        return wav.gather(1, index)                                                           # (B, n)

    def step(self, batch: dict, step: int) -> dict:
        y = self.segments(batch["wav"].to(self.device, non_blocking=True).float(), step)   # (B, 8192)
        with torch.no_grad():
            y_mel = mel.mel_spectrogram(y)                                   # (B, 80, 32) the input mel, 0-8 kHz
            y_mel_loss = loss_mel(y)                                         # (B, 80, 32) the loss mel, 0-11 kHz
        y = y[:, None]                                                       # (B, 1, 8192), as the discriminators take it
        use_gan = step >= self.cfg.disc_start
        generator, mpd, msd = (self.step_modules[name] for name in ("generator", "mpd", "msd"))
        with self._autocast():
            y_hat = generator(y_mel)                                         # (B, 1, 8192)
        metrics = {}

        # --- 1. discriminators: real -> 1, generated -> 0 (Eq. 1) ---
        if use_gan:
            with self._autocast():
                real_p, _ = mpd(y)
                fake_p, _ = mpd(y_hat.detach())
                real_s, _ = msd(y)
                fake_s, _ = msd(y_hat.detach())
                loss_d = discriminator_loss(real_p, fake_p) + discriminator_loss(real_s, fake_s)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.float().backward()
            self.opt_d.step()
            metrics["d_loss"] = loss_d.detach()

        # --- 2. generator: mel L1 (Eq. 3) + adversarial (Eq. 2) + feature matching (Eq. 4), Eq. 6 ---
        loss_l1 = F.l1_loss(loss_mel(y_hat[:, 0].float()), y_mel_loss)    # the mel in fp32 (STFT)
        loss = self.cfg.mel_weight * loss_l1
        if use_gan:
            self.mpd.requires_grad_(False)                                   # gradients flow through, not into, D
            self.msd.requires_grad_(False)
            with self._autocast():
                with torch.no_grad():                                        # real features are targets only
                    _, real_fp = mpd(y)
                    _, real_fs = msd(y)
                fake_p, fake_fp = mpd(y_hat)
                fake_s, fake_fs = msd(y_hat)
                loss_adv = generator_adv_loss(fake_p) + generator_adv_loss(fake_s)
                loss_fm = feature_matching_loss(real_fp, fake_fp) + feature_matching_loss(real_fs, fake_fs)
            loss = loss + loss_adv.float() + self.cfg.fm_weight * loss_fm.float()
            self.mpd.requires_grad_(True)
            self.msd.requires_grad_(True)
            metrics.update(g_adv=loss_adv.detach(), fm=loss_fm.detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        metrics.update(loss=loss.detach(), mel_l1=loss_l1.detach())
        return metrics                                                       # 0-d tensors: train.py reads them at log time

    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "generator": self.generator.state_dict(),
                "mpd": self.mpd.state_dict(), "msd": self.msd.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        for name in ("generator", "mpd", "msd", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(d[name])

    def checkpoint(self) -> dict:
        """The inference checkpoint: config + weight-normed generator weights (hifigan_format.load_vocoder folds them)."""
        return {"stage": "vocoder", "config": dataclasses.asdict(self.cfg), "model": self.generator.state_dict()}


if __name__ == "__main__":
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    names = sys.argv[1:] or ["v1", "v2", "v3", "tiny"]
    for name in names:
        if name not in PRESETS:
            sys.exit(f"usage: python vocoder.py [{'|'.join(PRESETS)}]")
        cfg = PRESETS[name]
        g = Generator(cfg)
        print(f"{name}: generator {n_params(g) / 1e6:.2f} M, MPD {n_params(MultiPeriodDiscriminator(cfg)) / 1e6:.2f} M, "
              f"MSD {n_params(MultiScaleDiscriminator(cfg)) / 1e6:.2f} M")
        with torch.no_grad():
            print(f"  848 frames -> waveform {tuple(g(torch.randn(1, 80, 848) - 5)[:, 0].shape)}")
