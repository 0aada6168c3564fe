"""
mel.py — the HiFiGAN log-mel, its normalisation to [-1, 1] and Griffin-Lim.

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 3.1  the model works on mel spectrograms, tokenised by SpecVQGAN and turned back into sound by a
            HiFiGAN vocoder; the spectrogram is normalised from [-80, 20] dB to [-1, 1]
  Sec. 4    22050 Hz audio, 80 mel bins, hop 256: a 10-second clip becomes 848 frames; we crop it to the
            217088 samples (9.845 s) that make exactly 848 frames

We compute the mel exactly as the HiFiGAN repository does (n_fft 1024, hop 256, Hann window 1024,
reflect padding of (n_fft - hop) / 2 on both sides and no centring, Slaney mel filterbank 0-8000 Hz,
natural log). Using the vocoder's own recipe is what lets the official pretrained HiFiGAN weights turn
our spectrograms back into waveforms.

Reading and writing files, resampling and pictures are not the mel: they live in ground/audio_io.py and
pictures/png.py.

In:  waveforms (B, T) at 22050 Hz
Out: log-mels (B, 80, T // 256); normalised mels in [-1, 1]; waveforms from log-mels (Griffin-Lim)
Run alone: python mel.py   # the mel of a 440 Hz tone: its shape, range and loudest bin
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

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


if __name__ == "__main__":
    tone = torch.sin(2 * math.pi * 440.0 * torch.arange(SR) / SR)               # one second of A4
    m = mel_spectrogram(tone)
    peak = int(m.mean(-1).argmax())
    low, high = mel_to_hz(mel_points()[[peak, peak + 2]])
    print(f"1 s of 440 Hz -> mel {tuple(m.shape)}, log range [{m.min():.2f}, {m.max():.2f}], "
          f"loudest bin {peak} ({low:.0f}-{high:.0f} Hz)")
