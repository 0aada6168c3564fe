"""
evaluation/ablations.py — the FAD tables: text-to-audio with and without CFG and its ramp, FAD against the
number of iterations and the Gumbel temperature, and the zero-shot inpainting and bandwidth extension.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Table 1    text-to-audio FAD, and the same without CFG (the conditional logits alone) and without
             the CFG scale's linear ramp
  Fig. 7     FAD vs the Gumbel temperature (left) and vs the number of MaskGIT iterations (right)
  Table 7    zero-shot time inpainting and bandwidth extension (BWE, with and without low-frequency
             replacement), scored against the unprocessed (gapped / low-passed) input
  Table 4    text_to_audio_fad: Table 1's first row alone, on a toy world with another share of mixtures

In:  a pipeline, an embedder (evaluation.clips.make_embedder), n held-out toy clips as the reference
Out: a dict of FADs and CLAP scores; markdown tables on stdout (copy them into RESULTS.md)
Run: python evaluate.py --ablations --n 64   # or --fad --toy-mix 0.5 for text_to_audio_fad alone
"""

import time

import torch

import mel
import pipeline
from data import toyworld
from evaluation.clips import codec_round_trip, generate_clips, markdown_table
from evaluation.metrics import clap_score, frechet_distance


# ---------------------------------------------------------------------------------------------------
# The ablations: Table 1, Fig. 7 and Table 7 on the toy world.
# ---------------------------------------------------------------------------------------------------

STEPS = (1, 2, 4, 8, 16, 32)              # Fig. 7 right
TEMPERATURES = (0.0, 1.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0)   # Fig. 7 left: the paper's seven and 1.0
# (steps, CFG scale, Gumbel temperature): 16 iterations and CFG 3.0 (Sec. 5.1), temperature 1.5 (Fig. 7 left,
# Sec. 5.1's ablation and Sec. 5.2)
DEFAULT = (16, 3.0, 1.5)
# Table 1's two ablations hold the scale fixed from the first step. "w/o CFG" is the conditional logits
# alone: Eq. 2 with t = 1 is l_u + (l_c - l_u) = l_c. Scale 0 would be l_u alone, i.e. unconditional
# sampling, which ignores the prompt; it is measured too (16, 0.0, 1.5), under that name.
NO_CFG = {"guidance": 1.0, "cfg_ramp": False}
NO_CFG_RAMP = {"guidance": 3.0, "cfg_ramp": False}   # "w/o CFG linear scheduler"
# The paper's numbers (VGGish FAD on AudioCaps, HiFiGAN vocoder), for comparison of the *shape* only.
PAPER_STEPS = {8: 3.4, 16: 2.8}           # Sec. 5.1 text; "more iterations do not improve"
PAPER_TEMPERATURE = {0.0: 4.2, 1.5: 2.8, 3.0: 2.9, 4.5: 3.2, 6.0: 3.4, 7.5: 3.6, 9.0: 3.8}   # Fig. 7 left


def low_pass(wav: torch.Tensor, cutoff_hz: float = pipeline.BWE_CUTOFF_HZ) -> torch.Tensor:
    """Remove everything at and above `cutoff_hz` with an FFT mask: the input of the BWE task (Table 7)."""
    n = wav.shape[-1]
    hz = torch.fft.rfftfreq(n, 1 / mel.SR)                                    # (n//2+1,) bin frequencies
    return torch.fft.irfft(torch.fft.rfft(wav) * (hz < cutoff_hz), n=n)


def gap_seconds(num_samples: int, share: float = 0.3) -> tuple[float, float]:
    """The middle `share` of a clip, in seconds (the paper's gap is ~1.9 s of 9.85 s, Sec. 4)."""
    length = num_samples / mel.SR
    return length * (1 - share) / 2, length * (1 + share) / 2


def run_ablations(pipe, embed, n: int, seed: int, quick: bool) -> dict:
    """FAD of every setting against n held-out toy clips; generated from those clips' captions."""
    reference = toyworld.ToyDataset("test", n=n, num_samples=pipe.num_samples)
    ref_wavs = torch.stack([reference[i]["wav"] for i in range(n)])           # (n, T)
    captions = [reference[i]["caption"] for i in range(n)]
    other = toyworld.ToyDataset("val", n=n, num_samples=pipe.num_samples)
    other_wavs = torch.stack([other[i]["wav"] for i in range(n)])
    ref_emb = embed(ref_wavs)                                                 # (n, D)
    text_emb = pipe.clap.embed_text(captions).float().cpu()                   # (n, D) for the CLAP score
    r = {"n": n, "floor": frechet_distance(embed(other_wavs), ref_emb)}       # real vs real: FAD's noise floor
    t0 = time.time()
    r["codec"] = frechet_distance(embed(codec_round_trip(pipe, ref_wavs)), ref_emb)
    print(f"  reference, floor and codec round trip: {time.time() - t0:.0f} s", flush=True)

    settings = [DEFAULT, (16, 0.0, 1.5)] + [(s, 3.0, 1.5) for s in STEPS] + [(16, 3.0, t) for t in TEMPERATURES]
    r["tta"] = {}
    for setting in dict.fromkeys(settings):                                   # in order, each once
        t0 = time.time()
        steps, guidance, temperature = setting
        wavs = generate_clips(pipe, captions, steps, guidance, temperature, seed)
        emb = embed(wavs)
        score = clap_score(text_emb, pipe.clap.embed_audio(wavs.to(pipe.device)).float().cpu())
        r["tta"][setting] = (frechet_distance(emb, ref_emb), score)
        print(f"  steps {steps:2d}, CFG {guidance:.0f}, T {temperature:3.1f}: FAD {r['tta'][setting][0]:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)

    for name, setting in (("no_cfg", NO_CFG), ("no_cfg_ramp", NO_CFG_RAMP)):
        wavs = generate_clips(pipe, captions, 16, temperature=1.5, seed=seed, **setting)
        r[name] = (frechet_distance(embed(wavs), ref_emb),
                   clap_score(text_emb, pipe.clap.embed_audio(wavs.to(pipe.device)).float().cpu()))

    # Table 7: the inputs are the reference clips themselves, so "ground truth" scores 0 as in the paper.
    m = max(2, n // 2) if quick else n                                        # one clip at a time: fewer
    inputs, inputs_emb = ref_wavs[:m], ref_emb[:m]
    t0 = time.time()
    start_s, end_s = gap_seconds(pipe.num_samples)
    gapped = inputs.clone()
    gapped[:, int(start_s * mel.SR):int(end_s * mel.SR)] = 0                  # the unprocessed input: silence
    inpainted = torch.stack([pipeline.inpaint(pipe, w, start_s, end_s, None, seed=seed + i, verbose=False)[0]
                             for i, w in enumerate(inputs)])
    lowpassed = low_pass(inputs)
    extended = torch.stack([pipeline.bandwidth_extension(pipe, w, None, lfr=False, seed=seed + i, verbose=False)[0]
                            for i, w in enumerate(lowpassed)])
    replaced = pipeline.low_frequency_replacement(extended, lowpassed)          # LFR = lfr=True, same samples
    r["table7"] = {
        "m": m, "gap": (start_s, end_s),
        "Unprocessed": (frechet_distance(embed(lowpassed), inputs_emb), frechet_distance(embed(gapped), inputs_emb)),
        "SpecMaskGIT": (frechet_distance(embed(extended), inputs_emb), frechet_distance(embed(inpainted), inputs_emb)),
        "- w/ LFR": (frechet_distance(embed(replaced), inputs_emb), None),
        "Codec round trip (no token changed)": (frechet_distance(embed(codec_round_trip(pipe, inputs)), inputs_emb),) * 2,
        "Ground truth": (frechet_distance(inputs_emb, inputs_emb),) * 2,
    }
    print(f"  inpainting and BWE of {m} clips: {time.time() - t0:.0f} s", flush=True)
    return r


def print_ablations(r: dict, embed_name: str) -> None:
    n, tta = r["n"], r["tta"]
    print(f"\n### FAD on the toy world ({embed_name}; {n} generated clips vs {n} held-out clips, lower is better)")
    print(f"\nNoise floor: two sets of {n} real clips score {r['floor']:.3f}; FAD of small sets is biased upwards, "
          f"so read every number against it.\n")

    print("Table 1 in miniature (16 iterations, Gumbel temperature 1.5)\n")
    rows = [["Real clips (another held-out set)", "-", f"{r['floor']:.3f}", "-", "-"],
            ["Codec round trip (rFAD)", "-", f"{r['codec']:.3f}", "-", "-"],
            ["SpecMaskGIT, CFG 3 with the linear ramp", "16", f"{tta[DEFAULT][0]:.3f}", f"{tta[DEFAULT][1]:.3f}", "2.8"],
            ["- w/o CFG (conditional logits alone: scale 1, no ramp)", "16", f"{r['no_cfg'][0]:.3f}",
             f"{r['no_cfg'][1]:.3f}", "3.1"],
            ["- w/o CFG linear scheduler (scale 3 from the first step)", "16", f"{r['no_cfg_ramp'][0]:.3f}",
             f"{r['no_cfg_ramp'][1]:.3f}", "3.1"],
            ["Unconditional (scale 0: l_u alone, the prompt unused)", "16", f"{tta[(16, 0.0, 1.5)][0]:.3f}",
             f"{tta[(16, 0.0, 1.5)][1]:.3f}", "-"]]
    print(markdown_table(["Method", "Num_iter", "FAD", "CLAP score", "paper FAD"], rows))

    print("\nFig. 7 right in miniature: FAD vs number of iterations (CFG 3, temperature 1.5)\n")
    print(markdown_table(["Num_iter"] + [str(s) for s in STEPS],
                         [["FAD"] + [f"{tta[(s, 3.0, 1.5)][0]:.3f}" for s in STEPS],
                          ["CLAP score"] + [f"{tta[(s, 3.0, 1.5)][1]:.3f}" for s in STEPS],
                          ["paper FAD"] + [str(PAPER_STEPS.get(s, "")) for s in STEPS]]))

    print("\nFig. 7 left in miniature: FAD vs Gumbel temperature (16 iterations, CFG 3)\n")
    print(markdown_table(["Gumbel temperature"] + [f"{t:g}" for t in TEMPERATURES],
                         [["FAD"] + [f"{tta[(16, 3.0, t)][0]:.3f}" for t in TEMPERATURES],
                          ["CLAP score"] + [f"{tta[(16, 3.0, t)][1]:.3f}" for t in TEMPERATURES],
                          ["paper FAD"] + [str(PAPER_TEMPERATURE.get(t, "")) for t in TEMPERATURES]]))

    t7 = r["table7"]
    a, b = t7["gap"]
    print(f"\nTable 7 in miniature: zero-shot BWE (input low-passed at {pipeline.BWE_CUTOFF_HZ / 1000:.1f} kHz) and "
          f"time inpainting (gap {a:.2f}-{b:.2f} s, silent in the input); unconditional, 16 iterations, "
          f"T 1.5; FAD against the {t7['m']} clean inputs\n")
    paper = {"Unprocessed": ("2.7", "1.6"), "SpecMaskGIT": ("1.5", "1.2"), "- w/ LFR": ("0.4", "-"),
             "Ground truth": ("0.0", "0.0")}
    rows = []
    for name, (bwe, inp) in ((k, v) for k, v in t7.items() if k not in ("m", "gap")):
        p = paper.get(name, ("-", "-"))
        rows.append([name, f"{bwe:.3f}", "-" if inp is None else f"{inp:.3f}", p[0], p[1]])
    print(markdown_table(["", "BWE", "Time inpaint", "paper BWE", "paper inpaint"], rows))


# Table 4 in miniature: Table 1's first row alone, on a toy world with another share of two-sound clips.

def text_to_audio_fad(pipe, embed, n: int, seed: int, p_mix: float = toyworld.P_MIX) -> tuple[float, float]:
    """FAD and CLAP score of clips generated from the captions of n test clips of a toy world, against them."""
    ref = toyworld.ToyDataset("test", n=n, num_samples=pipe.num_samples, p_mix=p_mix)
    real = torch.stack([ref[i]["wav"] for i in range(n)])
    captions = [ref[i]["caption"] for i in range(n)]
    wavs = generate_clips(pipe, captions, seed=seed)
    text_emb = pipe.clap.embed_text(captions).float().cpu()
    return (frechet_distance(embed(wavs), embed(real)),
            clap_score(text_emb, pipe.clap.embed_audio(wavs.to(pipe.device)).float().cpu()))
