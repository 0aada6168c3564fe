"""Every preset of every model against its published values, written out here rather than read from the code.

A reference that reads its numbers from the configuration it checks agrees with any typo in it; these
tests do not. The sources:
  HiFiGAN     config_v1.json, config_v2.json, config_v3.json of the official repository (jik876/hifi-gan)
  SpecVQGAN   configs/vggsound_codebook.yaml of the official repository (v-iashin/SpecVQGAN)
  SpecMaskGIT Sec. 3.2-3.4 and 4 of the paper (24 blocks of width 768, 8 heads, MLP 3072; 16 steps,
              CFG 3, Gumbel temperature 1.5, label smoothing 0.1, mask ratio N(0.55, 0.25))
  the mel     HiFiGAN's configs again (n_fft 1024, hop 256, win 1024, 80 bins, 0-8000 Hz, 22050 Hz)
  the tiny presets: the README's "numbers next to the paper's" table and the toy recipe's comments.
"""

import inspect

import pytest

from speed import benchmark
import clap
import mel
import pipeline
import sample
import specmaskgit
import train
import vocoder
import vqgan


# ---------------------------------------------------------------------------------------------------
# HiFiGAN: the official config_v1/v2/v3.json, field for field.
# ---------------------------------------------------------------------------------------------------

HIFIGAN_PUBLISHED = {
    "v1": dict(resblock="1", upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4),
               upsample_initial_channel=512, resblock_kernel_sizes=(3, 7, 11),
               resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5))),
    "v2": dict(resblock="1", upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4),
               upsample_initial_channel=128, resblock_kernel_sizes=(3, 7, 11),
               resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5))),
    "v3": dict(resblock="2", upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8),
               upsample_initial_channel=256, resblock_kernel_sizes=(3, 5, 7),
               resblock_dilation_sizes=((1, 2), (2, 6), (3, 12))),
}
# What every official config shares: segment_size 8192, num_mels 80; the discriminators of models.py
# (periods 2, 3, 5, 7, 11; MPD 32 ... 1024 channels; MSD 128 ... 1024 on 3 scales); train.py's loss
# weights 45 (mel) and 2 (feature matching).
HIFIGAN_SHARED = dict(segment_size=8192, n_mels=80, periods=(2, 3, 5, 7, 11), mpd_width=32, msd_width=128,
                      msd_scales=3, mel_weight=45.0, fm_weight=2.0)


def as_tuples(v):
    return tuple(as_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize("name", ["v1", "v2", "v3"])
def test_hifigan_presets_are_the_official_configs(name):
    cfg = vocoder.PRESETS[name]
    for field, value in {**HIFIGAN_PUBLISHED[name], **HIFIGAN_SHARED}.items():
        assert as_tuples(getattr(cfg, field)) == value, (name, field)


def test_hifigan_full_preset_is_v1_and_the_generator_is_built_from_it():
    assert vocoder.PRESETS["full"] == vocoder.PRESETS["v1"]          # SpecMaskGIT uses V1 (Sec. 3.1)
    assert vocoder.LRELU_SLOPE == 0.1 and vocoder.LR_DECAY == 0.999
    # the built V3 generator has the published layers: transposed convs (k, stride), ResBlock2 dilations
    g = vocoder.Generator(vocoder.PRESETS["v3"])
    assert [(u.kernel_size[0], u.stride[0]) for u in g.ups] == [(16, 8), (16, 8), (8, 4)]
    assert [u.out_channels for u in g.ups] == [128, 64, 32]
    assert [[c.dilation[0] for c in b.convs] for b in g.resblocks[:3]] == [[1, 2], [2, 6], [3, 12]]
    assert [b.convs[0].kernel_size[0] for b in g.resblocks[:3]] == [3, 5, 7]
    g1 = vocoder.Generator(vocoder.PRESETS["v1"])
    assert [[c.dilation[0] for c in b.convs1] for b in g1.resblocks[:3]] == [[1, 3, 5]] * 3
    assert all(c.dilation[0] == 1 for b in g1.resblocks for c in b.convs2)


def test_hifigan_tiny_preset_is_v3_at_half_width_with_the_recipes_discriminators():
    tiny = vocoder.PRESETS["tiny"]
    assert as_tuples(tiny.upsample_rates) == (8, 8, 4) and tiny.resblock == "2"
    assert as_tuples(tiny.resblock_dilation_sizes) == ((1, 2), (2, 6), (3, 12))
    assert (tiny.upsample_initial_channel, tiny.mpd_width, tiny.msd_width, tiny.disc_start) == (128, 4, 16, 200)


# ---------------------------------------------------------------------------------------------------
# SpecVQGAN: configs/vggsound_codebook.yaml.
# ---------------------------------------------------------------------------------------------------

def test_vqgan_full_preset_is_specvqgans_vggsound_codebook_config():
    cfg = vqgan.PRESETS["full"]
    published = dict(base_channels=128,               # ddconfig.ch
                     channel_mult=(1, 1, 2, 2, 4),    # ddconfig.ch_mult
                     n_res_blocks=2,                  # ddconfig.num_res_blocks
                     attn_lowest=True,                # attn_resolutions [53]: the lowest, 848 / 16
                     z_channels=256, n_codes=1024, code_dim=256, in_channels=1, n_mels=80, dropout=0.0,
                     disc_start=30001, disc_weight=0.8, codebook_weight=1.0,
                     min_adapt_weight=1.0, max_adapt_weight=1.0)
    for field, value in published.items():
        assert as_tuples(getattr(cfg, field)) == value, field
    assert cfg.beta == 0.25 and cfg.disc_channels == 64 and cfg.disc_layers == 3   # Taming's quantiser and PatchGAN
    assert vqgan.DOWNSAMPLE == 16 and cfg.patch_frames == 16            # square 16 x 16 patches (Fig. 3)


def test_vqgan_full_encoder_has_attention_only_at_the_lowest_resolution():
    enc = vqgan.Encoder(vqgan.PRESETS["full"])
    assert [len(level.attns) for level in enc.levels] == [0, 0, 0, 0, 2]
    assert [level.blocks[-1].conv2.out_channels for level in enc.levels] == [128, 128, 256, 256, 512]
    assert [len(level.blocks) for level in enc.levels] == [2] * 5


def test_vqgan_tiny_preset_is_the_toy_recipes():
    tiny = vqgan.PRESETS["tiny"]
    assert (tiny.base_channels, as_tuples(tiny.channel_mult), tiny.n_res_blocks, tiny.dec_res_blocks) == (8, (1, 2, 4, 8, 8), 1, 1)
    assert (tiny.n_codes, tiny.code_dim, tiny.z_channels, tiny.disc_start) == (256, 64, 64, 800)   # 256 x 64 codebook
    assert tiny.patch_frames == 16


# ---------------------------------------------------------------------------------------------------
# The transformer and its sampler: the paper (Sec. 3.2-3.4, 4).
# ---------------------------------------------------------------------------------------------------

def test_transformer_full_preset_is_the_papers():
    cfg = specmaskgit.PRESETS["full"]
    published = dict(n_layers=24, width=768, n_heads=8, mlp=3072, n_codes=1024, rows=5, cols=53, cond_dim=512,
                     label_smoothing=0.1, mask_mean=0.55, mask_std=0.25, cfg_dropout=0.1,
                     conditional_mask=True, mask_schedule="cosine")
    for field, value in published.items():
        assert getattr(cfg, field) == value, field


def test_sampling_defaults_are_the_papers_16_steps_cfg_3_gumbel_1_5():
    for fn in (specmaskgit.generate, pipeline.text_to_audio, pipeline.inpaint, pipeline.bandwidth_extension):
        p = inspect.signature(fn).parameters
        assert (p["steps"].default, p["guidance"].default, p["temperature"].default) == (16, 3.0, 1.5), fn.__name__
    args = sample.parse_args(["rain on a roof"])
    assert (args.steps, args.cfg, args.temperature) == (16, 3.0, 1.5)
    assert (benchmark.STEPS, benchmark.CFG, benchmark.TEMPERATURE) == (16, 3.0, 1.5)   # what the speed table times


def test_transformer_training_defaults_are_the_papers():
    full = train.STAGE_DEFAULTS[("transformer", "full")]
    assert (full["batch_size"], full["steps"], full["warmup"]) == (48, 250_000, 5000)    # Sec. 4


def test_transformer_tiny_preset_is_the_demos():
    tiny = specmaskgit.PRESETS["tiny"]
    assert (tiny.n_layers, tiny.width, tiny.n_heads, tiny.mlp, tiny.n_codes, tiny.rows, tiny.cols) == (6, 192, 4, 768, 256, 5, 16)
    assert (tiny.label_smoothing, tiny.mask_mean) == (0.1, 0.55)          # the method's values stay


# ---------------------------------------------------------------------------------------------------
# The mel (HiFiGAN's) and CLAP's width.
# ---------------------------------------------------------------------------------------------------

def test_mel_constants_are_hifigans():
    assert (mel.SR, mel.N_FFT, mel.HOP, mel.WIN, mel.N_MELS, mel.FMIN, mel.FMAX) == (22050, 1024, 256, 1024, 80, 0, 8000)
    assert (mel.CLIP_SAMPLES, mel.CLIP_FRAMES, mel.TOY_SAMPLES) == (217088, 848, 65536)
    assert (mel.DB_MIN, mel.DB_MAX) == (-80, 20)                          # Sec. 3.1's normalisation range
    fb = mel.mel_filterbank()
    assert fb.shape == (80, 513)
    hz = [i * 22050 / 1024 for i in range(513)]
    top = max(i for i in range(513) if fb[:, i].max() > 0)                 # the last FFT bin any filter reads
    assert hz[top] < 8000 < hz[top + 1] + 22050 / 1024                     # the filterbank ends at 8 kHz


def test_clap_embedding_is_laion_claps_512_and_its_presets_are_fixed():
    assert clap.EMBED_DIM == 512 and clap.LAION_SR == 48000
    for name in ("full", "tiny"):
        assert clap.PRESETS[name].embed_dim == 512
    tiny = clap.PRESETS["tiny"]
    assert (as_tuples(tiny.audio_channels), tiny.audio_hidden, tiny.text_width, tiny.text_layers) == ((16, 32, 64, 64), 128, 128, 1)
    assert (tiny.init_temperature, tiny.max_logit_scale) == (0.07, 100.0)  # CLIP's
