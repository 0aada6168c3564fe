"""
formats/clap_format.py — the conditioner's checkpoints: our TinyCLAP's, and LAION-CLAP's official one.

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 3.3: the paper conditions on LAION-CLAP's public
"630k-audioset-best.pt" (HTSAT-tiny audio tower + RoBERTa text tower, no fusion).

Why a file of its own: clap.py holds the method (both conditioners behind one interface: TinyCLAP, its loss
and its Trainer, and the LaionCLAP wrapper) and imports only torch, numpy and mel.py. Loading a checkpoint,
with its one-sentence errors, importing the laion-clap package (only when asked for) and resampling to its
48 kHz (ground/audio_io) belong at the edge, as formats/hifigan_format.py does for HiFiGAN.

  load_tiny      a clap.TinyCLAP from its checkpoint dict (config, vocabulary and weights all come from it)
  to_laion_rate  our 22050 Hz audio at the 48 kHz CLAP was trained on, on the audio's device
  load_laion     laion-clap's model from the official checkpoint, in clap.LaionCLAP with to_laion_rate
  load_clap      what train.py and sample.py call: "tiny" (our checkpoint) or "laion" (the paper's)

In:  a checkpoint path; waveforms (B, T) at 22050 Hz, captions (list of str)
Out: clap.TinyCLAP or clap.LaionCLAP: embed_audio / embed_text -> (B, 512), L2-normalised
"""

import os

import torch

import clap
import mel
from ground import audio_io
from ground.runtime import UserError, build_model, load_checkpoint


def load_tiny(ckpt: dict) -> clap.TinyCLAP:
    """Rebuild a TinyCLAP from its checkpoint dict, in eval mode (runtime.build_model checks the rest)."""
    vocab = ckpt.get("vocab")
    if not isinstance(vocab, (list, tuple)) or not vocab or not all(isinstance(w, str) for w in vocab):
        raise UserError("this clap checkpoint has no vocabulary: it was not written by clap.Trainer.")
    return build_model(clap.TinyCLAP, clap.Config, ckpt, "clap", vocab=list(vocab))


def import_laion_clap(flag: str = "--clap laion"):
    """Import laion-clap only when it is asked for (it is not needed for anything else); `flag` is what asked
    for it, named when the package is missing (evaluate.py's --fad-clap-ckpt checks it so)."""
    try:
        import laion_clap
    except ImportError as e:
        if e.name in ("laion_clap", None):
            raise UserError(f"{flag} needs the laion-clap package: pip install laion-clap "
                            "(it also needs torchvision and transformers).") from None
        if e.name == "torchvision":
            raise UserError(f"laion-clap needs torchvision: pip install the torchvision build that matches "
                            f"torch {torch.__version__}.") from None
        raise UserError(f"laion-clap could not import {e.name}: pip install {e.name}.") from None
    except Exception as e:  # e.g. a torchvision built for another torch fails while importing
        raise UserError(f"laion-clap is installed but does not import ({type(e).__name__}: {str(e)[:120]}); "
                        f"reinstall torchvision to match torch {torch.__version__}.") from None
    return laion_clap


def to_laion_rate(wav: torch.Tensor) -> torch.Tensor:
    """Our 22050 Hz audio (..., T) at LAION-CLAP's 48 kHz, computed on `wav`'s own device: audio_io.resample
    builds its filter bank there and runs one strided convolution, torch ops only."""
    return audio_io.resample(wav, mel.SR, clap.LAION_SR)                             # (..., ceil(T * 960 / 441))


def load_laion(ckpt_path: str, device: str = "cpu", batch_size: int = 16) -> clap.LaionCLAP:
    """clap.LaionCLAP around laion-clap's CLAP_Module loaded from `ckpt_path` (HTSAT-tiny, non-fusion),
    resampling with to_laion_rate; every way the package or the file can fail is one sentence."""
    laion_clap = import_laion_clap()
    if ckpt_path and os.path.isdir(ckpt_path):
        raise UserError(f"{ckpt_path} is a folder; --clap-ckpt needs the file 630k-audioset-best.pt itself.")
    if not ckpt_path or not os.path.isfile(ckpt_path):
        what = f"the LAION-CLAP checkpoint {ckpt_path} does not exist" if ckpt_path else "--clap laion needs a checkpoint"
        raise UserError(f"{what}: download 630k-audioset-best.pt (once, needs internet) from "
                        "https://huggingface.co/lukewys/laion_clap and pass its path with --clap-ckpt.")
    try:
        module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", device=device)
    except OSError:  # transformers could not find the RoBERTa tokenizer/config offline
        raise UserError("laion-clap could not load the 'roberta-base' tokenizer and config: run it once "
                        "with internet access (or set HF_HOME to a Hugging Face cache that has them).") from None
    try:
        try:
            module.load_ckpt(ckpt_path, verbose=False)
        except TypeError:  # older laion-clap releases have no `verbose`
            module.load_ckpt(ckpt_path)
    except RuntimeError as e:
        if "position_ids" in str(e):  # transformers >= 4.31 has no such buffer; the 2022 checkpoint does
            raise UserError("this laion-clap release cannot load the checkpoint with your transformers "
                            "(text_branch.embeddings.position_ids): pip install 'transformers<4.31'.") from None
        raise UserError(f"{ckpt_path} is not a LAION-CLAP HTSAT-tiny non-fusion checkpoint ({str(e)[:120]}).") from None
    return clap.LaionCLAP(module, to_laion_rate, device=device, batch_size=batch_size)


def load_clap(kind: str, path: str, device: str = "cpu"):
    """The conditioner train.py and sample.py use: "tiny" (our checkpoint) or "laion" (the paper's)."""
    if kind == "tiny":
        return load_tiny(load_checkpoint(path, "clap")).to(device)
    if kind == "laion":
        return load_laion(path, device=device)
    raise UserError(f"--clap must be tiny or laion, not {kind!r}.")
