"""Layouts that keep every shape: inputs whose answer is known by construction, and attention written out.

A reshape with its axes swapped, padding on the wrong side or a pooling that loses a component leaves
every shape as it was, so shape tests pass them. Each test here builds an input where the right answer
is obvious (a click at a known sample, an impulse train of period p, a grid whose token at (r, c) is
r C + c) or computes the layer by hand, index by index, and compares.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clap
import mel
import specmaskgit
import vocoder
import vqgan

TINY_T = specmaskgit.PRESETS["tiny"]
TINY_VQ = vqgan.PRESETS["tiny"]


# ---------------------------------------------------------------------------------------------------
# The mel: which samples a frame reads (reflect padding of 384 on both sides, no centring).
# ---------------------------------------------------------------------------------------------------

def test_a_click_at_sample_256k_plus_128_lands_in_frame_k():
    # frame f reads samples 256 f - 384 ... 256 f + 639, so its Hann window peaks at sample 256 f + 128
    for k in (3, 10, 17):
        wav = torch.zeros(32 * mel.HOP)
        wav[mel.HOP * k + 128] = 1.0
        energy = mel.mel_spectrogram(wav).exp().sum(0)                        # (32,) per frame
        assert energy.argmax().item() == k
        assert torch.isclose(energy[k - 1], energy[k + 1], rtol=1e-4)           # symmetric about the click
        assert energy[k - 2] < 1e-3 * energy[k] and energy[k + 2] < 1e-3 * energy[k]   # outside their windows


def test_the_first_and_last_frames_of_an_asymmetric_ramp_are_the_reflect_padded_stft_by_hand():
    n = 20 * mel.HOP
    x = np.linspace(-0.5, 0.9, n) ** 3                                           # no symmetry to hide a mistake
    pad = (mel.N_FFT - mel.HOP) // 2                                             # 384
    padded = np.concatenate([x[pad:0:-1], x, x[-2:-pad - 2:-1]])                 # reflect: the edge sample not repeated
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(mel.WIN) / mel.WIN)        # periodic Hann
    fb = mel.mel_filterbank().double().numpy()
    got = mel.mel_spectrogram(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert got.shape == (80, 20)
    for f in (0, 1, 19):
        frame = padded[f * mel.HOP: f * mel.HOP + mel.N_FFT] * window
        spectrum = np.fft.rfft(frame)
        expected = fb @ np.sqrt(spectrum.real ** 2 + spectrum.imag ** 2 + 1e-9)   # linear mel magnitudes
        np.testing.assert_allclose(np.exp(got[:, f]), np.maximum(expected, 1e-5), rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The VQGAN: which token is which place of the grid.
# ---------------------------------------------------------------------------------------------------

def test_the_quantiser_gives_token_k_at_the_place_whose_vector_is_code_k():
    cfg = dataclasses.replace(TINY_VQ, n_codes=16, code_dim=3)
    vq = vqgan.VectorQuantizer(cfg).eval()
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)) * 10)
    want = torch.tensor([[[(r * 3 + c + b) % 16 for c in range(3)] for r in range(5)] for b in range(2)])  # (2, 5, 3)
    z = torch.zeros(2, 3, 5, 3)
    for b in range(2):
        for r in range(5):
            for c in range(3):
                z[b, :, r, c] = vq.codebook.weight[want[b, r, c]].detach()
    q, _, ids, _ = vq(z)
    assert torch.equal(ids, want)
    assert torch.equal(q, z)                                                     # each place gets its own code back


def test_downsampling_pads_at_the_end_so_output_ij_reads_input_2i_2j():
    down = vqgan.Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0                                       # read only the top-left tap
        down.conv.bias.zero_()
    x = torch.arange(1.0, 1 + 8 * 6).view(1, 1, 8, 6)
    assert torch.equal(down(x), x[:, :, ::2, ::2])
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0                                       # the bottom-right tap: past the end
    y = down(x)
    assert torch.equal(y[0, 0, :-1, :-1], x[0, 0, 2::2, 2::2]) and (y[0, 0, -1] == 0).all() and (y[0, 0, :, -1] == 0).all()


def test_vqgan_attention_is_softmax_of_q_k_over_sqrt_c_times_v_by_hand():
    torch.manual_seed(0)
    block = vqgan.AttnBlock(8, 4).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    h = block.norm(x)
    w, bias = block.qkv.weight[:, :, 0, 0], block.qkv.bias                     # (24, 8), (24,)
    pos = h.flatten(2).transpose(1, 2)                                           # (B, 15, 8): position p = row * 5 + col
    q, k, v = (pos @ w[i * 8:(i + 1) * 8].T + bias[i * 8:(i + 1) * 8] for i in range(3))
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v          # (B, 15, 8)
    out = a @ block.proj.weight[:, :, 0, 0].T + block.proj.bias                 # (B, 15, 8)
    expected = x + out.transpose(1, 2).reshape(2, 8, 3, 5)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# The transformer: flat position r * cols + c is grid place (r, c); attention by hand.
# ---------------------------------------------------------------------------------------------------

def test_flat_position_r_cols_plus_c_carries_row_r_and_column_c():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_T, n_layers=1, rows=3, cols=4, n_codes=16)
    model = specmaskgit.SpecMaskGIT(cfg).eval()
    with torch.no_grad():
        model.row_emb.copy_(torch.arange(3.0).view(3, 1, 1) * 100)               # row r: 100 r
        model.col_emb.copy_(torch.arange(4.0).view(1, 4, 1))                     # column c: c
        model.tok_emb.weight.copy_(torch.arange(16.0)[:, None] * 1000)          # token k: 1000 k
        model.mask_emb.fill_(-7.0)
    tokens = torch.arange(12).view(1, 3, 4)                                      # token at (r, c) = 4 r + c
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 2, 1] = True                                                         # one masked place: (2, 1)
    x = model.embed(tokens, None, mask)[0, :, 0]                                # (13,) first channel
    for r in range(3):
        for c in range(4):
            content = -7.0 if (r, c) == (2, 1) else 1000 * (4 * r + c)
            assert x[4 * r + c].item() == content + 100 * r + c, (r, c)


class PositionEcho(torch.nn.Module):
    """A stand-in transformer whose logits at flat position p are sure of token p (mod n_codes)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, cond, mask, drop_cond=None):
        B, R, C = tokens.shape
        target = torch.arange(R * C) % self.cfg.n_codes
        return (F.one_hot(target, self.cfg.n_codes).float() * 50).expand(B, -1, -1)   # (B, R C, K)


def test_generate_puts_the_token_of_flat_position_r_cols_plus_c_at_grid_place_r_c():
    cfg = dataclasses.replace(TINY_T, rows=5, cols=7, n_codes=64)
    out = specmaskgit.generate(PositionEcho(cfg), None, steps=4, guidance=0.0, temperature=0.0, batch_size=2)
    assert torch.equal(out, torch.arange(35).view(1, 5, 7).expand(2, -1, -1))
    known = torch.zeros(2, 5, 7, dtype=torch.long)
    known_mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    known_mask[:, 1, 3] = True                                                   # place (1, 3) is given: token 0
    out = specmaskgit.generate(PositionEcho(cfg), None, steps=4, guidance=0.0, temperature=0.0,
                               known_tokens=known, known_mask=known_mask)
    assert out[0, 1, 3] == 0 and out[0, 1, 4] == 11 and out[0, 2, 3] == 17


def attention_by_hand(x, w_qkv, b_qkv, w_out, b_out, heads, keep=None):
    """softmax(q k^T / sqrt(d)) v per head, in plain loops over heads; x (B, N, W) float64."""
    B, N, W = x.shape
    d = W // heads
    q, k, v = (x @ w_qkv[i * W:(i + 1) * W].T + b_qkv[i * W:(i + 1) * W] for i in range(3))   # (B, N, W) each
    outs = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)                                         # head h owns channels h d ... h d + d - 1
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d)     # (B, N, N)
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v[..., cols])               # (B, N, d)
    return torch.cat(outs, dim=-1) @ w_out.T + b_out


def test_transformer_attention_is_softmax_of_q_k_over_sqrt_d_times_v_by_hand():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_T, width=32, n_heads=4)
    attn = specmaskgit.Attention(cfg).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    expected = attention_by_hand(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, 4)
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


def test_clap_text_attention_is_softmax_of_q_k_over_sqrt_d_times_v_by_hand_and_ignores_padding():
    torch.manual_seed(0)
    block = clap.Block(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    a = x + attention_by_hand(block.norm1(x), block.qkv.weight, block.qkv.bias, block.out.weight, block.out.bias, 4, keep)
    expected = a + block.mlp(block.norm2(a))
    torch.testing.assert_close(block(x, keep), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# CLAP's pooling: mean and max over time of (channels x frequency rows) per frame; words: mean of the real ones.
# ---------------------------------------------------------------------------------------------------

def test_clap_audio_tower_pools_mean_and_max_over_time_of_channel_by_row_features():
    torch.manual_seed(0)
    enc = clap.AudioEncoder(clap.PRESETS["tiny"]).double().eval()
    wav = torch.randn(2, 64 * mel.HOP, dtype=torch.float64) * 0.1
    seen = {}
    enc.convs.register_forward_hook(lambda m, i, o: seen.update(maps=o))
    out = enc(wav)
    maps = seen["maps"]                                                          # (B, C, 5, F/16)
    B, C, R, T = maps.shape
    assert R == 5
    mixed = torch.zeros(B, enc.mix.out_channels, T, dtype=torch.float64)
    for c in range(C):                                                           # feature (c, r) is row c R + r of mix's input
        for r in range(R):
            mixed += enc.mix.weight[:, c * R + r, 0][None, :, None] * maps[:, c, r][:, None, :]
    mixed = F.gelu(mixed + enc.mix.bias[None, :, None])
    pooled = torch.cat([mixed.mean(-1), mixed.max(-1).values], dim=1)           # (B, 2H): mean, then max
    torch.testing.assert_close(out, enc.proj(pooled), rtol=1e-9, atol=1e-9)


def test_clap_text_tower_means_over_real_words_only():
    torch.manual_seed(0)
    enc = clap.TextEncoder(clap.PRESETS["tiny"], vocab_size=10).eval()
    alone = enc(torch.tensor([[3, 7]]))
    padded = enc(torch.tensor([[3, 7, 0, 0, 0], [1, 2, 4, 5, 6]]))
    torch.testing.assert_close(padded[:1], alone, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# HiFiGAN's discriminators: the period fold and the scale pooling.
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("period", [2, 3, 5, 7, 11])
def test_period_discriminator_turns_an_impulse_train_of_its_period_into_one_lit_column(period):
    d = vocoder.DiscriminatorP(period, width=2)
    seen = {}
    d.convs[0].register_forward_pre_hook(lambda m, i: seen.update(image=i[0]))
    n = 40 * period
    x = (torch.arange(n) % period == 0).float().view(1, 1, n)                  # 1 at 0, p, 2p, ...
    d(x)
    image = seen["image"]                                                        # (1, 1, 40, p)
    assert image.shape == (1, 1, 40, period)
    assert (image[..., 0] == 1).all() and (image[..., 1:] == 0).all()
    # a length that is not a multiple of p: reflect-padded at the end, the samples keep their places
    x = torch.randn(1, 1, n + 1)
    d(x)
    image = seen["image"]
    assert image.shape == (1, 1, 41, period)
    assert torch.equal(image.reshape(-1)[:n + 1], x.reshape(-1))
    assert torch.equal(image.reshape(-1)[n + 1:], x.reshape(-1).flip(0)[1:period])


def test_scale_discriminators_see_the_waveform_then_x2_then_x4_average_pooled():
    msd = vocoder.MultiScaleDiscriminator(dataclasses.replace(vocoder.PRESETS["tiny"], msd_width=16))
    seen = []
    for d in msd.discriminators:
        d.convs[0].register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    x = torch.randn(1, 1, 256)

    def pool_by_hand(y):                                                         # AvgPool1d(4, 2, padding 2): zeros count
        y = F.pad(y.reshape(-1), (2, 2))
        return torch.stack([y[2 * i:2 * i + 4].sum() / 4 for i in range((len(y) - 4) // 2 + 1)]).view(1, 1, -1)

    msd(x)
    assert torch.equal(seen[0], x)
    torch.testing.assert_close(seen[1], pool_by_hand(x))
    torch.testing.assert_close(seen[2], pool_by_hand(pool_by_hand(x)))


# ---------------------------------------------------------------------------------------------------
# The decoding page's axis: token row r covers mel bins 16 r ... 16 r + 15.
# ---------------------------------------------------------------------------------------------------

def test_the_pages_token_row_band_runs_from_the_centre_of_bin_16r_to_that_of_bin_16r_plus_15():
    from pictures import decoding_page
    fb = mel.mel_filterbank()                                                   # (80, 513)
    peak_hz = fb.argmax(1).double() * mel.SR / mel.N_FFT                         # each filter's peak, to one FFT bin
    for r in range(5):
        lo, hi = decoding_page.row_band_hz(r)
        assert abs(lo - peak_hz[16 * r]) <= mel.SR / mel.N_FFT and abs(hi - peak_hz[16 * r + 15]) <= mel.SR / mel.N_FFT, r
