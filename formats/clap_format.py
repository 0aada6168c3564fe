"""
formats/clap_format.py — the conditioner's checkpoints: our TinyCLAP's, and LAION-CLAP's official one.

Paper: "SpecMaskGIT" (ISMIR 2024), Sec. 3.3: the paper conditions on LAION-CLAP's public
"630k-audioset-best.pt" (HTSAT-tiny audio tower + RoBERTa text tower, no fusion).

Why a file of its own: clap.py holds the method (TinyCLAP, its loss and its Trainer) and imports only
torch, numpy and mel.py. Loading a checkpoint, with its one-sentence errors, and wrapping the laion-clap
package (imported only when asked for) belong at the edge, as formats/hifigan_format.py does for HiFiGAN.

  load_tiny   a TinyCLAP from its checkpoint dict (config, vocabulary and weights all come from it)
  to_laion_rate  our 22050 Hz audio at the 48 kHz CLAP was trained on, on the audio's device
  LaionCLAP   laion-clap's model with clap.py's interface: resamples (to_laion_rate, on the model's
              device), batches, L2-normalises
  load_clap   what train.py and sample.py call: "tiny" (our checkpoint) or "laion" (the paper's)

In:  a checkpoint path; waveforms (B, T) at 22050 Hz, captions (list of str)
Out: a model with embed_audio / embed_text -> (B, 512), L2-normalised
"""

import os

import torch
import torch.nn.functional as F

import clap
import mel
from ground import audio_io
from ground.runtime import UserError, build_model, load_checkpoint

LAION_SR = 48000         # LAION-CLAP's audio tower (HTSAT) was trained on 48 kHz audio


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
    return audio_io.resample(wav, mel.SR, LAION_SR)                                  # (..., ceil(T * 960 / 441))


class LaionCLAP:
    """LAION-CLAP ("630k-audioset-best.pt": HTSAT-tiny + RoBERTa, non-fusion, Sec. 3.3) with our interface.

    Everything model-specific stays inside laion-clap; this class only converts: our 22050 Hz audio ->
    48 kHz (to_laion_rate, on the model's device), batches of `batch_size`, tensors in and out, unit
    length. The module it wraps may be anything with laion-clap's two calls (`from_module`), which is how
    the tests check this logic without the 600 MB checkpoint.
    """

    def __init__(self, ckpt_path: str, device: str = "cpu", batch_size: int = 16):
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
        self._setup(module, device, batch_size)

    @classmethod
    def from_module(cls, module, device: str = "cpu", batch_size: int = 16) -> "LaionCLAP":
        """Wrap an already built module with laion-clap's `get_audio_embedding_from_data(x, use_tensor=True)`
        and `get_text_embedding(texts, use_tensor=True)` (used by the tests with a stand-in)."""
        obj = cls.__new__(cls)
        obj._setup(module, device, batch_size)
        return obj

    def _setup(self, module, device: str, batch_size: int) -> None:
        self.module, self.device, self.batch_size = module, torch.device(device), batch_size

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
        x = to_laion_rate(wav.detach().float().to(self.device))                     # (B, T * 48000 / 22050)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            e = self.module.get_audio_embedding_from_data(x[i:i + self.batch_size].to(self.device), use_tensor=True)
            out.append(torch.as_tensor(e).float().to(self.device))
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts, return_unknown: bool = False):
        """Captions -> (B, 512) unit vectors from LAION-CLAP's RoBERTa tower."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise UserError("the prompt is empty.")
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            # laion-clap's tokenizer squeezes the batch axis of a single caption and RoBERTa then fails,
            # so a lone caption goes in twice and we keep one row.
            e = self.module.get_text_embedding(chunk * 2 if len(chunk) == 1 else chunk, use_tensor=True)
            out.append(torch.as_tensor(e).float().to(self.device)[: len(chunk)])
        e = F.normalize(torch.cat(out), dim=-1)
        return (e, [[] for _ in texts]) if return_unknown else e


def load_clap(kind: str, path: str, device: str = "cpu"):
    """The conditioner train.py and sample.py use: "tiny" (our checkpoint) or "laion" (the paper's)."""
    if kind == "tiny":
        return load_tiny(load_checkpoint(path, "clap")).to(device)
    if kind == "laion":
        return LaionCLAP(path, device=device)
    raise UserError(f"--clap must be tiny or laion, not {kind!r}.")
