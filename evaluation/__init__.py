"""
evaluation/ — the paper's evaluation in miniature, behind evaluate.py. A first reading may skip it.

  metrics.py  FAD (the Fréchet distance of embeddings), the CLAP score, ROC-AUC and average precision,
              the Inception Score: each a few lines, tested against a hand computation
"""
