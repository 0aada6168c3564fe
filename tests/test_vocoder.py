"""vocoder.py: HiFiGAN sizes and shapes, discriminators, losses and training; formats/hifigan_format.py: the
official checkpoint format and weight-norm folding; vocoder.vocode and speed/fast.py's chunked inference."""

import copy
import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from speed import fast
from formats import hifigan_format
from ground import runtime
import mel
import vocoder
from ground.runtime import UserError, count_parameters

TINY = vocoder.PRESETS["tiny"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread avoids OpenMP's barrier waits, which on a busy 2-core
    machine made this file 10x slower (200 s instead of 20 s). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh(name: str, seed: int = 0) -> vocoder.Generator:
    """A randomly initialised generator whose weight-norm gains g are NOT the norms of v (a real test of g)."""
    torch.manual_seed(seed)
    g = vocoder.Generator(vocoder.PRESETS[name] if isinstance(name, str) else name)
    with torch.no_grad():
        for p_name, p in g.named_parameters():
            if p_name.endswith("original0"):                              # the gains g
                p.mul_(torch.rand_like(p) + 0.5)
    return g.eval()


def log_mel(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """A plausible natural-log mel: values around -6 (quiet) to 0 (loud)."""
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) - 4


def folded_parameters(name: str) -> int:
    return count_parameters(hifigan_format.remove_weight_norm(vocoder.Generator(vocoder.PRESETS[name])))


# --- sizes and shapes (HiFiGAN Table 5; SpecMaskGIT Sec. 4) ---

def test_v1_has_13_9_to_14_0_million_parameters():
    assert 13.9e6 <= folded_parameters("v1") <= 14.0e6                      # the paper's 13.92 M
    assert 13.9e6 <= count_parameters(vocoder.Generator(vocoder.PRESETS["v1"])) <= 14.0e6           # + the gains g


def test_v3_has_about_1_46_million_and_tiny_fits_the_demo_bundle():
    assert folded_parameters("v3") == pytest.approx(1.46e6, rel=0.01)
    assert folded_parameters("v2") == pytest.approx(0.92e6, rel=0.02)
    assert folded_parameters("tiny") <= 1.0e6
    assert vocoder.PRESETS["full"] == vocoder.PRESETS["v1"]


@pytest.mark.parametrize("name", ["v1", "v2", "v3", "tiny"])
def test_every_preset_upsamples_by_the_hop_size(name):
    cfg = vocoder.PRESETS[name]
    total = 1
    for u in cfg.upsample_rates:
        total *= u
    assert total == mel.HOP == 256


def test_848_frames_give_217088_samples():
    g = fresh("tiny")                                                      # same 8 x 8 x 4 upsampling as V3
    wav = vocoder.vocode(g, log_mel(848)[0], torch.float32)
    assert wav.shape == (mel.CLIP_SAMPLES,) == (217088,)
    assert wav.dtype == torch.float32 and wav.abs().max() <= 1.0           # tanh output
    with torch.no_grad():
        assert g(log_mel(5, batch=2)).shape == (2, 1, 5 * 256)


# --- the official checkpoint format (jik876/hifi-gan: {"generator": state_dict}, old weight-norm names) ---

def official_twin(g: vocoder.Generator) -> nn.Module:
    """The same network as `g`, but weight-normalised with PyTorch's OLD API, as the official code did.

    Its state_dict therefore has the official names (`weight_g`, `weight_v`) and shapes, produced by
    PyTorch itself rather than by our renaming, and its forward recomputes g * v / ||v|| with the old hook.
    """
    twin = hifigan_format.remove_weight_norm(vocoder.Generator(g.cfg))
    params = dict(g.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)                     # the old API is deprecated, not gone
        for name, m in twin.named_modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                torch.nn.utils.weight_norm(m)
                with torch.no_grad():
                    m.weight_g.copy_(params[f"{name}.parametrizations.weight.original0"])
                    m.weight_v.copy_(params[f"{name}.parametrizations.weight.original1"])
                    m.bias.copy_(params[f"{name}.bias"])
    return twin.eval()


@pytest.mark.parametrize("name", ["v1", "v2", "v3"])
def test_official_checkpoint_loads_with_inferred_config_and_bit_identical_output(name, tmp_path):
    g = fresh(name)
    twin = official_twin(g)
    state = twin.state_dict()
    # the official names and shapes (ConvTranspose1d normalises over its dim 0, the input channels)
    h_u = vocoder.PRESETS[name].upsample_initial_channel
    assert state["conv_pre.weight_g"].shape == (h_u, 1, 1)
    assert state["conv_pre.weight_v"].shape == (h_u, 80, 7)
    assert state["ups.0.weight_g"].shape == (h_u, 1, 1)
    assert "conv_post.bias" in state
    assert ("resblocks.0.convs1.0.weight_v" in state) == (name != "v3")
    assert ("resblocks.0.convs.1.weight_g" in state) == (name == "v3")
    path = tmp_path / f"generator_{name}"
    torch.save({"generator": state}, path)

    loaded = hifigan_format.load_vocoder(str(path))                               # config inferred from the shapes
    assert loaded.cfg == vocoder.PRESETS[name]
    assert not hifigan_format.has_weight_norm(loaded) and not loaded.training
    x = log_mel(4)
    with torch.no_grad():
        expected = g(x)                                                    # the original, weight norm on
        assert torch.equal(twin(x), expected)                              # the old-API twin computes the same
        assert torch.equal(loaded(x), expected)                            # bit-identical in fp32


def official_forward(state: dict, cfg: vocoder.Config, log_mel: torch.Tensor) -> torch.Tensor:
    """HiFiGAN's generator as a plain function of an official state dict, in float64.

    Written from the official key names and models.py's forward alone, without our Generator class:
    each weight is g * v / ||v|| (the norm over every dimension but the first) combined here by hand,
    leaky ReLU slope 0.1 everywhere except F.leaky_relu's default 0.01 before conv_post, then tanh.
    """
    def weight(name):
        g, v = state[name + ".weight_g"].double(), state[name + ".weight_v"].double()
        norm = v.pow(2).sum(dim=tuple(range(1, v.dim())), keepdim=True).sqrt()
        return g * v / norm

    def conv(x, name, dilation=1):
        w = weight(name)
        pad = dilation * (w.shape[-1] - 1) // 2                                 # "same" length
        return F.conv1d(x, w, state[name + ".bias"].double(), dilation=dilation, padding=pad)

    n_kernels = len(cfg.resblock_kernel_sizes)
    x = conv(log_mel.double(), "conv_pre")
    for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), weight(f"ups.{i}"), state[f"ups.{i}.bias"].double(),
                               stride=u, padding=(k - u) // 2)
        xs = 0
        for j, dilations in enumerate(cfg.resblock_dilation_sizes):
            block, h = f"resblocks.{i * n_kernels + j}", x
            for m, d in enumerate(dilations):
                if cfg.resblock == "1":
                    t = conv(F.leaky_relu(h, 0.1), f"{block}.convs1.{m}", d)
                    h = h + conv(F.leaky_relu(t, 0.1), f"{block}.convs2.{m}")
                else:
                    h = h + conv(F.leaky_relu(h, 0.1), f"{block}.convs.{m}", d)
            xs = xs + h
        x = xs / n_kernels
    return torch.tanh(conv(F.leaky_relu(x), "conv_post"))                   # default slope 0.01


@pytest.mark.parametrize("name", ["v1", "v3"])
def test_an_official_state_dict_runs_as_the_official_forward_computes_it(name):
    state = hifigan_format.to_official_names(fresh(name).state_dict())       # weight_g / weight_v names
    assert not any("parametrizations" in k for k in state)
    loaded = hifigan_format.load_vocoder({"generator": state})
    x = log_mel(6)
    with torch.no_grad():
        ours = loaded(x).double()
    expected = official_forward(state, vocoder.PRESETS[name], x)
    assert ours.shape == expected.shape == (1, 1, 6 * 256)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_renaming_round_trips_between_old_and_new_weight_norm_names():
    state = fresh("v3").state_dict()
    official = hifigan_format.to_official_names(state)
    assert "resblocks.2.convs.1.weight_v" in official and not any("parametrizations" in k for k in official)
    back = hifigan_format.from_official_names(official)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ["v1", "v2", "v3"])
def test_config_inference_picks_the_right_version_from_shapes(name):
    state = vocoder.Generator(vocoder.PRESETS[name]).state_dict()
    assert hifigan_format.infer_config(state)[0] == name
    assert hifigan_format.infer_config(hifigan_format.to_official_names(state))[0] == name
    plain = hifigan_format.remove_weight_norm(vocoder.Generator(vocoder.PRESETS[name])).state_dict()   # already folded
    assert hifigan_format.infer_config(plain)[0] == name


def test_a_checkpoint_of_another_config_is_a_user_error_naming_the_mismatch(tmp_path):
    path = tmp_path / "generator_v3"
    torch.save({"generator": hifigan_format.to_official_names(fresh("v3").state_dict())}, path)
    with pytest.raises(UserError, match="upsample_initial_channel=256"):
        hifigan_format.load_vocoder(str(path), config="v1")
    with pytest.raises(UserError, match="resblock='2'"):
        hifigan_format.load_vocoder(str(path), config="v2")
    # our own format: the stored config is checked against the one asked for
    ckpt = vocoder.Trainer(TINY).checkpoint()
    with pytest.raises(UserError, match="upsample_initial_channel"):
        hifigan_format.load_vocoder(ckpt, config="v3")
    # a state that fits no official shape
    with pytest.raises(UserError, match="match none"):
        hifigan_format.load_vocoder({"generator": ckpt["model"]})
    with pytest.raises(UserError, match="v1, v2, v3"):
        hifigan_format.load_vocoder(ckpt, config="v4")
    with pytest.raises(UserError, match="vqgan"):
        hifigan_format.load_vocoder({"stage": "vqgan", "config": {}, "model": {}})


def test_our_checkpoint_round_trips_through_a_file(tmp_path):
    trainer = vocoder.Trainer(TINY)
    path = tmp_path / "vocoder.pt"
    torch.save(trainer.checkpoint(), path)
    loaded = hifigan_format.load_vocoder(str(path))
    x = log_mel(8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trainer.generator.eval()(x), atol=1e-6)
    assert loaded.cfg == TINY


# --- fast inference ---

def test_removing_weight_norm_keeps_the_output():
    g = fresh("v3")
    x = log_mel(10)
    with torch.no_grad():
        before = g(x)
        after = hifigan_format.remove_weight_norm(g)(x)
    assert not hifigan_format.has_weight_norm(g)
    assert torch.allclose(before, after, atol=1e-6)


def test_chunked_inference_equals_the_plain_forward():
    g = hifigan_format.remove_weight_norm(fresh("v3"))
    x = log_mel(70, batch=2)
    with torch.no_grad():
        full = g(x)[:, 0]                                                   # (2, 17920)
    for chunk in (16, 1000):
        assert torch.allclose(fast.vocode_chunked(g, x, torch.float32, chunk=chunk), full, atol=1e-6)


def test_one_input_frame_reaches_no_further_than_the_margins():
    # the chunked path is exact only if vocoder_margins covers the true receptive field: measure it
    g = hifigan_format.remove_weight_norm(fresh("v1"))
    frames, f = 32, 16
    x = log_mel(frames)
    y = x.clone()
    y[..., f] += 1.0
    with torch.no_grad():
        changed = (g(x) - g(y))[0, 0].abs() > 0
    idx = changed.nonzero()[:, 0]
    reach = fast.vocoder_margins(g)[0]                                                  # frames of context on each side
    assert idx.min() >= (f - reach) * 256 and idx.max() < (f + 1 + reach) * 256
    assert idx.max() - idx.min() > 10 * 256                                 # and it really is wide (MRF)


# --- discriminators and losses (HiFiGAN Sec. 2.2-2.3) ---

def test_discriminators_give_5_period_and_3_scale_outputs():
    wav = torch.randn(2, 1, 8192) * 0.1
    mpd, msd = vocoder.MultiPeriodDiscriminator(TINY), vocoder.MultiScaleDiscriminator(TINY)
    scores, fmaps = mpd(wav)
    assert len(scores) == len(fmaps) == 5
    assert [d.period for d in mpd.discriminators] == [2, 3, 5, 7, 11]
    assert all(len(f) == 6 for f in fmaps)                                 # 5 convs + conv_post
    for d, f in zip(mpd.discriminators, fmaps):
        assert f[0].shape[-1] == d.period                                  # the waveform folded to width p
    scores, fmaps = msd(wav)
    assert len(scores) == len(fmaps) == 3
    assert all(len(f) == 8 for f in fmaps)                                 # 7 convs + conv_post
    assert scores[0].shape[0] == 2


def test_full_size_discriminators_have_the_official_widths():
    full = vocoder.PRESETS["v1"]
    p = vocoder.MultiPeriodDiscriminator(full).discriminators[0]
    assert [c.out_channels for c in p.convs] == [32, 128, 512, 1024, 1024]
    s = vocoder.MultiScaleDiscriminator(full).discriminators[1]
    assert [c.out_channels for c in s.convs] == [128, 128, 256, 512, 1024, 1024, 1024]
    assert [c.groups for c in s.convs] == [1, 4, 16, 16, 16, 16, 1]


def test_least_squares_losses():
    ones, zeros = [torch.ones(3, 4)], [torch.zeros(3, 4)]
    assert vocoder.discriminator_loss(ones, zeros).item() == 0               # a perfect discriminator
    assert vocoder.discriminator_loss(zeros, ones).item() == 2               # (1-0)^2 + 1^2
    assert vocoder.generator_adv_loss(ones).item() == 0                      # fooled
    assert vocoder.generator_adv_loss([torch.full((2,), 0.5)]).item() == 0.25
    f = [[torch.ones(2, 3), torch.zeros(4)]]
    g = [[torch.zeros(2, 3), torch.ones(4)]]
    assert vocoder.feature_matching_loss(f, g).item() == 2                   # mean |1| per layer, summed


def test_gan_losses_equal_a_sum_written_out_by_hand():
    # two sub-discriminators with fixed, unequal scores (float64), summed element by element in Python
    real = [torch.tensor([0.9, 0.2, 1.4], dtype=torch.float64), torch.tensor([[0.5, -0.3]], dtype=torch.float64)]
    fake = [torch.tensor([0.1, -0.4, 0.7], dtype=torch.float64), torch.tensor([[1.2, 0.0]], dtype=torch.float64)]
    mean = lambda xs: sum(xs) / len(xs)
    flat = lambda t: t.flatten().tolist()
    d_expected = sum(mean([(1 - r) ** 2 for r in flat(rs)]) + mean([f ** 2 for f in flat(fs)]) for rs, fs in zip(real, fake))
    g_expected = sum(mean([(1 - f) ** 2 for f in flat(fs)]) for fs in fake)
    assert vocoder.discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-12)   # Eq. 1
    assert vocoder.generator_adv_loss(fake).item() == pytest.approx(g_expected, rel=1e-12)         # Eq. 2
    # raising D(fake) towards 1 lowers the generator's loss and raises the discriminator's
    better = [f + 0.1 for f in fake]
    assert vocoder.generator_adv_loss(better) < vocoder.generator_adv_loss(fake)
    assert vocoder.discriminator_loss(real, better) > vocoder.discriminator_loss(real, fake)
    # feature matching (Eq. 4): mean |real - fake| per layer, summed over layers and sub-discriminators
    fr = [[torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 3.0, -1.0]])], [torch.tensor([0.5])]]
    ff = [[torch.tensor([1.5, 0.0]), torch.tensor([[1.0, 3.0, 1.0]])], [torch.tensor([-0.5])]]
    fm_expected = (0.5 + 2.0) / 2 + (1.0 + 0.0 + 2.0) / 3 + 1.0
    assert vocoder.feature_matching_loss(fr, ff).item() == pytest.approx(fm_expected, rel=1e-6)


def test_the_loss_mel_covers_the_full_band_and_the_input_mel_stops_at_8_khz():
    hz = torch.linspace(0, mel.SR / 2, mel.N_FFT // 2 + 1)                    # the STFT bins' frequencies
    top_loss = hz[mel.mel_filterbank(fmax=vocoder.LOSS_FMAX)[-1] > 0].max().item()
    top_input = hz[mel.mel_filterbank()[-1] > 0].max().item()
    assert top_loss > 10_900 and top_input < 8_000                          # official: fmax_for_loss null
    t = torch.arange(8192) / mel.SR
    low = 0.3 * torch.sin(2 * math.pi * 440 * t)[None]                       # (1, 8192)
    with_10k = low + 0.3 * torch.sin(2 * math.pi * 10_000 * t)[None]
    inner = slice(4, -4)                                                     # frames away from the padded edges
    a, b = mel.mel_spectrogram(low)[..., inner], mel.mel_spectrogram(with_10k)[..., inner]
    assert (b.exp() - a.exp()).abs().max() < 1e-3                           # the input mel does not see 10 kHz
    a, b = vocoder.loss_mel(low)[..., inner], vocoder.loss_mel(with_10k)[..., inner]
    assert (b.exp() - a.exp()).abs().max() > 0.1                            # the loss mel does
    assert (b - a)[0, -4:].amin(dim=-1).max() > 5                           # its 10 kHz band rises > e^5 in every frame
    assert vocoder.loss_mel(low).shape == (1, 80, 32)


def floats(metrics: dict) -> dict:
    """A step's metrics (0-d tensors, which train.py reads only at log lines) as numbers."""
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    return {k: float(v) for k, v in metrics.items()}


def gan_trainer(seed=0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(TINY, disc_start=0, segment_size=1024)
    return vocoder.Trainer(cfg), {"wav": torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)) * 0.1}


def test_trainer_generator_loss_is_45_mel_plus_adversarial_plus_2_feature_matching():
    t, clips = gan_trainer()
    y = t.segments(clips["wav"], 0)                                           # (2, 1024) whole clip
    generator = copy.deepcopy(t.generator)
    with torch.no_grad():
        y_hat = generator(mel.mel_spectrogram(y))[:, 0]                       # the input mel: 0-8 kHz
        mel_l1 = (vocoder.loss_mel(y_hat) - vocoder.loss_mel(y)).abs().mean().item()   # the loss mel: 0-11 kHz
    m = floats(t.step(clips, 0))                                              # 0-d tensors, read here
    assert m["mel_l1"] == pytest.approx(mel_l1, rel=1e-5)
    assert m["g_adv"] > 0 and m["fm"] > 0
    assert m["loss"] == pytest.approx(45 * m["mel_l1"] + m["g_adv"] + 2 * m["fm"], rel=1e-5)   # Eq. 6


def test_trainer_generator_loss_moves_with_the_feature_maps():
    # the same step twice, once with the MPD's feature maps of generated audio shifted by 0.5: only
    # feature matching sees it, so the loss must move by 2 x the change of the feature-matching term
    a, clips = gan_trainer()
    b = copy.deepcopy(a)
    plain = b.mpd.forward

    def shifted(wav):
        scores, fmaps = plain(wav)
        if torch.is_grad_enabled():                                           # the generated audio's pass
            fmaps = [[f + 0.5 for f in fm] for fm in fmaps]
        return scores, fmaps
    b.mpd.forward = shifted
    ma, mb = floats(a.step(clips, 0)), floats(b.step(clips, 0))
    assert ma["g_adv"] == pytest.approx(mb["g_adv"], rel=1e-4) and ma["mel_l1"] == pytest.approx(mb["mel_l1"], rel=1e-6)
    assert abs(mb["fm"] - ma["fm"]) > 0.05
    assert mb["loss"] - ma["loss"] == pytest.approx(2 * (mb["fm"] - ma["fm"]), rel=1e-3, abs=1e-4)


# --- training (train.py --stage vocoder) ---

def test_trainer_steps_resumes_and_writes_a_loadable_checkpoint():
    cfg = dataclasses.replace(TINY, disc_start=1, segment_size=2048)     # short crops keep the test fast
    clips = {"wav": torch.randn(2, 3000, generator=torch.Generator().manual_seed(0)) * 0.1}
    t = vocoder.Trainer(cfg)
    m0 = floats(t.step(clips, 0))                                           # mel loss only
    assert set(m0) == {"loss", "mel_l1"} and m0["loss"] == pytest.approx(45 * m0["mel_l1"], rel=1e-5)
    m1 = floats(t.step(clips, 1))                                           # + GAN
    assert {"d_loss", "g_adv", "fm", "mel_l1"} <= set(m1)
    assert all(torch.isfinite(torch.tensor(v)) for v in m1.values())
    # segments: one 8192-sample crop per clip, the same for the same step (resume-safe)
    assert t.segments(clips["wav"], 5).shape == (2, 2048)
    assert vocoder.Trainer(TINY).segments(clips["wav"], 5).shape == (2, 8192)   # shorter clips are zero-padded
    assert torch.equal(t.segments(clips["wav"], 5), t.segments(clips["wav"], 5))
    # resume: a fresh trainer loaded from the state holds the same weights and optimiser moments and
    # computes the same losses. (Later steps drift apart by float noise: CPU conv gradients are not
    # bitwise reproducible, and Adam's m / sqrt(v) blows noise on near-zero gradients up to ~lr.)
    u = vocoder.Trainer(cfg)
    u.load_state_dict(t.state_dict())
    for name in ("generator", "mpd", "msd"):
        a, b = getattr(t, name).state_dict(), getattr(u, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(u.opt_d.state_dict()["state"][0]["exp_avg_sq"], t.opt_d.state_dict()["state"][0]["exp_avg_sq"])
    a, b = floats(t.step(clips, 2)), floats(u.step(clips, 2))
    assert a["d_loss"] == b["d_loss"] and a["mel_l1"] == b["mel_l1"]     # computed before this step's updates
    with pytest.raises(UserError, match="mpd_width"):                     # train.py's --resume checks this first
        runtime.check_config(dataclasses.replace(cfg, mpd_width=8), t.state_dict()["config"], "vocoder run")
    assert vocoder.vocode(hifigan_format.load_vocoder(t.checkpoint()), log_mel(4)[0], torch.float32).shape == (1024,)


def test_hifigan_optimiser_and_lr_decay():
    t = vocoder.Trainer(TINY)
    group = t.opt_g.param_groups[0]
    assert isinstance(t.opt_g, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (2e-4, (0.8, 0.99), 0.01)
    # the official ExponentialLR(gamma=0.999) stepped once per epoch: no warm-up, a staircase
    assert [t.lr_factor(s, 800) for s in (0, 1, 799, 800, 1599, 1600)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.999, 0.999, 0.999 ** 2], abs=0)
    assert t.lr_factor(800 * 1000, 800) == pytest.approx(math.exp(1000 * math.log(0.999)))   # ~0.37 after 1000 epochs
