"""mel.py: the HiFiGAN mel against independent numpy computations, resampling, Griffin-Lim, files, bad input."""

import math
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from runtime import UserError


def tone(freq, sr, seconds=1.0, amp=0.5):
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def peak_hz(wav, sr):
    spec = np.abs(np.fft.rfft(wav.numpy() * np.hanning(len(wav))))
    return np.argmax(spec) * sr / len(wav)


def test_full_clip_gives_848_frames():
    assert mel.mel_spectrogram(torch.zeros(mel.CLIP_SAMPLES)).shape == (80, 848)
    assert mel.mel_spectrogram(torch.zeros(2, mel.TOY_SAMPLES)).shape == (2, 80, 256)


def test_filterbank_equals_slaney_formula_evaluated_directly():
    # Slaney's Auditory Toolbox, one filter at a time in plain Python floats
    def hz2mel(f):
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)

    def mel2hz(m):
        return m * 200 / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    fb = mel.mel_filterbank().double().numpy()
    edges = [mel2hz(hz2mel(0) + i * (hz2mel(8000) - hz2mel(0)) / 81) for i in range(82)]
    for i in (0, 1, 17, 40, 79):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        for k in range(513):
            f = k * 22050 / 1024
            w = max(0.0, min((f - lo) / (c - lo), (hi - f) / (hi - c))) * 2 / (hi - lo)
            assert fb[i, k] == pytest.approx(w, abs=1e-9)


def test_mel_matches_a_numpy_stft_computed_frame_by_frame():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.1
    padded = np.pad(x.double().numpy(), 384, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)                 # periodic Hann
    frames = np.stack([padded[t * 256: t * 256 + 1024] * window for t in range(4096 // 256)])
    mag = np.sqrt(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-9).T                # (513, 16)
    expected = np.log(np.maximum(mel.mel_filterbank().double().numpy() @ mag, 1e-5))
    np.testing.assert_allclose(mel.mel_spectrogram(x).double().numpy(), expected, atol=2e-4)


def test_1khz_sine_peaks_in_the_bin_centred_nearest_1khz():
    centres = mel.mel_to_hz(np.linspace(mel.hz_to_mel(0), mel.hz_to_mel(8000), 82))[1:-1]
    m = mel.mel_spectrogram(tone(1000, mel.SR))
    assert m.mean(dim=1).argmax().item() == np.argmin(np.abs(centres - 1000))


def test_normalize_is_db_clipped_and_denormalize_inverts_it():
    log_mel = torch.linspace(-11.5, 3.0, 1000)
    db = 20 * torch.log10(torch.exp(log_mel.double()))                               # magnitudes -> dB
    expected = (db.clamp(-80, 20) + 80) / 100 * 2 - 1
    torch.testing.assert_close(mel.normalize(log_mel).double(), expected, atol=1e-5, rtol=0)
    inside = torch.linspace(-80, 20, 500) / (20 / math.log(10))                      # log-mels inside [-80, 20] dB
    torch.testing.assert_close(mel.denormalize(mel.normalize(inside)), inside, atol=1e-5, rtol=0)


def test_real_clips_load_as_848_frames(full_band_clips):
    for path in full_band_clips:
        assert mel.mel_spectrogram(mel.load_audio(path)).shape == (80, 848)


def test_band_limited_clips_have_no_energy_in_the_top_16_bins(full_band_clips, band_limited_clips):
    def top_band_db(path):
        m = mel.mel_spectrogram(mel.load_audio(path))
        return (m[64:].exp().mean() / m[:64].exp().mean()).log10().item() * 20       # top vs rest, in dB

    for full, limited in zip(full_band_clips, band_limited_clips):
        assert top_band_db(limited) < top_band_db(full) - 20
        assert top_band_db(limited) < -50


@pytest.mark.parametrize("sr", [16000, 48000])
def test_resampled_tone_stays_at_440_hz(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, tone(440, sr, 1.0).numpy(), sr)
    wav = mel.load_audio(str(path))
    assert wav.shape[0] == 22050
    assert abs(peak_hz(wav[2000:-2000], 22050) - 440) < 3


def test_upsampling_16k_adds_nothing_above_the_old_nyquist():
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    up = mel.resample(noise, 16000, 22050)
    spec = np.abs(np.fft.rfft(up.numpy())) ** 2
    hz = np.fft.rfftfreq(len(up), 1 / 22050)
    assert spec[hz > 8200].sum() / spec.sum() < 1e-4


def test_downsampling_48k_removes_tones_above_the_new_nyquist():
    # a 15 kHz tone would alias to 22050 - 15000 = 7050 Hz without the low-pass
    down = mel.resample(tone(440, 48000) + tone(15000, 48000), 48000, 22050)
    spec = np.abs(np.fft.rfft(down[1000:-1000].numpy())) ** 2
    hz = np.fft.rfftfreq(len(down) - 2000, 1 / 22050)
    assert spec[np.abs(hz - 7050) < 50].sum() / spec[np.abs(hz - 440) < 50].sum() < 1e-4


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(440, 22050), tone(880, 22050)
    sf.write(tmp_path / "st.wav", torch.stack([left, right], 1).numpy(), 22050, subtype="FLOAT")
    torch.testing.assert_close(mel.load_audio(str(tmp_path / "st.wav")), (left + right) / 2)


def test_crop_and_pad_to_num_samples(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 22050, 0.5).numpy(), 22050, subtype="FLOAT")
    padded = mel.load_audio(str(tmp_path / "a.wav"), num_samples=20000)
    assert padded.shape == (20000,) and padded[11025:].abs().max() == 0
    assert mel.load_audio(str(tmp_path / "a.wav"), num_samples=1000).shape == (1000,)


def test_griffin_lim_reconstructs_a_mel():
    t = torch.arange(mel.TOY_SAMPLES) / mel.SR
    wav = 0.3 * torch.sin(2 * math.pi * (300 + 200 * t) * t) + 0.05 * torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    m = mel.mel_spectrogram(wav)
    sc = mel.spectral_convergence(m, mel.griffin_lim(m, n_iter=32))
    assert sc < 0.2, sc                                                             # ~0.1 reached (see README)


def test_save_wav_round_trip(tmp_path):
    wav = tone(440, 22050)
    mel.save_wav(str(tmp_path / "x.wav"), wav)
    back, sr = sf.read(tmp_path / "x.wav", dtype="float32")
    assert sr == 22050 and np.abs(back - wav.numpy()).max() < 1e-4


def test_save_png_writes_a_decodable_image(tmp_path):
    img = np.array([[0.0, 1.0], [0.5, 0.5]])
    mel.save_png(str(tmp_path / "x.png"), img, min_height=2)
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 3)[:, 1:].reshape(h, w, 3)
    assert (w, h) == (2, 2)
    assert tuple(rows[1, 1]) == (253, 231, 37)        # row 0 is drawn at the bottom; its 1.0 is the brightest colour
    assert tuple(rows[1, 0]) == (68, 1, 84)           # and its 0.0 the darkest


def test_bad_audio_files_each_get_one_clear_error(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 10)
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 22050)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], np.float32), 22050, subtype="FLOAT")
    cases = {"missing.wav": "does not exist", "empty.wav": "empty", "text.wav": "not an audio file",
             "zero.wav": "no samples", "nan.wav": "NaN"}
    for name, words in cases.items():
        with pytest.raises(UserError, match=words):
            mel.load_audio(str(tmp_path / name))
