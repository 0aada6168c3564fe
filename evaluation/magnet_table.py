"""
evaluation/magnet_table.py — MAGNeT's ideas on the toy world (magnet.py): each one on or off against
SpecMaskGIT's sampler, with the same bundle (and optionally a span-masked transformer and one trained as
MAGNeT trains: by row, cosine ratios, spans, restricted context).

Paper: MAGNeT (Ziv et al., ICLR 2024), Sec. 5's ablations in miniature: span length and scoring, the
  guidance's direction (10 -> 1 against SpecMaskGIT's 0 -> 3, Eq. 2), top-p, row-by-row decoding,
  restricted context, the hybrid prefix, rescoring and training by stage; scored as SpecMaskGIT's Table 1
  is (FAD, CLAP score).

In:  a pipeline, an embedder (evaluation.clips.make_embedder), n held-out toy clips, per_kind clips per kind
Out: one row per sampler (passes, FAD, CLAP score, two judges, seconds per clip); a markdown table on stdout
Run: python evaluate.py --magnet   # add --magnet-ckpt runs/span/transformer.pt for the span model's rows,
     --magnet-trained-ckpt runs/magnet/transformer.pt for the MAGNeT-trained model's
"""

import time

import torch

import pipeline
from data import toyworld
from evaluation.clips import markdown_table
from evaluation.judges import mel_features, train_judge, zero_shot_kinds
from evaluation.metrics import clap_score, frechet_distance


# ---------------------------------------------------------------------------------------------------
# MAGNeT's ideas on the toy world (magnet.py): each one on or off against SpecMaskGIT's sampler.
# ---------------------------------------------------------------------------------------------------

# (row name, magnet.generate settings changed from its defaults; None = SpecMaskGIT's sampler at DEFAULT).
# MAGNeT's own findings (its ablations, on music): span 3 best; guidance annealed 10 -> 1 best; restricted
# context helps; rescoring helps; the hybrid trades latency for quality; fewer steps on the later streams
# cost little.
MAGNET_ROWS = [
    ("SpecMaskGIT sampler (16 steps, CFG ramp 0 -> 3, Gumbel 1.5)", None),
    ("MAGNeT decoding (guidance 10 -> 1, T 3 -> 0, top-p 0.9, rows 8,4,4,4,4)", {}),
    ("- guidance rising 0 -> 3 (SpecMaskGIT's direction) instead of 10 -> 1", {"guidance": (0.0, 3.0)}),
    ("- guidance constant 3", {"guidance": (3.0, 3.0)}),
    ("- audiocraft's text-to-sound solver config: guidance 20 -> 1, T 3.5 -> 0, top-p 0.8",
     {"guidance": (20.0, 1.0), "temperature_start": 3.5, "top_p": 0.8}),
    ("- temperature 1 -> 0 instead of 3 -> 0", {"temperature_start": 1.0}),
    ("- no top-p", {"top_p": 1.0}),
    ("- all rows together in 16 steps instead of row by row", {"row_steps": (16,)}),
    ("+ restricted context, own column, rows above the first (model trained without it)", {"context": 0}),
    ("+ hybrid: the first 4 columns one by one", {"prefix_cols": 4}),
]
# with a span-masked model (--magnet-ckpt): its decoding spans and scoring, and rescoring between the two
SPAN_ROWS = [
    ("span model, SpecMaskGIT sampler", "span", None),
    ("span model, MAGNeT decoding, span 3 scored by max", "span", {"scoring": "max"}),
    ("span model, MAGNeT decoding, span 3 scored by prod", "span", {"scoring": "prod"}),
    ("span model, MAGNeT decoding, span 1 (per token)", "span", {"span_len": 1}),
    ("span model rescored by the bundle's (0.7 external)", "span", {"rescorer": "bundle"}),
    ("bundle's model rescored by the span model (0.7 external)", "bundle", {"rescorer": "span"}),
]
# with a model trained as MAGNeT trains (--magnet-trained-ckpt): by row, cosine ratios, span 3, context 0
TRAINED_ROWS = [
    ("MAGNeT-trained model, SpecMaskGIT sampler", "trained", None),
    ("MAGNeT-trained model, MAGNeT decoding (context as trained)", "trained", {}),
    ("MAGNeT-trained model, MAGNeT decoding without restricted context", "trained", {"context": -1}),
    ("MAGNeT-trained model, all rows together in 16 steps", "trained", {"row_steps": (16,)}),
    ("MAGNeT-trained model rescored by the bundle's (0.7 external)", "trained", {"rescorer": "bundle"}),
]


def run_magnet_table(pipe, embed, n: int, per_kind: int, seed: int, span_model=None, trained_model=None) -> list:
    """FAD and CLAP score (n captions of held-out clips), both judges (per_kind clips of every kind),
    forward passes and seconds per clip, for every row of MAGNET_ROWS (and SPAN_ROWS with span_model,
    TRAINED_ROWS with trained_model, each from pipeline.load_second_transformer)."""
    import copy
    reference = toyworld.ToyDataset("test", n=n, num_samples=pipe.num_samples)
    ref_wavs = torch.stack([reference[i]["wav"] for i in range(n)])
    captions = [reference[i]["caption"] for i in range(n)]
    ref_emb, text_emb = embed(ref_wavs), pipe.clap.embed_text(captions).float().cpu()
    kinds = torch.arange(len(toyworld.KINDS)).repeat_interleave(per_kind)
    kind_emb = pipe.clap.embed_text(toyworld.KINDS).float().cpu()
    judge = train_judge(per_kind=40, num_samples=pipe.num_samples)
    models = {"bundle": pipe.transformer}
    rows = [(name, "bundle", options) for name, options in MAGNET_ROWS]
    if span_model is not None:
        models["span"] = span_model
        rows += SPAN_ROWS
    if trained_model is not None:
        models["trained"] = trained_model
        rows += TRAINED_ROWS
    out = []
    for name, model, options in rows:
        run_pipe = copy.copy(pipe)
        run_pipe.transformer = models[model]
        if options and isinstance(options.get("rescorer"), str):
            options = {**options, "rescorer": models[options["rescorer"]]}
        passes, clips, t0 = [], [], time.time()
        for prompts in (captions, [toyworld.KINDS[k] for k in kinds]):
            for i in range(0, len(prompts), 16):
                record = []
                wav, _, _, _ = pipeline.text_to_audio(run_pipe, prompts[i:i + 16], seed=seed + i, verbose=False,
                                                    record=record, magnet_options=options)
                clips.append(wav.float().cpu())
                passes.append(len(record))
        seconds = (time.time() - t0) / (len(captions) + len(kinds))
        wavs = torch.cat(clips)
        fad_wavs, judged = wavs[:n], wavs[n:]
        audio_emb = pipe.clap.embed_audio(fad_wavs.to(pipe.device)).float().cpu()
        judged_emb = pipe.clap.embed_audio(judged.to(pipe.device)).float().cpu()
        zero_shot = (zero_shot_kinds(judged_emb, kind_emb) == kinds).float().mean().item()
        mel_judge = (judge.predict(mel_features(judged)) == kinds).float().mean().item()
        rescored = " + rescorer" if options and options.get("rescorer") is not None else ""
        out.append([name, f"{max(passes)}{rescored}", f"{frechet_distance(embed(fad_wavs), ref_emb):.3f}",
                    f"{clap_score(text_emb, audio_emb):.3f}", f"{zero_shot:.0%}", f"{mel_judge:.0%}", f"{seconds:.2f}"])
        print(f"  {name}: FAD {out[-1][2]} ({time.time() - t0:.0f} s)", flush=True)
    return out


def print_magnet_table(rows: list, n: int, per_kind: int, embed_name: str) -> None:
    print(f"\n### MAGNeT's ideas on the toy world ({embed_name} FAD of {n} clips; judges on {per_kind} clips of "
          f"each kind; passes = forward passes of the transformer per clip, each with and without the prompt)\n")
    print(markdown_table(["Sampler", "passes", "FAD", "CLAP score", "CLAP zero-shot", "mel-statistics judge",
                          "s per clip"], rows))
