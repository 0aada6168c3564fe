"""
evaluation/metrics.py — the scores the paper's tables are made of, shared by evaluate.py and train.py --eval-every.

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 4     FAD, the Fréchet audio distance of generated and real clips (Kilgour et al. 2019), and the
             CLAP score (cosine of prompt and clip in the CLAP space)
  Table 8    the linear probe's ROC-AUC and mAP (multi-label tagging, averaged over the tags)
  IS, FID    Zou, Gong and Gao's MaskGIT-on-SpecVQGAN report ("Application of Masked Token Transformer
             (MaskGIT) in high-quality and efficiency audio generation") scores generated spectrograms with
             the Fréchet Inception Distance and the Inception Score (FID 1.068, IS 1.003 on VAS); it names
             no classifier beyond "Inception". The FID is FAD's formula on a classifier's features

In:  embeddings (N, D), scores and 0/1 labels (N, K), class probabilities (N, K)
Out: one float per call
Only torch: the numbers are written out here so that a student can check them by hand.
"""

import torch
import torch.nn.functional as F

from ground.runtime import UserError


# ---------------------------------------------------------------------------------------------------
# The Fréchet audio distance (Sec. 4).
# ---------------------------------------------------------------------------------------------------
#
# Fit a Gaussian N(mu, S) to each set of embeddings; the Fréchet (2-Wasserstein) distance between two
# Gaussians has a closed form:
#     FAD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))
# The hard part is Tr((S_a S_b)^(1/2)). S_a S_b is not symmetric, so the usual tool (scipy.linalg.sqrtm)
# takes a general, slow and sometimes complex-valued square root. We use a symmetric route instead:
# S_a S_b = S_a^(1/2) (S_a^(1/2) S_b) has the same eigenvalues as (S_a^(1/2) S_b) S_a^(1/2) = M, and M is
# symmetric positive semi-definite. The trace of a square root is the sum of the square roots of the
# eigenvalues, so
#     Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i(M)),   M = S_a^(1/2) S_b S_a^(1/2)
# and both square roots need only torch.linalg.eigh, the eigen-decomposition of a symmetric matrix.
# With fewer clips than embedding dimensions (64 clips, 512 dims) the covariances are singular: their
# zero eigenvalues come out as tiny negatives in floating point and are clamped to 0 before the sqrt.
# Everything is float64: the trace is a difference of large, nearly equal sums.

def covariance(x: torch.Tensor) -> torch.Tensor:
    """Sample covariance (D, D) of rows x (N, D), with the unbiased 1/(N-1) (numpy.cov, the FAD toolbox)."""
    centred = x - x.mean(0)                                                   # (N, D)
    return centred.T @ centred / (x.shape[0] - 1)                             # (D, D)


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix: a = V diag(l) V^T -> V diag(sqrt l) V^T."""
    a = (a + a.T) / 2                                                         # remove round-off asymmetry
    eigvals, eigvecs = torch.linalg.eigh(a)                                   # (D,), (D, D)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def trace_sqrt_product(s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """Tr((S_a S_b)^(1/2)) through the symmetric M = S_a^(1/2) S_b S_a^(1/2) (see above).

    S_b^(1/2) S_a S_b^(1/2) has the same eigenvalues, but round-off differs between the two orders; their
    mean is the same number whichever set comes first, so FAD(a, b) == FAD(b, a) to the last bit.
    """
    def one_order(x, y):
        root = sqrtm_psd(x)
        m = root @ y @ root
        return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return (one_order(s_a, s_b) + one_order(s_b, s_a)) / 2


def frechet_distance(emb_a: torch.Tensor, emb_b: torch.Tensor) -> float:
    """FAD between embeddings emb_a (N, D) and emb_b (M, D): the Fréchet distance of their Gaussians."""
    if emb_a.shape[0] < 2 or emb_b.shape[0] < 2:
        raise UserError("FAD needs at least 2 clips in each set (a covariance of one clip is undefined).")
    a, b = emb_a.detach().cpu().double(), emb_b.detach().cpu().double()
    mu_a, mu_b = a.mean(0), b.mean(0)                                         # (D,)
    s_a, s_b = covariance(a), covariance(b)                                   # (D, D)
    fad = (mu_a - mu_b).square().sum() + (s_a.trace() + s_b.trace()) - 2 * trace_sqrt_product(s_a, s_b)   # sums symmetric in a, b
    return max(0.0, fad.item())                                               # round-off can give -1e-15


def clap_score(text_emb: torch.Tensor, audio_emb: torch.Tensor) -> float:
    """Mean cosine similarity of each prompt's text embedding with its clip's audio embedding (B, D) x (B, D)."""
    return F.cosine_similarity(text_emb.double(), audio_emb.double(), dim=-1).mean().item()


# ---------------------------------------------------------------------------------------------------
# Multi-label tagging (Table 8): ROC-AUC and mAP, each computed per tag and averaged over the tags.
# ---------------------------------------------------------------------------------------------------

def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of one tag: the chance that a random positive clip scores above a random
    negative one (ties count one half). (N,) scores, (N,) 0/1 labels.

    Mann-Whitney: rank all scores (tied scores share their mean rank); the positives' rank sum minus its
    smallest possible value P (P + 1) / 2 counts the (positive, negative) pairs the positives win.
    """
    s, y = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise UserError("ROC-AUC needs at least one positive and one negative clip of the tag.")
    ordered = s.sort().values
    below = torch.searchsorted(ordered, s, right=False)                       # (N,) clips scoring lower
    at_or_below = torch.searchsorted(ordered, s, right=True)                  # (N,) ... or equal, itself included
    ranks = below.double() + (at_or_below - below + 1) / 2     # 1 = lowest; ties share their mean rank
    return ((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of one tag: sum over score thresholds (highest first) of precision x the recall
    gained there; tied scores form one threshold (as scikit-learn's average_precision_score). Without
    ties it is the mean, over the positive clips, of the precision among the clips ranked at or above it."""
    s, y = scores.double().flatten(), labels.double().flatten()
    n_pos = y.sum()
    if n_pos == 0:
        raise UserError("average precision needs at least one positive clip of the tag.")
    order = s.argsort(descending=True)
    s, y = s[order], y[order]
    last = torch.cat([s[1:] != s[:-1], torch.tensor([True])])                 # the last clip of every tie group
    tp = y.cumsum(0)[last]                                                    # positives at or above each threshold
    seen = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]             # clips at or above each threshold
    recall_gain = torch.diff(tp, prepend=torch.zeros(1, dtype=torch.float64)) / n_pos
    return (recall_gain * tp / seen).sum().item()


def tagging_scores(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Macro ROC-AUC and mAP over the tags (N, K) that have both a positive and a negative clip; the
    MagnaTagATune convention of the papers Table 8 quotes (e.g. MERT's evaluation)."""
    tags = [k for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < labels.shape[0]]
    if not tags:
        raise UserError("no tag has both a positive and a negative clip among the test clips.")
    return {"roc_auc": sum(roc_auc(scores[:, k], labels[:, k]) for k in tags) / len(tags),
            "map": sum(average_precision(scores[:, k], labels[:, k]) for k in tags) / len(tags),
            "tags": len(tags)}


# ---------------------------------------------------------------------------------------------------
# Zou, Gong and Gao's scores: the Inception Score and FID of a classifier of sound classes.
# ---------------------------------------------------------------------------------------------------

def inception_score(probs: torch.Tensor) -> float:
    """IS = exp( mean over clips of KL(p(y|x) || p(y)) ), p(y) the mean of the clips' p(y|x) (N, K).

    High when every clip is one class for sure (p(y|x) peaked) and the set covers the classes evenly
    (p(y) flat): 1 for identical predictions, K for confident predictions spread evenly over K classes.
    """
    p = probs.double().clamp_min(1e-12)
    p = p / p.sum(1, keepdim=True)
    marginal = p.mean(0, keepdim=True)                                        # (1, K) p(y)
    kl = (p * (p.log() - marginal.log())).sum(1)                              # (N,)
    return kl.mean().exp().item()
