"""
clap.py — the conditioner: audio and text mapped into one shared 512-d space (CLAP).

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 3.3  SpecMaskGIT never sees a caption in training. It is conditioned on the CLAP *audio*
            embedding of each training clip (Fig. 4) and, at sampling time, on the CLAP *text*
            embedding of the prompt (Fig. 5). That swap works only because a contrastively trained
            CLAP puts a sound and its description close together. The paper uses LAION-CLAP's public
            "630k-audioset-best.pt" (HTSAT-tiny audio tower + RoBERTa text tower, no fusion).
CLAP itself: Wu, Chen et al., "Large-scale contrastive language-audio pretraining" (ICASSP 2023), which
follows CLIP (Radford et al., 2021): two encoders, one symmetric InfoNCE loss, a learned temperature.

Two models, one interface (every method returns float32 rows of unit length, on the model's device):
    embed_audio(wav)    wav (B, T) or (T,) at 22050 Hz  -> (B, 512)
    embed_text(texts)   list[str] (or one str)          -> (B, 512)
    unknown_words(text) the words of `text` the model ignores (always [] for LAION-CLAP)

  TinyCLAP   written out here (0.52 M parameters in the tiny preset, 2.4 M in "full"): a small CNN over
             our log-mel, a transformer over words, small enough to train on a CPU, on the toy sound world
             (`train.py --stage clap --data toy`). Config, towers, model; after LaionCLAP, its loss and Trainer.
  LaionCLAP  the paper's conditioner, pretrained: a thin wrapper around the laion-clap package's model, which
             it is given (with the resampler to its 48 kHz) by formats/clap_format.load_clap; that loader,
             the one place that imports laion_clap, gives either model from its checkpoint.

The modality gap (Liang et al., "Mind the Gap", NeurIPS 2022): contrastive training leaves the audio and the
text embeddings in two separate cones, so a text embedding is never quite where the audio embeddings
that SpecMaskGIT trained on are. TinyCLAP removes each modality's mean before normalising ("centering",
see `TinyCLAP.embed_audio`); `modality_gap` measures it; `noise_augment` is the other classic remedy.

In:  waveforms (B, T) at 22050 Hz, captions (list of str)
Out: embeddings (B, 512), L2-normalised
Run alone: python clap.py   # sizes of the presets
"""

import collections
import dataclasses
import math
import re
import unicodedata
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import mel

EMBED_DIM = 512          # the width of LAION-CLAP's joint space; SpecMaskGIT projects it 512 -> 768 (Sec. 3.3)


@dataclass
class Config:
    """TinyCLAP's size. The paper uses LAION-CLAP, so there is no paper size: "full" is a roomier tiny."""
    embed_dim: int = EMBED_DIM                   # the joint space, as wide as LAION-CLAP's
    audio_channels: tuple = (32, 64, 128, 128)   # conv widths; each conv halves frequency and time
    audio_hidden: int = 256                      # per-frame feature width before pooling over time
    text_width: int = 256                        # word-vector width
    text_layers: int = 2                         # transformer blocks over the words (0 = bag of words)
    text_heads: int = 4
    max_words: int = 32                          # longer captions are cut (AudioCaps captions are ~10 words)
    init_temperature: float = 0.07               # CLIP's initial softmax temperature (logit scale 1/0.07)
    max_logit_scale: float = 100.0               # CLIP clamps exp(logit_scale) at 100 for stability
    center_momentum: float = 0.99                # running means of the two modalities (the gap remedy)


PRESETS = {
    "full": Config(),
    "tiny": Config(audio_channels=(16, 32, 64, 64), audio_hidden=128, text_width=128, text_layers=1),
}


# ---------------------------------------------------------------------------------------------------
# Words: TinyCLAP reads lower-case words without punctuation, from a vocabulary fixed before training.
# ---------------------------------------------------------------------------------------------------

def words_of(text: str) -> list[str]:
    """'A dog barks, twice!' -> ['a', 'dog', 'barks', 'twice']: lower case, punctuation dropped.

    A word is a run of letters or digits in any script ("café", "ñandú", "狗", "كلب" stay whole), so a
    word the vocabulary lacks is reported as itself, not as the ASCII pieces of it that happen to be
    known. NFKC first makes one spelling of each letter ("e" + combining accent = "é", full-width "ｄ" = "d").
    """
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())


def build_vocab(captions, min_count: int = 1) -> list[str]:
    """The sorted list of words used at least `min_count` times in the training captions.

    It is stored in the checkpoint as a plain list of strings; word i has embedding row i + 1 (row 0
    is the padding). A word outside it cannot be embedded and is ignored, and reported as such.
    """
    counts = collections.Counter(w for c in captions for w in words_of(c))
    return sorted(w for w, n in counts.items() if n >= min_count)


# ---------------------------------------------------------------------------------------------------
# TinyCLAP's two towers.
# ---------------------------------------------------------------------------------------------------

class AudioEncoder(nn.Module):
    """Log-mel -> a few strided 3x3 convolutions -> mean and max over time -> one vector (B, embed_dim).

    The mel is read like an image (1 channel, 80 x frames). Each conv halves both axes; frequency
    position is kept to the end (80 -> 5 rows: a low hum and a high whistle are different sounds) and
    only time is pooled, since a clip is "a dog barking" wherever in it the bark is. Mean pooling sees
    steady sounds (rain), max pooling sees short events (a knock): we keep both.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        layers, c_in, rows = [], 1, mel.N_MELS
        for c in cfg.audio_channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.GELU()]
            c_in, rows = c, (rows + 1) // 2                    # stride 2 with padding 1: ceil(rows / 2)
        self.convs = nn.Sequential(*layers)
        self.mix = nn.Conv1d(c_in * rows, cfg.audio_hidden, 1)  # mixes channels x frequency rows per frame
        self.proj = nn.Linear(2 * cfg.audio_hidden, cfg.embed_dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = mel.normalize(mel.mel_spectrogram(wav))            # (B, T) -> (B, 80, F) in [-1, 1] (Sec. 3.1)
        x = self.convs(x[:, None])                             # (B, 1, 80, F) -> (B, C, 5, F/16)
        x = x.flatten(1, 2)                                    # (B, C * 5, F/16)
        x = F.gelu(self.mix(x))                                # (B, H, F/16)
        x = torch.cat([x.mean(-1), x.amax(-1)], dim=1)         # (B, 2H): pooled over time
        return self.proj(x)                                    # (B, embed_dim)


class Block(nn.Module):
    """A pre-norm transformer block (attention, then MLP, each added back to its input)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, W // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                   # 3 x (B, heads, N, W / heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # padding is never attended to
        x = x + self.out(a.transpose(1, 2).reshape(B, N, W))   # (B, N, W)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Word ids (B, N) -> word vectors + positions -> transformer blocks -> mean over words (B, embed_dim).

    The mean over the real (non-padding) words makes a short paraphrase built from known words land
    near the caption it paraphrases; the blocks let a word's vector depend on its neighbours
    ("dog barking" vs "barking" alone). With text_layers = 0 this is a plain bag of learned word vectors.
    """

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size + 1, cfg.text_width, padding_idx=0)   # row 0 = padding
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.max_words, cfg.text_width))
        self.blocks = nn.ModuleList([Block(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers)])
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != 0                                        # (B, N) True on real words
        x = self.words(ids) + self.pos[: ids.shape[1]]         # (B, N, W)
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        w = keep.to(x.dtype)[..., None]                        # (B, N, 1)
        x = (x * w).sum(1) / w.sum(1).clamp(min=1)             # (B, W): mean over real words
        return self.proj(x)                                    # (B, embed_dim)


# ---------------------------------------------------------------------------------------------------
# TinyCLAP: the two towers, the temperature and the two modality means.
# ---------------------------------------------------------------------------------------------------

class TinyCLAP(nn.Module):
    """A CLAP small enough to train on a CPU, with the interface of LaionCLAP.

    Two spaces to keep apart:
      the *training* space: normalise(encoder output). The contrastive loss lives here, as in CLIP.
      the *conditioning* space: normalise(training-space vector - that modality's mean), what
        embed_audio / embed_text return and SpecMaskGIT sees. Subtracting the means ("centering")
        removes the modality gap's main part, the offset between the audio cone and the text cone.
    The means are buffers (saved in the checkpoint), kept as running averages during training like
    BatchNorm's statistics, or set exactly over a data set with `fit_centering`.
    """

    def __init__(self, cfg: Config, vocab: list[str]):
        super().__init__()
        if not vocab:
            raise ValueError("TinyCLAP needs a vocabulary; build it from the training captions with clap.build_vocab.")
        self.cfg = cfg
        self.vocab = list(vocab)
        self.index = {w: i + 1 for i, w in enumerate(self.vocab)}        # word -> embedding row (0 = padding)
        self.audio = AudioEncoder(cfg)
        self.text = TextEncoder(cfg, len(self.vocab))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.register_buffer("audio_mean", torch.zeros(cfg.embed_dim))   # mean training-space audio embedding
        self.register_buffer("text_mean", torch.zeros(cfg.embed_dim))    # mean training-space text embedding
        self.register_buffer("mean_updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # --- words -> ids ---------------------------------------------------------------------------------
    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` outside the vocabulary, in order, each once: they are ignored."""
        return list(dict.fromkeys(w for w in words_of(text) if w not in self.index))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Captions -> (B, N) word ids, 0-padded, unknown words dropped, cut to max_words."""
        rows = [[self.index[w] for w in words_of(t) if w in self.index][: self.cfg.max_words] for t in texts]
        n = max(1, max(len(r) for r in rows))
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids.to(self.device, non_blocking=True)

    # --- the training space (used by the loss) ------------------------------------------------------
    def audio_features(self, wav: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio(wav), dim=-1)           # (B, T) -> (B, D), unit length

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)            # (B, N) -> (B, D), unit length

    def forward(self, wav: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-space embeddings of B clips and their B captions: (B, D) and (B, D).

        Training goes through forward (not the two methods above) because the training loop's stand-in that
        shares gradients between copies of the model (training/edges.py) sees only what a forward call computed.
        """
        return self.audio_features(wav), self.text_features(ids)

    @torch.no_grad()
    def update_means(self, audio: torch.Tensor, text: torch.Tensor) -> None:
        """Fold one batch of training-space embeddings into the running modality means."""
        m = self.cfg.center_momentum
        first = self.mean_updates == 0                         # the first batch sets them (a 0-d test, never read back)
        for mean, batch in ((self.audio_mean, audio.mean(0)), (self.text_mean, text.mean(0))):
            mean.copy_(torch.where(first, batch, mean * m + batch * (1 - m)))
        self.mean_updates += 1

    # --- the conditioning space (the interface) ------------------------------------------------------
    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor, center: bool = True, batch_size: int = 64) -> torch.Tensor:
        """wav (B, T) or (T,) at 22050 Hz -> (B, 512) unit vectors, centered (see the class docstring)."""
        wav = wav[None] if wav.dim() == 1 else wav
        out = []
        for i in range(0, wav.shape[0], batch_size):
            out.append(self.audio_features(wav[i:i + batch_size].to(self.device, torch.float32)))
        e = torch.cat(out)                                     # (B, D) in the training space
        return F.normalize(e - self.audio_mean, dim=-1) if center else e

    @torch.no_grad()
    def embed_text(self, texts, center: bool = True, return_unknown: bool = False):
        """Captions -> (B, 512) unit vectors; with return_unknown also each caption's ignored words.

        A caption that is empty or has no word in the vocabulary cannot be embedded (it would be the
        padding's vector, i.e. "anything"): that is a ValueError naming the caption (sample.py says it
        in one sentence before it gets here).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no prompt was given.")
        for t in texts:
            if not words_of(t):
                raise ValueError(f"the prompt {t!r} has no words.")
            if all(w not in self.index for w in words_of(t)):
                some = ", ".join(self.vocab[:: max(1, len(self.vocab) // 12)][:12])
                raise ValueError(f"none of the words of {t!r} is in this TinyCLAP's vocabulary of "
                                f"{len(self.vocab)} words (for example: {some}).")
        e = self.text_features(self.tokenize(texts))           # (B, D) in the training space
        e = F.normalize(e - self.text_mean, dim=-1) if center else e
        return (e, [self.unknown_words(t) for t in texts]) if return_unknown else e


@torch.no_grad()
def fit_centering(model: TinyCLAP, wavs: torch.Tensor, captions: list[str], batch_size: int = 64) -> None:
    """Set the two modality means exactly, over a set of clips and captions (e.g. the training set)."""
    a = model.embed_audio(wavs, center=False, batch_size=batch_size)
    t = torch.cat([model.text_features(model.tokenize(captions[i:i + batch_size]))
                   for i in range(0, len(captions), batch_size)])
    model.audio_mean.copy_(a.mean(0))
    model.text_mean.copy_(t.mean(0))
    model.mean_updates.fill_(max(1, model.mean_updates.item()))


# ---------------------------------------------------------------------------------------------------
# The paper's conditioner: LAION-CLAP, pretrained, behind the same interface.
# ---------------------------------------------------------------------------------------------------

LAION_SR = 48000         # LAION-CLAP's audio tower (HTSAT) was trained on 48 kHz audio


class LaionCLAP:
    """LAION-CLAP ("630k-audioset-best.pt": HTSAT-tiny + RoBERTa, non-fusion, Sec. 3.3) with TinyCLAP's interface.

    The network is laion-clap's own, `module`: its CLAP_Module, or anything with the module's two calls
    `get_audio_embedding_from_data(x, use_tensor=True)` and `get_text_embedding(texts, use_tensor=True)`
    (the tests pass a stand-in instead of the 600 MB checkpoint). This class only converts: our 22050 Hz
    audio to LAION_SR with `resample` ((..., T) -> (..., T * 48000 / 22050)), on the model's device;
    batches of `batch_size`; tensors in and out; unit length. formats/clap_format.load_clap builds the
    module from its checkpoint and gives it the project's resampler.
    """

    def __init__(self, module, resample, device: str = "cpu", batch_size: int = 16):
        self.module, self.resample = module, resample
        self.device, self.batch_size = torch.device(device), batch_size

    def unknown_words(self, text: str) -> list[str]:
        return []   # RoBERTa's byte-level BPE spells out any word

    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) or (T,) at 22050 Hz -> (B, 512) unit vectors.

        A full clip (217088 samples, 9.85 s) becomes 472,573 samples at 48 kHz; laion-clap pads it by
        repetition to its 10 s input (480,000 samples).
        """
        wav = wav[None] if wav.dim() == 1 else wav
        # the 22 kHz audio goes to the model's device first, and is resampled there: fewer samples to
        # copy than at 48 kHz, and on a GPU the filter is one convolution there instead of the host's work
        x = self.resample(wav.detach().float().to(self.device))                     # (B, T * 48000 / 22050)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            e = self.module.get_audio_embedding_from_data(x[i:i + self.batch_size].to(self.device), use_tensor=True)
            out.append(torch.as_tensor(e).float().to(self.device))
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts, return_unknown: bool = False):
        """Captions -> (B, 512) unit vectors from LAION-CLAP's RoBERTa tower. An empty caption is a
        ValueError, as in TinyCLAP (sample.py says it in one sentence before it gets here)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no prompt was given.")
        for t in texts:
            if not t.strip():
                raise ValueError(f"the prompt {t!r} is empty.")
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            # laion-clap's tokenizer squeezes the batch axis of a single caption and RoBERTa then fails,
            # so a lone caption goes in twice and we keep one row.
            e = self.module.get_text_embedding(chunk * 2 if len(chunk) == 1 else chunk, use_tensor=True)
            out.append(torch.as_tensor(e).float().to(self.device)[: len(chunk)])
        e = F.normalize(torch.cat(out), dim=-1)
        return (e, [[] for _ in texts]) if return_unknown else e


# ---------------------------------------------------------------------------------------------------
# The contrastive loss (CLIP's symmetric InfoNCE) and the two measurements we care about.
# ---------------------------------------------------------------------------------------------------

def contrastive_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B (audio, text) pairs, both (B, D) unit vectors.

    logits[i, j] = exp(logit_scale) * cos(audio_i, text_j). Row i is a B-way classification "which
    caption belongs to clip i?" and column j "which clip belongs to caption j?"; the loss is the mean
    of the two cross-entropies (CLIP, Radford et al. 2021, Fig. 3). exp(logit_scale) = 1 / temperature.

    `positives` (B, B) bool marks every pair that counts as a match (it must include the diagonal).
    In the toy world one batch holds several clips described by the very same caption; calling those
    "wrong" would ask the model to tell identical texts apart, so each row's target spreads evenly over
    its positives instead (a soft-target cross-entropy). None means only the diagonal, as in CLIP.
    """
    logits = logit_scale.exp() * audio @ text.T                                   # (B, B)
    if positives is None:
        target = torch.arange(audio.shape[0], device=audio.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    p = positives.float()
    return (F.cross_entropy(logits, p / p.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, p.T / p.T.sum(1, keepdim=True))) / 2


def modality_gap(audio: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """How far apart the two modalities sit, from N matching pairs of unit vectors (N, D).

    matching_cos  mean cos(audio_i, text_i): how close a caption is to its own clip
    random_cos    mean cos(audio_i, text_j), i != j: the floor every pair gets just for being in the cones
    centroid_gap  || mean(audio) - mean(text) ||, Liang et al.'s (NeurIPS 2022) measure of the gap
    A caption can rank its clip first (matching > random) and still be far from it (matching_cos 0.3):
    retrieval only needs the ranking, but SpecMaskGIT feeds the vector itself to a transformer that has
    only ever seen audio embeddings, so it needs the text to land where the audio embeddings are.
    """
    sim = audio @ text.T                                                          # (N, N)
    n = sim.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    return {"matching_cos": sim.diagonal().mean().item(),
            "random_cos": sim[off].mean().item() if n > 1 else float("nan"),
            "centroid_gap": (audio.mean(0) - text.mean(0)).norm().item()}


def noise_augment(emb: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian-noise augmentation of training embeddings (LAFITE, CVPR 2022; CapDec, 2022).

    The other remedy for the modality gap, for a trainer to apply to the *audio* embeddings it
    conditions SpecMaskGIT on: e -> normalise(e + std * n / sqrt(D)), n ~ N(0, I). The noise has norm
    ~std, so the transformer learns to accept any condition within ~std of a real audio embedding,
    which is where a text embedding lands when std is about the measured distance between matching
    audio and text embeddings (sqrt(2 - 2 * matching_cos) for unit vectors). `std` = 0 returns `emb`.
    """
    if std == 0:
        return emb
    noise = torch.randn(emb.shape, generator=generator, dtype=emb.dtype).to(emb.device)
    return F.normalize(emb + std * noise / math.sqrt(emb.shape[-1]), dim=-1)


# ---------------------------------------------------------------------------------------------------
# Training: one contrastive step (train.py owns the data, the schedule, the logs and the files).
# ---------------------------------------------------------------------------------------------------

class Trainer:
    """Owns a TinyCLAP and its AdamW; `step` is one contrastive update on a batch of clips + captions.

    The vocabulary is part of the model (the size of the word table), so it must exist before training:
    train.py builds it from the training captions with `build_vocab` and passes it here.
    """

    def __init__(self, cfg: Config, device: str = "cpu", lr: float = 1e-3,
                 amp_dtype: torch.dtype = torch.float32, vocab: list[str] | None = None,
                 weight_decay: float = 0.01):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.model = TinyCLAP(cfg, vocab or []).to(device)
        # what step() calls for the pass that learns: the model itself, unless the training loop puts a
        # stand-in here that also shares the gradients between copies of the model (training/edges.py)
        self.step_modules = {"model": self.model}
        # no weight decay on gains, biases, the word table and the temperature (as CLIP); the (L, W) position
        # table is a matrix and is decayed with the weights, which CLIP spares
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and not n.startswith("text.words")]
        rest = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and not n.startswith("text.words"))]
        self.optimizers = [torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98),
                                            fused=device.startswith("cuda"))]        # one kernel for all weights on a GPU

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        opt = self.optimizers[0]
        model = self.model
        model.train()
        wav = batch["wav"].to(self.device, torch.float32, non_blocking=True)         # (B, T)
        captions = list(batch["caption"])
        # Pairs with the same words are matches too (the toy world repeats captions within a batch).
        key = [" ".join(words_of(c)) for c in captions]
        positives = torch.tensor([[a == b for b in key] for a in key]).to(self.device, non_blocking=True)   # (B, B)
        with torch.autocast(torch.device(self.device).type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype != torch.float32):
            a, t = self.step_modules["model"](wav, model.tokenize(captions))         # (B, D), (B, D)
            loss = contrastive_loss(a.float(), t.float(), model.logit_scale, positives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))         # CLIP's clamp at 100
        model.update_means(a.detach().float(), t.detach().float())
        with torch.no_grad():
            sim = a.float() @ t.float().T
            acc = positives.gather(1, sim.argmax(1, keepdim=True)).float().mean()    # clip -> caption top-1
        return {"loss": loss.detach(), "acc": acc, "scale": model.logit_scale.detach().exp(),   # 0-d tensors:
                "gap_cos": sim.diagonal().mean(), "grad_norm": grad_norm.detach()}             # read at log time

    def state_dict(self) -> dict:
        return {**self.checkpoint(), "optimizer": self.optimizers[0].state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])                  # train.py has checked the config and the vocabulary
        self.optimizers[0].load_state_dict(d["optimizer"])

    def checkpoint(self) -> dict:
        """The inference checkpoint: config, vocabulary (a list of str), weights and the modality means."""
        return {"stage": "clap", "config": dataclasses.asdict(self.cfg), "vocab": list(self.model.vocab),
                "model": self.model.state_dict()}


if __name__ == "__main__":
    demo_vocab = [f"w{i}" for i in range(200)]
    for name, cfg in PRESETS.items():
        n = sum(p.numel() for p in TinyCLAP(cfg, demo_vocab).parameters())
        print(f"TinyCLAP {name}: {n / 1e6:.2f} M parameters (with a 200-word vocabulary)")
