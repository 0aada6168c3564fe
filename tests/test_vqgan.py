"""Specifications of vqgan.py: shapes and size of the paper's tokenizer, the quantiser's losses and
gradients, codebook upkeep, the GAN losses and their weights, checkpoints, and that a tiny model learns."""

import copy
import dataclasses

import pytest
import torch

import mel
from ground import audio_io
from ground import runtime
import vqgan
from ground.runtime import UserError, load_checkpoint, load_into, save_checkpoint

TINY = vqgan.PRESETS["tiny"]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_full_preset_has_paper_size_and_turns_80x848_into_5x53_tokens_and_back():
    cfg = vqgan.PRESETS["full"]
    assert (cfg.n_codes, cfg.code_dim) == (1024, 256)                  # Sec. 4
    torch.manual_seed(0)
    model = vqgan.VQGAN(cfg).eval()
    assert 60e6 <= n_params(model) <= 90e6                              # "around 75M parameters" (Sec. 4)
    x = torch.rand(1, 80, 848) * 2 - 1                                  # a normalised 9.845 s mel
    with torch.no_grad():
        tokens = model.encode(x)
        assert tokens.shape == (1, 5, 53) and tokens.dtype == torch.long   # 265 tokens (Sec. 4)
        assert 0 <= tokens.min() and tokens.max() < 1024
        assert model.decode(tokens).shape == (1, 80, 848)


def test_frames_are_whole_token_columns_and_a_clip_shorter_than_one_is_refused_where_it_enters():
    trainer = vqgan.Trainer(TINY)                                       # the training edge: audio -> mel
    assert trainer.mels(torch.zeros(1, 100 * mel.HOP)).shape == (1, 80, 96)   # 100 frames -> 6 whole columns
    with pytest.raises(ValueError, match="shorter than one token column"):   # train.py refuses such --num-samples
        trainer.mels(torch.zeros(1, 8 * mel.HOP))
    with pytest.raises(UserError, match="n_mels must be 80"):                   # refused where configs enter
        runtime.check_config_values(dataclasses.replace(TINY, n_mels=96))
    assert runtime.MEL_BINS == mel.N_MELS
    assert vqgan.VQGAN(TINY).encode(torch.zeros(1, 80, 112)).shape == (1, 5, 7)   # any multiple of 16 works


def test_patch_frames_8_halves_time_three_times_only_and_gives_twice_the_columns():
    cfg8 = dataclasses.replace(TINY, patch_frames=8)
    torch.manual_seed(0)
    model, square = vqgan.VQGAN(cfg8).eval(), vqgan.VQGAN(TINY)
    assert n_params(model) == n_params(square)                          # the same layers; only strides differ
    strides = [level.resample.conv.stride for level in model.encoder.levels[:-1]]
    scales = [level.resample.scale for level in model.decoder.levels[:-1]]
    assert strides == [(2, 2), (2, 2), (2, 2), (2, 1)]                  # the last downsampling: mel bins only
    assert scales == [(2.0, 1.0), (2.0, 2.0), (2.0, 2.0), (2.0, 2.0)]   # the decoder mirrors it
    x = torch.rand(2, 80, 256) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(x)
        assert tokens.shape == (2, 5, 32) and square.eval().encode(x).shape == (2, 5, 16)
        assert model.decode(tokens).shape == (2, 80, 256)
    trainer = vqgan.Trainer(cfg8)                                       # whole 8-frame columns: 100 -> 96, 12 -> 8
    assert trainer.mels(torch.zeros(1, 100 * mel.HOP)).shape[-1] == 96
    assert trainer.mels(torch.zeros(1, 12 * mel.HOP)).shape[-1] == 8
    with pytest.raises(ValueError, match="power of 2"):
        vqgan.VQGAN(dataclasses.replace(TINY, patch_frames=12))
    with pytest.raises(UserError, match="patch_frames"):                # train.py's flag, one sentence
        runtime.check_config_values(dataclasses.replace(TINY, patch_frames=32), "--vqgan.{}")


def test_quantiser_outputs_codebook_entries_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=16, code_dim=4))
    z = torch.randn(2, 4, 5, 3, requires_grad=True)                     # (B, D, rows, cols)
    q, loss, ids, _ = vq(z)
    # forward: every vector is its nearest codebook entry
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(flat, vq.codebook.weight.detach()).argmin(1)
    assert torch.equal(ids.flatten(), nearest)
    assert torch.allclose(q.detach().permute(0, 2, 3, 1).reshape(-1, 4), vq.codebook.weight[nearest].detach())
    # backward: the gradient arriving at q reaches z unchanged (straight-through estimator)
    g = torch.randn_like(q)
    q.backward(g)
    assert torch.allclose(z.grad, g)


def test_l2_codes_choose_by_angle_and_hand_on_unit_vectors():
    # ViT-VQGAN's lookup: the code of highest cosine, whatever its length
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=2, code_dim=2, l2_codes=True)).eval()
    plain = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=2, code_dim=2)).eval()
    with torch.no_grad():
        for q in (vq, plain):
            q.codebook.weight.copy_(torch.tensor([[5.0, 0.0], [0.1, 0.1]]))
    z = torch.tensor([3.0, 1.5]).reshape(1, 2, 1, 1)               # 27 degrees: nearer e_0, closer in angle to e_1
    assert plain(z)[2].item() == 0 and vq(z)[2].item() == 1
    assert torch.allclose(vq(z)[0].flatten(), torch.tensor([1.0, 1.0]) / 2 ** 0.5)   # the unit code, not (0.1, 0.1)
    # on random vectors: the argmax of cosine similarity, and decode's lookup is the same unit vector
    torch.manual_seed(0)
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=32, code_dim=8, l2_codes=True)).eval()
    z = torch.randn(2, 8, 5, 3)
    q, _, ids, _ = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    cosine = torch.nn.functional.cosine_similarity(flat[:, None], vq.codebook.weight[None].detach(), dim=-1)   # (30, 32)
    assert torch.equal(ids.flatten(), cosine.argmax(1))
    assert torch.allclose(q.permute(0, 2, 3, 1).reshape(-1, 8), vq.lookup(ids.flatten()), atol=1e-6)
    assert torch.allclose(vq.lookup(ids).norm(dim=-1), torch.ones(ids.shape))


def two_code_quantiser():
    """A 2-code, 2-dim quantiser in float64 with codes e_0 = (0, 0) and e_1 = (1, 1)."""
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=2, code_dim=2)).double().eval()
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    # three encoder vectors as (B=1, D=2, rows=1, cols=3): nearest codes 0, 1, 1
    z = torch.tensor([[0.2, -0.1], [0.9, 1.3], [0.6, 0.7]], dtype=torch.float64).t().reshape(1, 2, 1, 3)
    return vq, z.requires_grad_()


def test_vq_loss_has_its_value_and_each_term_reaches_only_its_side():
    assert TINY.beta == vqgan.PRESETS["full"].beta == 0.25                   # VQ-VAE's commitment weight
    vq, z = two_code_quantiser()
    q, loss, ids, _ = vq(z)
    assert ids.flatten().tolist() == [0, 1, 1]
    e = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    zs = z.detach()[0, :, 0, :].t()                                           # (3, 2) the vectors
    sq = ((zs - e) ** 2).sum().item() / 6                                    # mean over 3 vectors x 2 dims
    assert loss.item() == pytest.approx((1 + 0.25) * sq, rel=1e-12)          # codebook + 0.25 x commitment
    loss.backward()
    # codebook term ||sg[z] - e||^2: its gradient moves the chosen codes towards their vectors, weight 1
    code_grad = torch.zeros(2, 2, dtype=torch.float64)
    for k, (v, ev) in zip([0, 1, 1], zip(zs, e)):
        code_grad[k] += 2 * (ev - v) / 6
    assert torch.allclose(vq.codebook.weight.grad, code_grad, rtol=1e-12)
    # commitment term beta ||z - sg[e]||^2: only the encoder output gets it, weighted 0.25
    assert torch.allclose(z.grad[0, :, 0, :].t(), 0.25 * 2 * (zs - e) / 6, rtol=1e-12)


def test_straight_through_gradient_is_the_identity():
    vq, z = two_code_quantiser()
    jac = torch.autograd.functional.jacobian(lambda t: vq(t)[0], z.detach())  # (1, 2, 1, 3, 1, 2, 1, 3)
    assert torch.equal(jac.reshape(6, 6), torch.eye(6, dtype=torch.float64))


def test_reconstruction_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = vqgan.VQGAN(TINY)
    x = torch.rand(2, 80, 32) * 2 - 1
    recon, vq_loss, _ = model(x)
    (recon - x).abs().mean().backward()                                 # the L1 term alone, no VQ loss
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0            # it crossed the argmin


def test_dead_codes_are_reseeded_onto_encoder_outputs():
    torch.manual_seed(0)
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=32, code_dim=4, dead_code_steps=3)).train()
    with torch.no_grad():                                               # a collapsed codebook: code 0 near the data,
        vq.codebook.weight[:] = 100 + torch.randn(32, 4)                # every other code far away
        vq.codebook.weight[0] = 0
    vq.steps_unused.zero_()                                             # as if every code had just been used
    z = torch.randn(4, 4, 4, 8)                                         # 128 encoder vectors
    assert vq(z)[3]["used"] == 1 / 32                                   # only code 0 is chosen
    reseeded = [vq.reseed_dead_codes()]
    for _ in range(2):
        vq(z)
        reseeded.append(vq.reseed_dead_codes())
    assert reseeded == [0, 0, 31]                                       # all 31 dead codes, after 3 unused steps
    data = z.permute(0, 2, 3, 1).reshape(-1, 4)
    gap = torch.cdist(vq.codebook.weight[1:].detach(), data).min(1).values
    assert gap.max() < 0.1                                              # each new code sits on an encoder output
    vq.eval()
    assert vq(z)[3]["used"] > 0.5                                       # and the codebook is in use again


def test_a_fresh_codebook_is_seeded_from_the_first_batch():
    torch.manual_seed(0)
    vq = vqgan.VectorQuantizer(dataclasses.replace(TINY, n_codes=32, code_dim=4)).train()
    assert vq.alive_fraction() == 0                                     # nothing has been chosen yet
    z = 5 + torch.randn(2, 4, 4, 8)                                     # data far from the initial codes (|e| < 1/32)
    _, _, ids, _ = vq(z)
    assert vq.reseed_dead_codes() == 32 - len(ids.unique())             # every code the step did not choose
    assert vq.alive_fraction() == len(ids.unique()) / 32
    data = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.cdist(vq.codebook.weight.detach(), data).min(1).values.median() < 0.1


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_decoder_layer():
    torch.manual_seed(0)
    model, disc = vqgan.VQGAN(TINY), vqgan.PatchDiscriminator(TINY)
    x = torch.rand(2, 80, 64) * 2 - 1
    recon = model(x)[0]
    rec_loss, g_loss = (recon - x).abs().mean(), -disc(recon).mean()
    last = model.decoder.conv_out.weight
    lam = vqgan.adaptive_weight(rec_loss, g_loss, last, disc_weight=0.8)
    # independently: two ordinary backward passes, reading .grad of the last layer
    rec_loss.backward(retain_graph=True)
    g_rec = last.grad.clone()
    last.grad = None
    g_loss.backward()
    g_adv = last.grad.clone()
    expected = g_rec.norm() / (g_adv.norm() + 1e-4) * 0.8
    assert torch.allclose(lam, expected, rtol=1e-5)
    assert not lam.requires_grad                                        # a constant factor, not a loss term


def test_hinge_loss_is_zero_only_when_real_and_fake_are_beyond_the_margins():
    assert vqgan.hinge_d_loss(torch.full((3,), 1.5), torch.full((3,), -2.0)) == 0
    assert vqgan.hinge_d_loss(torch.zeros(3), torch.zeros(3)) == 1.0   # 0.5 * (1 + 1)


def test_adaptive_weight_is_clamped_as_the_config_says():
    full, tiny = vqgan.PRESETS["full"], TINY
    # SpecVQGAN's configs/vggsound_codebook.yaml: disc_start 30001, disc_weight 0.8, clamp [1, 1]
    assert (full.disc_start, full.disc_weight, full.codebook_weight) == (30001, 0.8, 1.0)
    assert (full.min_adapt_weight, full.max_adapt_weight) == (1.0, 1.0)
    assert (tiny.min_adapt_weight, tiny.max_adapt_weight) == (0.0, 1e4)      # Taming's unclamped form
    last = torch.ones(3, requires_grad=True)
    rec_loss, g_loss = (5 * last).sum(), (0.5 * last).sum()                  # gradient norms 5 sqrt(3), 0.5 sqrt(3)
    assert vqgan.adaptive_weight(rec_loss, g_loss, last, 0.8).item() == pytest.approx(10 / (1 + 1e-4 / (0.5 * 3 ** 0.5)) * 0.8)
    assert vqgan.adaptive_weight(rec_loss, g_loss, last, 0.8, 1.0, 1.0).item() == pytest.approx(0.8)
    assert vqgan.adaptive_weight(rec_loss, g_loss, last, 0.8, 0.0, 2.0).item() == pytest.approx(1.6)


def test_hinge_loss_by_hand():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.3])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * ((0.5 + 0) / 2 + (0.5 + 1.3) / 2)
    assert vqgan.hinge_d_loss(real, fake).item() == pytest.approx(0.575)


def test_trainer_losses_have_their_weights_and_signs():
    # full-preset clamp (lambda = 0.8 constant) on the tiny model, discriminator on from step 0
    cfg = dataclasses.replace(TINY, disc_start=0, min_adapt_weight=1.0, max_adapt_weight=1.0)
    torch.manual_seed(0)
    trainer = vqgan.Trainer(cfg, lr=1e-3)
    batch = {"wav": 0.1 * torch.randn(2, 32 * mel.HOP, generator=torch.Generator().manual_seed(0))}
    model, disc = copy.deepcopy(trainer.model), copy.deepcopy(trainer.disc)   # the state before the step
    x = mel.normalize(mel.mel_spectrogram(batch["wav"]))                      # (2, 80, 32)
    with torch.no_grad():
        recon, vq_loss, _ = model(x)
        l1 = (recon - x).abs().mean()
        g_loss = -disc(recon).mean()                                         # the decoder wants high logits
        loss = l1 + 1.0 * vq_loss + 0.8 * g_loss
        d_real, d_fake = disc(x), disc(recon)
        d_loss = 0.5 * (torch.clamp(1 - d_real, min=0).mean() + torch.clamp(1 + d_fake, min=0).mean())
    m = trainer.step(batch, 0)
    assert m["d_weight"] == pytest.approx(0.8)
    assert m["g_loss"] == pytest.approx(g_loss.item(), rel=1e-4, abs=1e-6)
    assert m["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert m["d_loss"] == pytest.approx(d_loss.item(), rel=1e-5)


def test_trainer_steps_lower_the_reconstruction_error_on_a_fixed_batch():
    torch.manual_seed(0)
    trainer = vqgan.Trainer(TINY, lr=1e-3)                                   # disc_start 800: L1 + VQ only
    batch = {"wav": 0.1 * torch.randn(1, 16 * mel.HOP, generator=torch.Generator().manual_seed(0))}   # one column
    l1 = [trainer.step(batch, s)["l1"] for s in range(8)]
    assert min(l1[-3:]) < 0.6 * l1[0], l1


def test_checkpoint_round_trip_and_a_load_into_another_config_names_the_mismatch(tmp_path):
    torch.manual_seed(0)
    model = vqgan.VQGAN(TINY).eval()
    path = str(tmp_path / "vqgan.pt")
    save_checkpoint({"stage": "vqgan", "config": dataclasses.asdict(TINY), "model": model.state_dict()}, path)
    ckpt = load_checkpoint(path, "vqgan")                               # weights_only=True
    again = runtime.build_model(vqgan.VQGAN, vqgan.Config, ckpt, "vqgan")
    x = torch.rand(1, 80, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode(x), model.encode(x))
        assert torch.allclose(again(x)[0], model(x)[0])
    other = vqgan.VQGAN(dataclasses.replace(TINY, n_codes=128))
    with pytest.raises(UserError, match="n_codes=256"):
        load_into(other, ckpt, "vqgan")


def test_trainer_switches_the_discriminator_on_at_disc_start_and_resumes_exactly():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, disc_start=1)
    trainer = vqgan.Trainer(cfg, lr=1e-3)
    batch = {"wav": 0.1 * torch.randn(2, 32 * mel.HOP)}                 # 32 frames
    before = trainer.step(batch, 0)
    after = trainer.step(batch, 1)
    assert "d_loss" not in before and "g_loss" not in before           # L1 + VQ only before disc_start
    assert after["d_loss"] > 0 and after["d_weight"] > 0
    assert 0 <= after["used"] <= 1 and after["ppl"] >= 1
    x, y = trainer.preview(batch)
    assert x.shape == y.shape == (1, 80, 32)
    # a second trainer loaded from the first's state takes the identical next step
    twin = vqgan.Trainer(cfg, lr=1e-3)
    twin.load_state_dict(trainer.state_dict())
    torch.manual_seed(1)
    a = trainer.step(batch, 2)
    torch.manual_seed(1)
    b = twin.step(batch, 2)
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    with pytest.raises(UserError, match="n_codes"):                       # train.py's --resume checks this first
        runtime.check_config(dataclasses.replace(cfg, n_codes=128), trainer.state_dict()["config"], "vqgan run")


def test_tiny_model_overfits_one_real_clip(full_band_clips):
    voice = next(p for p in full_band_clips if "front-center" in p)              # a voice: formants and pauses
    x = mel.normalize(mel.mel_spectrogram(audio_io.load_audio(voice)))               # (80, 122)
    start = max(range(0, x.shape[1] - 64 + 1, 16), key=lambda s: x[:, s:s + 64].std())
    x = x[None, :, start:start + 64]                                    # the liveliest 64 frames (0.74 s), (1, 80, 64)
    baseline = (x - x.median()).abs().mean().item()                     # L1 of the best constant guess (the median)
    torch.manual_seed(0)
    model = vqgan.VQGAN(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.5, 0.9))
    losses = []
    for _ in range(80):
        recon, vq_loss, _ = model(x)
        l1 = (recon - x).abs().mean()
        opt.zero_grad()
        (l1 + vq_loss).backward()
        opt.step()
        model.quantizer.reseed_dead_codes()
        losses.append(l1.item())
    final = min(losses[-10:])
    assert final < 0.25 * losses[0] and final < 0.35 * baseline, (losses[0], baseline, final)   # ~0.19 and ~0.30


def test_the_code_search_runs_in_fp32_under_bf16_autocast():
    """Training runs the VQGAN under autocast, the token cache encodes without it: both must pick the same
    codes. In bf16, the distances of near-tied codes round together and some argmins flip."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(vqgan.PRESETS["tiny"], n_codes=256, code_dim=16)
    q = vqgan.VectorQuantizer(cfg).eval()
    with torch.no_grad():
        q.codebook.weight.normal_()
    z = torch.randn(8, 16, 5, 16)                                            # 640 vectors
    fp32_ids = q(z)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_ids = q(z)[2]
    assert torch.equal(amp_ids, fp32_ids)
    # the same search in bf16 does pick other codes for some: the test can see the difference
    x, w = z.permute(0, 2, 3, 1).reshape(-1, 16).bfloat16(), q.codebook.weight.bfloat16()
    bf16_ids = (x.pow(2).sum(1, keepdim=True) - 2 * x @ w.t() + w.pow(2).sum(1)[None]).argmin(1)
    assert (bf16_ids != fp32_ids.reshape(-1)).any()
