"""
ground/audio_io.py — audio files in and out: reading any file in blocks, resampling, writing wavs.

The model files work on tensors at 22050 Hz (mel.SR); this is how sound gets there from a file on disk and
back. Every way a file can be unusable is one sentence (a UserError), and memory follows the clip asked
for, not the file: a file is decoded and resampled block by block. The resampler is a windowed-sinc
interpolator written out so a reader can see it; LAION-CLAP's 48 kHz input uses it too, on the GPU.

In:  a path (anything soundfile reads); or a waveform (..., T) and two rates
Out: a mono float32 waveform (T,) at 22050 Hz; a resampled waveform; a 16-bit .wav file or its bytes
"""

import io
import math
import os

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from ground.runtime import UserError, write_atomically
from mel import SR


MIN_FILE_SR, MAX_FILE_SR = 1000, 768000   # the rates audio files really have; a header outside is refused
MAX_BANK = 1 << 20    # most filter taps (phases x taps) the polyphase bank may hold; beyond, filters per output


def windowed_sinc(t: torch.Tensor, zeros: int) -> torch.Tensor:
    """The interpolation kernel at `t` (in cut-off periods): sinc truncated at +-`zeros` with a Hann taper."""
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2                               # Hann taper, 0 at +-zeros
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    return sinc * window


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, zeros: int = 16, rolloff: float = 0.945) -> torch.Tensor:
    """Change the sampling rate of `wav` (..., T) from `orig_sr` to `new_sr`.

    Ideal resampling = low-pass at the lower of the two Nyquist frequencies, then read the signal at
    the new instants. The low-pass is a sinc; we truncate it to `zeros` zero crossings on each side and
    taper it with a Hann window so that it stops cleanly. With the rates reduced by their gcd (48000 ->
    22050 is 320 -> 147), the new instants repeat with a period of `orig` input samples, so one small
    filter per output phase (`new` of them) applied with a strided convolution does the whole job.
    `rolloff` < 1 puts the cut-off a little below Nyquist so nothing aliases at the band edge.

    That bank holds new x (orig + 2 width) taps, which is small for the usual rates but not when the
    reduced rates stay large (22051 -> 22050 has 22050 phases of 22085 taps: 487 M). Then every output
    sample gets its own filter instead, computed from the same kernel a chunk of outputs at a time
    (`resample_direct`): the same result to rounding, in memory that does not depend on the ratio.
    """
    if orig_sr == new_sr:
        return wav
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    cutoff = min(orig, new) * rolloff                        # in units of the reduced rates
    width = math.ceil(zeros * orig / cutoff)                 # half-length of each filter, in input samples
    if new * (2 * width + orig) > MAX_BANK:
        return resample_direct(wav, orig, new, zeros, rolloff)
    # time (in input samples) from each output phase p to each tap k of its filter
    taps = torch.arange(-width, width + orig, dtype=torch.float64, device=wav.device) / orig   # (K,)
    phase = torch.arange(new, dtype=torch.float64, device=wav.device)[:, None] / new          # (new, 1)
    t = (taps[None, :] - phase) * cutoff                                           # (new, K), in cut-off periods
    kernel = (windowed_sinc(t, zeros) * cutoff / orig).to(wav.dtype)               # unit DC gain

    shape = wav.shape
    x = wav.reshape(-1, 1, shape[-1])                                              # (N, 1, T)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel[:, None, :], stride=orig)                               # (N, new, T / orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)                                  # interleave the phases
    n_out = math.ceil(new * shape[-1] / orig)
    return y[:, :n_out].reshape(*shape[:-1], n_out)


def resample_direct(wav: torch.Tensor, orig: int, new: int, zeros: int = 16, rolloff: float = 0.945,
                    chunk_taps: int = MAX_BANK) -> torch.Tensor:
    """`resample` with one filter per output sample: output n sits at input time n * orig / new.

    Its filter reads the 2 width + 2 input samples around that time, weighted by the kernel at their
    distance from it; `chunk_taps` bounds the taps held at once, so memory stays the same for any ratio.
    """
    shape = wav.shape
    x = wav.reshape(-1, shape[-1])                                                 # (N, T)
    scale = min(orig, new) * rolloff / orig                 # cut-off periods per input sample
    width = math.ceil(zeros / scale)
    x = F.pad(x, (width, width + 2))
    offsets = torch.arange(-width, width + 2, device=wav.device)                   # (K,) taps around the time
    n_out = math.ceil(new * shape[-1] / orig)
    chunk = max(1, chunk_taps // (offsets.numel() * x.shape[0]))
    out = []
    for s in range(0, n_out, chunk):
        n = torch.arange(s, min(n_out, s + chunk), dtype=torch.int64, device=wav.device)   # (C,) output indices
        base = n * orig // new                                                     # whole input samples, exactly
        frac = (n * orig % new).to(wav.dtype) / new                                # and the fraction beyond
        t = (offsets.to(wav.dtype) - frac[:, None]) * scale                        # (C, K), in cut-off periods
        kernel = windowed_sinc(t, zeros) * scale                                   # unit DC gain
        out.append((x[:, base[:, None] + offsets + width] * kernel).sum(-1))      # (N, C, K) -> (N, C)
    return torch.cat(out, dim=-1).reshape(*shape[:-1], n_out)


# ---------------------------------------------------------------------------------------------------
# Loading and saving audio.
# ---------------------------------------------------------------------------------------------------

MAX_AUDIO_SECONDS = 3600.0   # the longest file read whole (--inpaint, --bwe): an hour is 317 MB at 22050 Hz
BLOCK_VALUES = 2 ** 20       # samples (all channels together) decoded at once: 4 MB of float32


def load_audio(path: str, sr: int = SR, num_samples: int | None = None, report: bool = False) -> torch.Tensor:
    """Read any file soundfile understands, mix to mono, resample to `sr`, crop or zero-pad.

    Returns a float32 tensor (T,). Every way a file can be unusable ends in a UserError with one
    sentence: missing, a folder, a pipe, empty, not audio, zero samples, a sampling rate no real file has
    (outside 1 kHz to 768 kHz), NaN or infinite samples, more than MAX_AUDIO_SECONDS when the whole file
    is asked for. With `report`, one line says what was done to the file (resampled, mixed down,
    cropped, padded).

    Memory follows the result, not the file: the file is decoded BLOCK_VALUES samples at a time, each
    block mixed to mono and resampled as it arrives (resample_blocks), and with `num_samples` only the
    part of the file that becomes those samples is read. A header's claims allocate nothing.
    """
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not an audio file.")
    if not os.path.exists(path):
        raise UserError(f"audio file {path} does not exist.")
    if not os.path.isfile(path):
        raise UserError(f"{path} is a device or a pipe, not an audio file.")
    if os.path.getsize(path) == 0:
        raise UserError(f"audio file {path} is empty (0 bytes).")
    try:
        raw = open(path, "rb")                        # Python opens any name the system allows, UTF-8 or not
    except OSError as e:
        raise UserError(f"cannot read audio file {path}: {e.strerror or e}.") from None
    with raw:
        try:
            sound = sf.SoundFile(raw)
        except Exception as e:  # libsndfile's errors for non-audio or damaged files
            raise UserError(f"{path} is not an audio file soundfile can read ({str(e).strip() or type(e).__name__}).") from None
        with sound:
            file_sr, channels, frames = sound.samplerate, sound.channels, sound.frames
            if not MIN_FILE_SR <= file_sr <= MAX_FILE_SR:
                raise UserError(f"audio file {path} claims a sampling rate of {file_sr} Hz; only "
                                f"{MIN_FILE_SR} to {MAX_FILE_SR} Hz can be real audio.")
            # with num_samples, the file's frames that become them, and the resampler's reach beyond
            wanted = None if num_samples is None else math.ceil(num_samples * file_sr / sr) + resample_margin(file_sr, sr)
            if wanted is None and frames > MAX_AUDIO_SECONDS * file_sr:
                raise UserError(f"audio file {path} claims {frames / file_sr / 3600:.1f} hours; at most "
                                f"{MAX_AUDIO_SECONDS / 3600:g} hours are read whole (cut it shorter).")
            blocks = mono_blocks(sound, path, wanted)
            pieces = list(resample_blocks(blocks, file_sr, sr))
    wav = torch.cat(pieces) if pieces else torch.zeros(0)                            # (T,)
    if wav.numel() == 0:
        raise UserError(f"audio file {path} holds no samples.")
    notes = []
    if channels > 1:
        notes.append(f"mixed {channels} channels to mono")
    if file_sr != sr:
        notes.append(f"resampled {file_sr} -> {sr} Hz")
    if num_samples is not None:
        n = wav.shape[0]
        if n > num_samples:
            notes.append(f"cropped {max(n, frames * sr / file_sr) / sr:.2f} s to {num_samples / sr:.2f} s")
            wav = wav[:num_samples]
        elif n < num_samples:
            notes.append(f"zero-padded {n / sr:.2f} s to {num_samples / sr:.2f} s")
            wav = F.pad(wav, (0, num_samples - n))
    if report and notes:
        print(f"{os.path.basename(path)}: " + ", ".join(notes))
    return wav.contiguous()


def mono_blocks(sound, path: str, wanted: int | None):
    """Yield the file's samples as mono float32 tensors, a block at a time, up to `wanted` frames (None = all).

    A file that ends before its header says (a truncated download, a lying header) ends where its samples
    do; one longer than MAX_AUDIO_SECONDS is refused as it is read, whatever its header said."""
    per_block = max(1, BLOCK_VALUES // max(1, sound.channels))
    read = 0
    while wanted is None or read < wanted:
        n = per_block if wanted is None else min(per_block, wanted - read)
        try:
            block = sound.read(n, dtype="float32", always_2d=True)                  # (n, channels)
        except Exception as e:
            if read:
                return                                  # the samples stop before the header's count
            raise UserError(f"{path} is not an audio file soundfile can read ({str(e).strip() or type(e).__name__}).") from None
        if len(block) == 0:
            return
        if not np.isfinite(block).all():
            raise UserError(f"audio file {path} contains NaN or infinite samples.")
        read += len(block)
        if wanted is None and read > MAX_AUDIO_SECONDS * sound.samplerate:
            raise UserError(f"audio file {path} is longer than {MAX_AUDIO_SECONDS / 3600:g} hours; at most that "
                            f"much is read whole (cut it shorter).")
        yield torch.from_numpy(block.mean(axis=1))                                  # (n,)
        if len(block) < n:
            return


def resample_margin(orig_sr: int, new_sr: int) -> int:
    """Input samples on each side of a stretch that `resample` reads to compute that stretch's outputs
    (its filters' half-length plus one period), rounded up to whole periods of the reduced input rate."""
    if orig_sr == new_sr:
        return 0
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    width = math.ceil(16 * orig / (min(orig, new) * 0.945))          # resample's default zeros and rolloff
    return orig * (math.ceil((width + 2) / orig) + 1)


def resample_blocks(blocks, orig_sr: int, new_sr: int, step: int = 2 ** 18):
    """`resample` of the signal that `blocks` (mono tensors) make when put end to end, yielded a piece at a
    time: each piece of `step` input samples (whole periods of the reduced rate, so that its outputs sit on
    the same instants as in one call) is resampled with the margin of neighbours its filters reach, and
    the outputs of the margins are dropped. The pieces put end to end are resample(whole signal), to
    float rounding, in memory that does not grow with the signal."""
    if orig_sr == new_sr:
        yield from blocks
        return
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    margin = resample_margin(orig_sr, new_sr)
    step = orig * max(1, step // orig)
    buffer = torch.zeros(margin)                        # the zeros before the signal, as resample pads it
    for block in blocks:
        buffer = torch.cat([buffer, block])
        while buffer.numel() >= step + 2 * margin:
            out = resample(buffer[:step + 2 * margin], orig_sr, new_sr)
            yield out[margin * new // orig:(margin + step) * new // orig]
            buffer = buffer[step:]
    yield resample(buffer, orig_sr, new_sr)[margin * new // orig:]   # the rest, zero-padded after by resample


def save_wav(path: str, wav: torch.Tensor, sr: int = SR) -> None:
    """Write a mono waveform (T,) as 16-bit PCM, clipped to [-1, 1].

    The wav is encoded in memory and written by Python, whose write reports a full disk as an OSError;
    libsndfile writing to the disk itself would only say "System error".
    """
    data = wav_bytes(wav, sr)
    write_atomically(path, lambda f: f.write(data))                        # temporary file, then rename


def wav_bytes(wav: torch.Tensor, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    """A mono waveform (T,) as the bytes of a WAV file, clipped to [-1, 1] (subtype: soundfile's, e.g.
    "PCM_U8" for the decoding page's small previews)."""
    x = wav.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy()
    buffer = io.BytesIO()
    sf.write(buffer, x, sr, subtype=subtype, format="WAV")
    return buffer.getvalue()
