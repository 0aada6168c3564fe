"""Plumbing the method depends on, each one line a refactor can break: which parameters decay, the data
order per epoch, what the transformer's token cache holds, which layers the int8 path converts and what
happens without the int8 API, and what fast Griffin-Lim's momentum buys.
"""

import argparse
import dataclasses
import re
import sys

import pytest
import torch

import clap
from data import datasets as data
from speed import fast
import mel
import specmaskgit
import train
from training import edges as training_edges
import vocoder
import vqgan
from ground.runtime import build_model, save_checkpoint


def decay_groups(optimizer, named_parameters):
    """{weight decay: set of parameter names} of an optimiser over `named_parameters`."""
    name_of = {id(p): n for n, p in named_parameters}
    groups = {}
    for group in optimizer.param_groups:
        groups.setdefault(group["weight_decay"], set()).update(name_of[id(p)] for p in group["params"])
    return groups


# ---------------------------------------------------------------------------------------------------
# Weight decay: matrices and embeddings decay; gains, biases, [M] and the CLAP token's position do not.
# ---------------------------------------------------------------------------------------------------

def test_transformer_decays_exactly_its_matrices_and_embedding_tables():
    cfg = specmaskgit.PRESETS["tiny"]
    trainer = specmaskgit.Trainer(dataclasses.replace(cfg, n_layers=2))
    groups = decay_groups(trainer.optimizers[0], trainer.model.named_parameters())
    matrices = {"tok_emb.weight", "row_emb", "col_emb", "cond_proj.weight", "head.weight"}
    for i in range(2):
        matrices |= {f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.proj.weight",
                     f"blocks.{i}.mlp.0.weight", f"blocks.{i}.mlp.2.weight"}
    assert set(groups) == {0.05, 0.0}                                            # MAE / MAGE's 0.05
    assert groups[0.05] == matrices
    assert {"mask_emb", "cond_pos", "head.bias", "norm.weight", "blocks.0.norm1.weight",
            "blocks.1.attn.qkv.bias"} <= groups[0.0]
    assert trainer.optimizers[0].defaults["betas"] == (0.9, 0.95)


def test_clap_decays_weights_but_not_the_word_table_gains_biases_or_temperature():
    trainer = clap.Trainer(clap.PRESETS["tiny"], vocab=["a", "dog", "barks"])
    groups = decay_groups(trainer.optimizers[0], trainer.model.named_parameters())
    assert set(groups) == {0.01, 0.0}
    assert {"audio.convs.0.weight", "audio.mix.weight", "audio.proj.weight", "text.proj.weight",
            "text.blocks.0.qkv.weight", "text.blocks.0.mlp.0.weight"} <= groups[0.01]
    assert {"text.words.weight", "logit_scale", "audio.convs.0.bias", "audio.convs.1.weight",
            "text.norm.weight", "text.blocks.0.qkv.bias"} <= groups[0.0]          # convs.1 is a GroupNorm


def test_vqgan_uses_adam_without_decay_and_hifigan_adamw_0_01_on_everything():
    trainer = vqgan.Trainer(vqgan.PRESETS["tiny"])
    for opt in (trainer.opt_ae, trainer.opt_disc):
        assert type(opt) is torch.optim.Adam and all(g["weight_decay"] == 0 for g in opt.param_groups)
        assert opt.defaults["betas"] == (0.5, 0.9)                               # Taming's
    voc = vocoder.Trainer(vocoder.PRESETS["tiny"])
    for opt in (voc.opt_g, voc.opt_d):
        assert type(opt) is torch.optim.AdamW and all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    assert sum(p.numel() for g in voc.opt_g.param_groups for p in g["params"]) == \
        sum(p.numel() for p in voc.generator.parameters())


# ---------------------------------------------------------------------------------------------------
# The data order: every epoch a new permutation, every item once per epoch.
# ---------------------------------------------------------------------------------------------------

def test_each_epoch_is_a_new_permutation_covering_every_item_once():
    n, batch = 12, 3
    epochs = [sum((train.batch_indices(e * 4 + k, batch, n, seed=5) for k in range(4)), []) for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in epochs}) == 4                          # reshuffled every epoch
    assert epochs[0] != train.batch_indices(0, n, n, seed=6)                     # and by the seed


def test_the_transformer_reads_its_cache_in_the_same_per_epoch_order():
    cache = {"tokens": torch.arange(8).view(8, 1, 1).expand(8, 5, 2).to(torch.int16),
             "cond": torch.arange(8.0)[:, None].expand(8, 4)}
    batches = train.cache_batches(cache, 0, 2, seed=1, rank=0, world=1)
    seen = [next(batches) for _ in range(8)]                                     # two epochs of 4 batches
    for step, b in seen:
        assert b["tokens"].dtype == torch.long
        assert torch.equal(b["tokens"][:, 0, 0].float(), b["cond"][:, 0])        # each clip's tokens with its own condition
        assert b["tokens"][:, 0, 0].tolist() == train.batch_indices(step, 2, 8, 1)
    first, second = ([v for _, b in seen[e * 4:(e + 1) * 4] for v in b["cond"][:, 0].tolist()] for e in (0, 1))
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


# ---------------------------------------------------------------------------------------------------
# The token cache: CLAP's AUDIO embedding of each clip (training conditions on audio, Sec. 3.3).
# ---------------------------------------------------------------------------------------------------

class AudioOnlyConditioner:
    """Embeds audio as its first 4 samples x 100; asking it for a text embedding fails the test."""

    def embed_audio(self, wav):
        return wav[:, :4] * 100

    def embed_text(self, texts, **kw):
        raise AssertionError("the transformer's cache must hold audio embeddings, not text ones")


def test_the_token_cache_holds_each_clips_clap_audio_embedding(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(vqgan.Trainer(vqgan.PRESETS["tiny"]).checkpoint(), str(tmp_path / "vqgan.pt"))
    wavs = torch.randn(3, 16 * mel.HOP) * 0.1
    dataset = [{"wav": w, "caption": f"caption {i}", "kind": i} for i, w in enumerate(wavs)]
    monkeypatch.setattr(training_edges, "load_conditioner", lambda args, device: AudioOnlyConditioner())
    args = argparse.Namespace(out=str(tmp_path), clap="tiny", num_samples=16 * mel.HOP, workers=0)
    cache = train.build_cache(dataset, args, "cpu")
    torch.testing.assert_close(cache["cond"], wavs[:, :4] * 100)
    vq = build_model(vqgan.VQGAN, vqgan.Config, torch.load(tmp_path / "vqgan.pt", weights_only=True), "vqgan").eval()
    assert torch.equal(cache["tokens"].long(), vq.encode(mel.normalize(mel.mel_spectrogram(wavs))))


# ---------------------------------------------------------------------------------------------------
# int8: which layers it converts, and the fallback when PyTorch drops the API.
# ---------------------------------------------------------------------------------------------------

def test_int8_converts_the_transformers_block_and_head_linears_and_nothing_else():
    model = specmaskgit.SpecMaskGIT(dataclasses.replace(specmaskgit.PRESETS["tiny"], n_layers=2)).eval()
    fast.quantize_int8(model)
    converted = {n for n, m in model.named_modules()
                 if "quantized" in type(m).__module__ and type(m).__name__ == "Linear"}     # int8 dynamic linears
    expected = {"head"} | {f"blocks.{i}.{s}" for i in range(2) for s in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    assert converted == expected
    assert type(model.cond_proj) is torch.nn.Linear and type(model.tok_emb) is torch.nn.Embedding
    assert type(model.blocks[0].norm1) is torch.nn.LayerNorm


@pytest.fixture
def no_quantization_api(monkeypatch):
    """PyTorch without torch.ao.quantization: importing it fails as a removed module's import would."""
    monkeypatch.setitem(sys.modules, "torch.ao.quantization", None)
    with pytest.raises(ImportError):
        from torch.ao.quantization import quantize_dynamic  # noqa: F401


def test_without_the_quantization_api_the_dtype_choice_falls_back_and_says_so(no_quantization_api, tmp_path, capsys):
    asked = []

    def timer(name, width):
        asked.append(name)
        return {"fp32": 50.0, "bf16": 40.0, "int8": 900.0}[name]
    assert fast.int8_available() is False
    assert fast.measure_cpu_dtype(768, timer=timer, cache=str(tmp_path / "c.json")) == "fp32"
    assert "int8" not in asked
    lines = [l for l in capsys.readouterr().out.splitlines() if "int8 unavailable" in l]
    assert len(lines) == 1 and "torch.ao.quantization" in lines[0]
    # a cache written where int8 won is not followed either
    (tmp_path / "c.json").write_text((tmp_path / "c.json").read_text().replace('"int8": 0.0', '"int8": 999.0'))
    assert fast.measure_cpu_dtype(768, timer=timer, cache=str(tmp_path / "c.json"), verbose=False) == "fp32"


def test_without_the_quantization_api_asking_for_int8_keeps_the_fp32_model_and_says_so(no_quantization_api, capsys):
    torch.manual_seed(0)
    model = specmaskgit.SpecMaskGIT(dataclasses.replace(specmaskgit.PRESETS["tiny"], n_layers=1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fast.quantize_int8(model) is model
    assert all("quantized" not in type(m).__module__ for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = capsys.readouterr().out
    assert len(re.findall("int8 unavailable", out)) == 1 and "fp32" in out


# ---------------------------------------------------------------------------------------------------
# Griffin-Lim: what the fast variant promises.
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heldout_mels():
    """The 16 held-out toy clips train.py compares the vocoder with Griffin-Lim on, and their mels."""
    ds = data.make_dataset("toy", "val", root=None, num_samples=mel.TOY_SAMPLES, n=16)
    wav = torch.stack([ds[i]["wav"] for i in range(16)])
    return wav, mel.mel_spectrogram(wav)


def test_fast_griffin_lim_converges_faster_with_momentum_than_without(heldout_mels):
    _, m = heldout_mels
    plain16 = mel.spectral_convergence(m, mel.griffin_lim(m, n_iter=16, momentum=0.0))
    fast16 = mel.spectral_convergence(m, mel.griffin_lim(m, n_iter=16, momentum=0.99))
    plain32 = mel.spectral_convergence(m, mel.griffin_lim(m, n_iter=32, momentum=0.0))
    assert fast16 < 0.85 * plain16                                               # ~0.11 vs ~0.15 at 16 iterations
    assert fast16 < plain32                                                      # 16 fast iterations beat 32 plain ones


def test_griffin_lim_reaches_the_readmes_mel_l1_on_the_held_out_toy_clips(heldout_mels):
    # README, "the demo model": Griffin-Lim, 32 iterations: mel L1 0.476 (HiFiGAN's 0-11 kHz loss mel),
    # 0.121 (the model's 0-8 kHz mel); spectral convergence ~0.09 on the same clips
    wav, m = heldout_mels
    y = mel.griffin_lim(m)[:, :wav.shape[1]]                                    # the default: 32 iterations
    assert abs((mel.mel_spectrogram(y) - m).abs().mean().item() - 0.121) < 0.005
    assert abs((vocoder.loss_mel(y) - vocoder.loss_mel(wav)).abs().mean().item() - 0.476) < 0.005
    assert mel.spectral_convergence(m, y) < 0.1


# ---------------------------------------------------------------------------------------------------
# Checkpoints load with weights_only=True: a pickle cannot run code while it is read.
# ---------------------------------------------------------------------------------------------------

RAN = []


def record_that_it_ran():
    RAN.append(True)
    return {}


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return record_that_it_ran, ()


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    from ground.runtime import UserError, load_checkpoint
    path = tmp_path / "evil.pt"
    torch.save({"stage": "vqgan", "payload": RunsCodeWhenUnpickled()}, path)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(path), "vqgan")
    assert RAN == []
