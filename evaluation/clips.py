"""
evaluation/clips.py — the sets of clips every table of the evaluation scores, the embedding FAD sees them in,
and the markdown table they are printed as.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 4     FAD compares embeddings of generated and real clips (VGGish there; TinyCLAP or LAION-CLAP here)
  Table 1    clips generated from captions, as sample.py makes them (with and without the CFG ramp)
  Table 3    the same real clips through the vocoder alone, and through the codec and the vocoder

In:  a pipeline (pipeline.load_pipeline), prompts or real clips (N, T)
Out: clips (N, T) on the CPU; an embedder wav (B, T) -> (B, D); a markdown table as a string
Run: python evaluate.py --quick   # every table, each built from these sets
"""

import torch

import mel
import pipeline


# ---------------------------------------------------------------------------------------------------
# The embedding FAD is computed in: TinyCLAP's audio tower (the toy world), or LAION-CLAP.
# ---------------------------------------------------------------------------------------------------

def make_embedder(pipe, laion_ckpt: str | None = None):
    """A function wav (B, T) -> (B, D) on the CPU, and its name for the tables."""
    if laion_ckpt:
        from formats import clap_format
        laion = clap_format.load_clap("laion", laion_ckpt, device=pipe.device)
        return (lambda wav: laion.embed_audio(wav).float().cpu()), "LAION-CLAP audio embedding"
    return (lambda wav: pipe.clap.embed_audio(wav.to(pipe.device)).float().cpu()), "TinyCLAP audio embedding"


# ---------------------------------------------------------------------------------------------------
# Generating sets of clips (sample.py's three tasks, in batches).
# ---------------------------------------------------------------------------------------------------

def generate_clips(pipe, prompts, steps=16, guidance=3.0, temperature=1.5, seed=0, batch=16, cfg_ramp=True,
                   cond=None) -> torch.Tensor:
    """One clip per prompt, as pipeline.text_to_audio makes it, `batch` prompts at a time: (N, T) on the CPU.
    cond: CLAP embeddings (N, 512) to condition on instead of the prompts' text embeddings.

    Batch i is sampled with seed + i, so the clips do not depend on how many other settings ran before.
    """
    out = []
    for i in range(0, len(prompts), batch):
        c = pipeline.embed_prompts(pipe, prompts[i:i + batch]) if cond is None else cond[i:i + batch].to(pipe.device)
        tokens, _ = pipeline.sample_tokens(pipe, c, steps, guidance, temperature, seed + i, verbose=False,
                                           cfg_ramp=cfg_ramp)                 # (b, R, C)
        out.append(pipeline.tokens_to_audio(pipe, tokens)[1].float().cpu())
    return torch.cat(out)                                                     # (N, T)


def codec_round_trip(pipe, wavs: torch.Tensor, batch=16) -> torch.Tensor:
    """Encode to tokens and decode again, changing no token: what the codec + vocoder alone cost (rFAD)."""
    out = []
    for i in range(0, wavs.shape[0], batch):
        _, wav = pipeline.tokens_to_audio(pipe, pipeline.audio_to_tokens(pipe, wavs[i:i + batch]))
        out.append(wav.float().cpu()[:, :wavs.shape[-1]])
    return torch.cat(out)


def vocoder_round_trip(pipe, wavs: torch.Tensor) -> torch.Tensor:
    """The clips' own mel (clipped to the tokenizer's [-80, 20] dB) back to sound by the pipeline's vocoder
    (Griffin-Lim without one): what the last stage alone costs, no token involved."""
    log_mel = mel.denormalize(mel.normalize(mel.mel_spectrogram(wavs)))     # (N, 80, F)
    return pipeline.mel_to_audio(pipe, log_mel.to(pipe.device))[:, :wavs.shape[-1]]


def one_step_fill(pipe, wavs: torch.Tensor, prompts: list[str], share: float = 0.5, guidance: float = 3.0,
                  seed: int = 0, batch: int = 16) -> torch.Tensor:
    """The transformer's part without the iterative sampler ("teacher-forced"): hide `share` of each real
    clip's tokens at random and fill all of them in one forward pass, each with the most likely code of
    Eq. 2's guided logits given the visible real tokens and the prompt; then decode as usual."""
    import specmaskgit
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, wavs.shape[0], batch):
        tokens = pipeline.audio_to_tokens(pipe, wavs[i:i + batch])                  # (b, R, C)
        flat = tokens.flatten(1)                                                  # (b, R C)
        hidden = (torch.rand(flat.shape, generator=g) < share).to(flat.device)   # (b, R C) bool
        cond = pipe.clap.embed_text(prompts[i:i + batch]).to(pipe.device)
        with torch.inference_mode():
            logits = specmaskgit.guided_logits(pipe.transformer, flat, cond, hidden, guidance)   # (b, R C, K)
        filled = torch.where(hidden, logits.argmax(-1), flat).view_as(tokens)
        out.append(pipeline.tokens_to_audio(pipe, filled)[1].float().cpu()[:, :wavs.shape[-1]])
    return torch.cat(out)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
