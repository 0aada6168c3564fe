"""
evaluation/ — the paper's evaluation in miniature, behind evaluate.py. A first reading may skip it.

  clips.py           the sets of clips every table scores: generated from prompts (sample.py's clips, in
                     batches), real clips through the vocoder alone or the codec and vocoder, half their
                     tokens refilled in one pass; the embedding FAD is computed in; the markdown table
  judges.py          the three judges (TinyCLAP zero-shot, mel statistics, pitch and MFCCs) on real,
                     round-tripped and generated clips of every kind (evaluate.py --judges)
  ablations.py       Table 1, Fig. 7 and Table 7: FAD with and without CFG and its ramp, against the
                     iterations and the Gumbel temperature, zero-shot inpainting and BWE (--ablations, --fad)
  magnet_table.py    MAGNeT's decoding ideas one by one against SpecMaskGIT's sampler (--magnet)
  probe.py           Table 8: the linear probe (multi-label tagging) on frozen features (--probe)
  reconstruction.py  Table 3: reconstruction FAD of the vocoder and the codec, the latent rate, IS and FID
                     (--reconstruction)
  curve.py           Fig. 8: FAD against training steps from a run's log, its PNG, the early stop (--curve)
  metrics.py         FAD (the Fréchet distance of embeddings), the CLAP score, ROC-AUC and average precision,
                     the Inception Score: each a few lines, tested against a hand computation
"""
