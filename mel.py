"""
mel.py — the HiFiGAN log-mel, its normalisation and Griffin-Lim; then audio in and out (resampling, files).

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 3.1  the model works on mel spectrograms, tokenised by SpecVQGAN and turned back into sound by a
            HiFiGAN vocoder; the spectrogram is normalised from [-80, 20] dB to [-1, 1]
  Sec. 4    22050 Hz audio, 80 mel bins, hop 256: a 10-second clip becomes 848 frames; we crop it to the
            217088 samples (9.845 s) that make exactly 848 frames

We compute the mel exactly as the HiFiGAN repository does (n_fft 1024, hop 256, Hann window 1024,
reflect padding of (n_fft - hop) / 2 on both sides and no centring, Slaney mel filterbank 0-8000 Hz,
natural log). Using the vocoder's own recipe is what lets the official pretrained HiFiGAN weights turn
our spectrograms back into waveforms.

In:  audio files (anything soundfile reads) or waveforms (B, T) at 22050 Hz
Out: log-mels (B, 80, T // 256); normalised mels in [-1, 1]; waveforms; .wav and .png files
Run alone: python mel.py FILE.wav   # prints the mel's shape and range and writes FILE.mel.png
"""

import io
import math
import os
import struct
import sys
import zlib

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from runtime import UserError, write_atomically

SR = 22050             # sampling rate of the whole project (Sec. 4)
N_FFT = 1024           # HiFiGAN's FFT size
HOP = 256              # HiFiGAN's hop size: one mel frame per 256 samples (11.6 ms)
WIN = 1024             # Hann window length
N_MELS = 80            # mel bins (Sec. 4)
FMIN, FMAX = 0.0, 8000.0   # HiFiGAN's 22 kHz checkpoints analyse 0-8 kHz
CLIP_SAMPLES = 217088  # 9.845 s, the paper's clip length
CLIP_FRAMES = 848      # = CLIP_SAMPLES / HOP = 53 token columns of 16 frames
TOY_SAMPLES = 65536    # the toy world's clip: 2.97 s = 256 frames = 16 token columns
DB_MIN, DB_MAX = -80.0, 20.0   # the clip range of the normalisation (Sec. 3.1)


# ---------------------------------------------------------------------------------------------------
# The mel spectrogram (HiFiGAN recipe) and its normalisation.
# ---------------------------------------------------------------------------------------------------

def hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per octave of 6.4x)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_points(n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels + 2,) equally spaced mels from fmin to fmax: filter i of mel_filterbank rises from point i,
    peaks at point i + 1 and falls to point i + 2."""
    return np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)


def mel_filterbank(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney-normalised to equal area.

    The filter centres are equally spaced on the mel scale; filter i rises from centre i-1 to centre
    i and falls to centre i+1. Multiplying by 2 / (bandwidth in Hz) makes every triangle's area the
    same, so wide high-frequency filters do not collect more energy than narrow low ones.
    """
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)                               # (513,)
    edges = mel_to_hz(mel_points(n_mels, fmin, fmax))                               # (82,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]    # (80, 1) each
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(rising, falling))                              # (80, 513)
    fb *= (2.0 / (upper - lower))                                                  # Slaney area normalisation
    return torch.from_numpy(fb).float()


_FILTERBANK = mel_filterbank()
_FILTERBANKS = {FMAX: _FILTERBANK}  # by top frequency: the vocoder's loss mel takes the whole band (vocoder.loss_mel)
_WINDOW = torch.hann_window(WIN)   # periodic Hann, as torch.hann_window gives and HiFiGAN uses
_COPIES = {}                       # (id of a constant, device, dtype) -> (the constant, its copy there)


def on_device(constant: torch.Tensor, device, dtype) -> torch.Tensor:
    """`constant` (one of the module-level tensors) on `device` in `dtype`, copied once and then reused.

    Copying the filterbank or the window to a GPU on every call would make the host wait for each copy.
    The copy is made outside inference mode, so that a first call under torch.inference_mode does not
    leave a tensor that training could not use in its backward pass.
    """
    key = (id(constant), str(torch.device(device)), dtype)
    if key not in _COPIES:
        with torch.inference_mode(False):
            _COPIES[key] = (constant, constant.to(device, dtype, non_blocking=True))
    return _COPIES[key][1]


def mel_spectrogram(wav: torch.Tensor, fmax: float = FMAX) -> torch.Tensor:
    """Natural-log mel of `wav` (T,) or (B, T): (80, T // 256) or (B, 80, T // 256). Differentiable.
    `fmax` is the top filter's upper edge: 8 kHz for the model's mel, 11025 Hz for HiFiGAN's loss mel.

    The reflect padding of (1024 - 256) / 2 = 384 samples on each side, with no centring, makes the
    frame count exactly T / 256 (217088 samples -> 848 frames).
    """
    squeeze = wav.dim() == 1
    x = wav[None] if squeeze else wav                                               # (B, T)
    pad = (N_FFT - HOP) // 2
    x = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]                         # (B, T + 768)
    spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=WIN, window=on_device(_WINDOW, x.device, x.dtype),
                      center=False, return_complex=True)                            # (B, 513, T / 256)
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)                        # the 1e-9 keeps sqrt's gradient finite
    if fmax not in _FILTERBANKS:
        _FILTERBANKS[fmax] = mel_filterbank(fmax=fmax)
    mel = torch.matmul(on_device(_FILTERBANKS[fmax], x.device, mag.dtype), mag)     # (B, 80, T / 256)
    log_mel = torch.log(torch.clamp(mel, min=1e-5))                                 # HiFiGAN's floor: -11.5 = -100 dB
    return log_mel[0] if squeeze else log_mel


# The mel is of magnitudes, so in decibels it is 20 * log10(mel) = 20 / ln(10) * ln(mel).
DB_PER_NEPER = 20.0 / math.log(10.0)


def normalize(log_mel: torch.Tensor) -> torch.Tensor:
    """Natural-log mel -> dB clipped to [-80, 20] -> linearly onto [-1, 1] (Sec. 3.1), for the VQGAN."""
    db = (log_mel * DB_PER_NEPER).clamp(DB_MIN, DB_MAX)
    return (db - DB_MIN) / (DB_MAX - DB_MIN) * 2 - 1


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """The exact inverse of normalize inside the clip range: [-1, 1] -> dB -> natural-log mel."""
    db = (x.clamp(-1, 1) + 1) / 2 * (DB_MAX - DB_MIN) + DB_MIN
    return db / DB_PER_NEPER


# ---------------------------------------------------------------------------------------------------
# Griffin-Lim: hear any mel without a trained vocoder.
# ---------------------------------------------------------------------------------------------------

def griffin_lim(log_mel: torch.Tensor, n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """Waveform (T,) or (B, T) whose mel approximates `log_mel` (80, F) or (B, 80, F).

    1. Undo the log and the filterbank: the pseudo-inverse of the (80, 513) filterbank spreads each
       mel band back over its FFT bins (negative values clipped: magnitudes are >= 0).
    2. Griffin-Lim (1984) with the momentum of Perraudin et al. (2013): guess phases, go to a waveform
       (inverse STFT), come back (STFT), keep the new phases but our magnitudes, repeat.
    Our frames are centred on samples 128, 384, ... (the 384-sample reflect padding), i.e. the
    centred STFT of the signal shifted left by 128 samples; we iterate in that shifted domain with
    torch.istft and shift back at the end. It runs on the device `log_mel` is on; the initial phases
    are drawn on the host from `seed`, so every device starts from the same ones.
    """
    squeeze = log_mel.dim() == 2
    m = (log_mel[None] if squeeze else log_mel).float()                              # (B, 80, F)
    B, _, frames = m.shape
    mag = on_device(inverse_filterbank(), m.device, m.dtype) @ torch.exp(m)          # (B, 513, F)
    mag = mag.clamp(min=0)
    mag = torch.cat([mag, mag[..., -1:]], dim=-1)                                    # centred STFT has F + 1 frames
    length = frames * HOP
    window = on_device(_WINDOW, m.device, m.dtype)
    g = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=g)).to(m.device)
    prev = torch.zeros_like(angles)
    for _ in range(n_iter):
        y = torch.istft(mag * angles, N_FFT, HOP, WIN, window, center=True, length=length)
        spec = torch.stft(y, N_FFT, HOP, WIN, window, center=True, return_complex=True)
        accelerated = spec - momentum / (1 + momentum) * prev
        prev = spec
        angles = accelerated / accelerated.abs().clamp(min=1e-8)
    y = torch.istft(mag * angles, N_FFT, HOP, WIN, window, center=True, length=length)
    shift = (N_FFT - 2 * ((N_FFT - HOP) // 2)) // 2                                  # = 128 samples
    y = F.pad(y, (shift, 0))[:, :length]                                             # undo the shift
    return y[0] if squeeze else y


_INVERSE = []


def inverse_filterbank() -> torch.Tensor:
    """The pseudo-inverse of the (80, 513) filterbank, (513, 80), computed once on the host."""
    if not _INVERSE:
        with torch.inference_mode(False):
            _INVERSE.append(torch.linalg.pinv(_FILTERBANK))
    return _INVERSE[0]


def spectral_convergence(log_mel_target: torch.Tensor, wav: torch.Tensor) -> float:
    """|| M - M_hat ||_F / || M ||_F on linear mel magnitudes: 0 is perfect (the Griffin-Lim literature's measure)."""
    target = torch.exp(log_mel_target)
    got = torch.exp(mel_spectrogram(wav))
    n = min(target.shape[-1], got.shape[-1])
    return (torch.linalg.norm(target[..., :n] - got[..., :n]) / torch.linalg.norm(target[..., :n])).item()


# ---------------------------------------------------------------------------------------------------
# Resampling: a band-limited (windowed-sinc) interpolator, written out so a reader can see it.
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Pictures: a dependency-free PNG writer (numpy + zlib), because readers would rather look.
# ---------------------------------------------------------------------------------------------------

# A perceptually ordered colour map (viridis' anchor colours; dark = quiet, yellow = loud).
_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colorize(img: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through the colour map; NaN becomes mid-grey."""
    img = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(img)
    lo = np.nanmin(img[finite]) if vmin is None and finite.any() else (vmin if vmin is not None else 0.0)
    hi = np.nanmax(img[finite]) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    t = np.clip((np.where(finite, img, lo) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_CMAP) - 1)
    i = np.minimum(t.astype(int), len(_CMAP) - 2)
    frac = (t - i)[..., None]
    rgb = _CMAP[i] * (1 - frac) + _CMAP[i + 1] * frac
    rgb[~finite] = 128
    return rgb.round().astype(np.uint8)


def save_png(path: str, panels, vmin=None, vmax=None, min_height: int = 80) -> None:
    """Write one or more 2-D arrays as a PNG, stacked top to bottom with a white gap.

    Each panel is drawn with row 0 at the bottom (low frequencies low, as spectrograms are read),
    stretched by whole pixels to the widest panel's width and to at least `min_height` rows, so a
    5 x 53 token map sits visibly under an 80 x 848 mel. Values are coloured per panel (own min/max)
    unless vmin/vmax are given.
    """
    if not isinstance(panels, (list, tuple)):
        panels = [panels]
    arrays = [np.asarray(p.detach().cpu().float() if torch.is_tensor(p) else p, dtype=np.float64) for p in panels]
    width = max(a.shape[1] for a in arrays)
    rows = []
    for a in arrays:
        ky = max(1, math.ceil(min_height / a.shape[0]))
        kx = max(1, width // a.shape[1])
        big = np.repeat(np.repeat(a[::-1], ky, axis=0), kx, axis=1)
        rgb = colorize(big, vmin, vmax)
        if rgb.shape[1] < width:
            rgb = np.pad(rgb, ((0, 0), (0, width - rgb.shape[1]), (0, 0)), constant_values=255)
        rows += [rgb, np.full((4, width, 3), 255, np.uint8)]
    image = np.concatenate(rows[:-1], axis=0)                                        # (H, W, 3)
    write_atomically(path, lambda f: f.write(png_bytes(image)))


def png_bytes(pixels: np.ndarray, colours: np.ndarray | None = None) -> bytes:
    """A PNG file as bytes: (H, W, 3) uint8 RGB, or (H, W) uint8 indices into `colours` (<= 256 x 3,
    a palette image: one byte per pixel, about a third of RGB's size before compression)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = pixels.shape[:2]
    colour_type = 3 if colours is not None else 2
    raw = b"".join(b"\x00" + np.ascontiguousarray(pixels[y]).tobytes() for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
    if colours is not None:
        out += chunk(b"PLTE", np.asarray(colours, dtype=np.uint8).tobytes())
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python mel.py FILE.wav")
    try:
        wav = load_audio(sys.argv[1], report=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    m = mel_spectrogram(wav)
    print(f"{wav.shape[0]} samples -> mel {tuple(m.shape)}, log range [{m.min():.2f}, {m.max():.2f}]")
    out = os.path.splitext(sys.argv[1])[0] + ".mel.png"
    save_png(out, m)
    print(f"wrote {out}")
