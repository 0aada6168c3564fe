"""
evaluation/reconstruction.py — what the codec and the vocoder alone cost: reconstruction FAD, the latent
rate, and beside FAD the two scores of Zou, Gong and Gao's MaskGIT-on-SpecVQGAN report in miniature: an
IS of a linear classifier on log-mel statistics and a Fréchet distance of log-mel statistics.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Table 3    rFAD of the vocoder alone and of the mel VQGAN with the vocoder, and each method's latent
             rate (tokens per second of audio: 27 Hz for SpecMaskGIT)

In:  a pipeline, an embedder (evaluation.clips.make_embedder), n held-out toy clips
Out: FAD and the two log-mel scores (IS, Fréchet distance) of every set, the latent rate, the vocoder's name; markdown tables on stdout
Run: python evaluate.py --reconstruction
"""

import torch
import torch.nn.functional as F

import mel
from data import toyworld
from evaluation.clips import codec_round_trip, generate_clips, markdown_table, vocoder_round_trip
from evaluation.judges import mel_features, single_kind_clips
from evaluation.metrics import frechet_distance
from evaluation.probe import PROBE_BATCH, PROBE_EPOCHS


# ---------------------------------------------------------------------------------------------------
# Table 3: reconstruction FAD and the latent rate; the report's IS and FID in miniature beside FAD.
# ---------------------------------------------------------------------------------------------------
#
# rFAD: the same held-out clips through the last stage alone (real mel -> vocoder) and through the codec
# (mel -> tokens -> mel -> vocoder), against the clips themselves. The latent rate is tokens per second of
# audio: 265 tokens per 9.845 s = 27 Hz at full size; the toy's 5 x 16 tokens per 2.97 s is the same rate.
#
# Zou, Gong and Gao ("Application of Masked Token Transformer (MaskGIT) in high-quality and efficiency audio
# generation", MaskGIT on SpecVQGAN) score 500 generated VAS clips with the Fréchet Inception Distance (FID
# 1.068) and the Inception Score (IS 1.003 +- 0.0011): a classifier's class probabilities (IS) and its
# features (FID, FAD's formula). In miniature the classifier is the
# probe's layers trained as a single-label classifier of the toy's kinds on real single-kind training
# clips, on the judge's log-mel statistics (mel_features, which owe nothing to TinyCLAP, FAD's embedding);
# the Fréchet distance is computed on its batch-normalised input features. Neither is an Inception network,
# so neither number can be compared with the report's.

IS_NAME = "IS of a linear classifier on log-mel statistics"
FID_NAME = "Fréchet distance of log-mel statistics"
REPORT = ("Zou, Gong and Gao's MaskGIT-on-SpecVQGAN report (\"Application of Masked Token Transformer (MaskGIT) "
          "in high-quality and efficiency audio generation\")")
REPORT_SCORES = "FID 1.068, IS 1.003 ± 0.0011 for SpecVQGAN + MaskGIT on 500 VAS clips"

PAPER_TABLE3 = [("Diffsound", "SpecVQGAN", "MelGAN", "27 Hz", "6.2"), ("Make-an-audio", "VAE-GAN", "HiFiGAN", "78 Hz", "6.0"),
                ("AudioLDM", "VAE-GAN", "HiFiGAN", "410 Hz", "1.2"), ("Make-an-audio 2", "VAE-GAN", "BigVGAN", "31 Hz", "1.0"),
                ("SpecMaskGIT", "-", "HiFiGAN", "27 Hz", "0.4"), ("SpecMaskGIT", "SpecVQGAN", "HiFiGAN", "27 Hz", "1.1"),
                ("SpecMaskGIT", "-", "BigVSAN", "27 Hz", "0.1"), ("SpecMaskGIT", "SpecVQGAN", "BigVSAN", "27 Hz", "1.0")]


def latent_rate(rows: int, cols: int, num_samples: int) -> float:
    """Tokens per second of audio: rows x cols tokens stand for num_samples samples."""
    return rows * cols / (num_samples / mel.SR)


def train_kind_classifier(per_kind: int, num_samples: int, seed: int = 0):
    """The probe's layers as a classifier of the toy's kinds (softmax) on mel_features of real single-kind
    training clips. Returns (classifier, features -> (probabilities (N, K), classifier features (N, D)))."""
    wavs, kinds = single_kind_clips("train", per_kind, num_samples, seed)
    x = mel_features(wavs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1]), torch.nn.Dropout(0.1),
                                  torch.nn.Linear(x.shape[1], len(toyworld.KINDS)))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(PROBE_EPOCHS):
            for idx in torch.randperm(len(x)).split(PROBE_BATCH):
                loss = F.cross_entropy(net(x[idx]), kinds[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()

    @torch.no_grad()
    def classify(wav: torch.Tensor):
        features = net[0](mel_features(wav))                                    # (N, 96) batch-normalised
        return torch.softmax(net[2](features), -1), features
    return classify


def run_reconstruction(pipe, embed, n: int, seed: int) -> dict:
    """FAD (and IS, FID) of n held-out clips: real, vocoder alone, codec + vocoder, and generated ones."""
    from evaluation.metrics import inception_score
    ref = toyworld.ToyDataset("test", n=n, num_samples=pipe.num_samples)
    real = torch.stack([ref[i]["wav"] for i in range(n)])                      # (n, T) the reference
    captions = [ref[i]["caption"] for i in range(n)]
    other = toyworld.ToyDataset("val", n=n, num_samples=pipe.num_samples)
    other = torch.stack([other[i]["wav"] for i in range(n)])                    # another real set: the floor
    classify = train_kind_classifier(per_kind=40, num_samples=pipe.num_samples)
    ref_emb, (_, ref_feat) = embed(real), classify(real)
    sets = {"Real clips (another held-out set: FAD's floor)": other,
            "Vocoder alone (real mel -> sound)": vocoder_round_trip(pipe, real),
            "SpecVQGAN + vocoder (mel -> tokens -> mel -> sound)": codec_round_trip(pipe, real),
            "Generated from the clips' captions (16 steps, CFG 3, T 1.5)": generate_clips(pipe, captions, seed=seed)}
    r = {"n": n, "vocoder": "HiFiGAN (the bundle's)" if pipe.vocoder is not None else "Griffin-Lim (no vocoder in the bundle)",
         "rate": latent_rate(pipe.transformer.cfg.rows, pipe.transformer.cfg.cols, pipe.num_samples),   # the checked grid
         "sets": {}}
    for name, wavs in sets.items():
        probs, feat = classify(wavs)
        r["sets"][name] = (frechet_distance(embed(wavs), ref_emb), inception_score(probs), frechet_distance(feat, ref_feat))
    r["is_real"] = inception_score(classify(real)[0])
    return r


def print_reconstruction(r: dict, embed_name: str) -> None:
    print(f"\n### Table 3 in miniature: reconstruction FAD ({embed_name}; {r['n']} held-out clips against "
          f"themselves), with an {IS_NAME} and a {FID_NAME}\n")
    print(f"Latent rate {r['rate']:.1f} Hz (tokens per second of audio; the full preset's 265 tokens per 9.845 s "
          f"is {latent_rate(5, 53, 217088):.1f} Hz, the paper's 27 Hz). Vocoder: {r['vocoder']}. The {IS_NAME} "
          f"(a softmax classifier of the 12 kinds, trained on real clips) and the {FID_NAME} (its batch-normalised "
          f"input) stand in for {REPORT}'s Inception Score and FID; they are NOT comparable with that report's "
          f"Inception-based numbers ({REPORT_SCORES}). The real reference clips score IS {r['is_real']:.2f} "
          f"(at most 12).\n")
    rows = [[name, f"{fad:.3f}", f"{is_:.2f}", f"{fid:.2f}"] for name, (fad, is_, fid) in r["sets"].items()]
    print(markdown_table(["Set", "FAD", IS_NAME, FID_NAME], rows))
    print("\nThe paper's Table 3 (AudioCaps test set, VGGish rFAD):\n")
    print(markdown_table(["Method", "Mel-spec VAE", "Vocoder", "Latent rate", "rFAD"], [list(row) for row in PAPER_TABLE3]))
