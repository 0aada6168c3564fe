"""mel.py: the HiFiGAN mel against independent numpy computations, resampling, Griffin-Lim, files, bad input."""

import math
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from ground import audio_io
from pictures import png
from ground.runtime import UserError


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


def test_real_recordings_load_at_22050_hz_mono_as_whole_frames(full_band_clips):
    for path in full_band_clips:                                   # 48 kHz stereo, 96 kHz stereo, 48 kHz mono
        info = sf.info(path)
        wav = audio_io.load_audio(path)
        assert wav.dim() == 1 and len(wav) == math.ceil(info.frames * mel.SR / info.samplerate)
        assert mel.mel_spectrogram(wav).shape == (80, len(wav) // mel.HOP)


def test_band_limited_clips_have_no_energy_in_the_top_16_bins(full_band_clips, band_limited_clips):
    def top_band_db(path):
        m = mel.mel_spectrogram(audio_io.load_audio(path))
        return (m[64:].exp().mean() / m[:64].exp().mean()).log10().item() * 20       # top vs rest, in dB

    for full, limited in zip(full_band_clips, band_limited_clips):
        assert top_band_db(limited) < top_band_db(full) - 25
        assert top_band_db(limited) < -40                            # what is left is the STFT window's leakage


@pytest.mark.parametrize("sr", [16000, 48000])
def test_resampled_tone_stays_at_440_hz(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, tone(440, sr, 1.0).numpy(), sr)
    wav = audio_io.load_audio(str(path))
    assert wav.shape[0] == 22050
    assert abs(peak_hz(wav[2000:-2000], 22050) - 440) < 3


def test_upsampling_16k_adds_nothing_above_the_old_nyquist():
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    up = audio_io.resample(noise, 16000, 22050)
    spec = np.abs(np.fft.rfft(up.numpy())) ** 2
    hz = np.fft.rfftfreq(len(up), 1 / 22050)
    assert spec[hz > 8200].sum() / spec.sum() < 1e-4


def test_downsampling_48k_removes_tones_above_the_new_nyquist():
    # a 15 kHz tone would alias to 22050 - 15000 = 7050 Hz without the low-pass
    down = audio_io.resample(tone(440, 48000) + tone(15000, 48000), 48000, 22050)
    spec = np.abs(np.fft.rfft(down[1000:-1000].numpy())) ** 2
    hz = np.fft.rfftfreq(len(down) - 2000, 1 / 22050)
    assert spec[np.abs(hz - 7050) < 50].sum() / spec[np.abs(hz - 440) < 50].sum() < 1e-4


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(440, 22050), tone(880, 22050)
    sf.write(tmp_path / "st.wav", torch.stack([left, right], 1).numpy(), 22050, subtype="FLOAT")
    torch.testing.assert_close(audio_io.load_audio(str(tmp_path / "st.wav")), (left + right) / 2)


def test_crop_and_pad_to_num_samples(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 22050, 0.5).numpy(), 22050, subtype="FLOAT")
    padded = audio_io.load_audio(str(tmp_path / "a.wav"), num_samples=20000)
    assert padded.shape == (20000,) and padded[11025:].abs().max() == 0
    assert audio_io.load_audio(str(tmp_path / "a.wav"), num_samples=1000).shape == (1000,)


def test_griffin_lim_reconstructs_a_mel():
    t = torch.arange(mel.TOY_SAMPLES) / mel.SR
    wav = 0.3 * torch.sin(2 * math.pi * (300 + 200 * t) * t) + 0.05 * torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    m = mel.mel_spectrogram(wav)
    sc = mel.spectral_convergence(m, mel.griffin_lim(m, n_iter=32))
    assert sc < 0.2, sc                                                             # ~0.1 reached (see README)


def test_save_wav_round_trip(tmp_path):
    wav = tone(440, 22050)
    audio_io.save_wav(str(tmp_path / "x.wav"), wav)
    back, sr = sf.read(tmp_path / "x.wav", dtype="float32")
    assert sr == 22050 and np.abs(back - wav.numpy()).max() < 1e-4


def test_save_png_writes_a_decodable_image(tmp_path):
    img = np.array([[0.0, 1.0], [0.5, 0.5]])
    png.save_png(str(tmp_path / "x.png"), img, min_height=2)
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
            audio_io.load_audio(str(tmp_path / name))


# ---------------------------------------------------------------------------------------------------
# The resampler against analytic signals: amplitude, delay, aliasing; any real rate in bounded memory.
# ---------------------------------------------------------------------------------------------------

RATE_PAIRS = [(48000, 22050), (44100, 22050), (16000, 22050), (22050, 48000), (22051, 22050), (44056, 22050),
              (11026, 22050)]   # the last three have large reduced ratios (22050/22051, ...): filters per output


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_resampled_sine_is_the_same_sine_at_the_new_rate(orig, new):
    """Amplitude and delay at once: a 1 kHz sine read at the new instants, to 1 % of its amplitude."""
    t_in = torch.arange(orig // 2, dtype=torch.float64) / orig                       # 0.5 s
    out = audio_io.resample(0.5 * torch.sin(2 * math.pi * 1000 * t_in).float(), orig, new)
    t_out = torch.arange(out.shape[0], dtype=torch.float64) / new
    expected = 0.5 * torch.sin(2 * math.pi * 1000 * t_out)
    middle = slice(new // 20, -new // 20)                                            # away from the edges' zero padding
    assert out.shape[0] == math.ceil(new * t_in.shape[0] / orig)
    assert (out.double()[middle] - expected[middle]).abs().max() < 0.01 * 0.5


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_a_click_stays_where_it_was(orig, new):
    """An impulse at input sample k is at time k / orig; the output's peak sits there within one sample."""
    k = orig // 7
    click = torch.zeros(orig // 4)
    click[k] = 1.0
    out = audio_io.resample(click, orig, new).double()
    i = int(out.argmax())
    a, b, c = out[i - 1].item(), out[i].item(), out[i + 1].item()
    peak = i + 0.5 * (a - c) / (a - 2 * b + c)                                       # parabolic interpolation
    assert abs(peak - k * new / orig) < 1.0


@pytest.mark.parametrize("orig", [48000, 44056, 96000])
def test_a_tone_above_the_new_nyquist_is_attenuated_by_more_than_40_db(orig):
    above = audio_io.resample(tone(15000, orig, 0.5), orig, 22050)                       # would alias to 7050 Hz
    inside = audio_io.resample(tone(3000, orig, 0.5), orig, 22050)
    middle = slice(1000, -1000)
    assert above[middle].pow(2).mean() / inside[middle].pow(2).mean() < 1e-4          # -40 dB in power


def test_per_output_filters_equal_the_polyphase_bank(monkeypatch):
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    bank = audio_io.resample(x, 48000, 22050)
    monkeypatch.setattr(audio_io, "MAX_BANK", 0)                                         # force filters per output
    torch.testing.assert_close(audio_io.resample(x, 48000, 22050), bank, atol=1e-5, rtol=0)


def test_odd_rates_resample_in_bounded_memory_and_time():
    """A 3 s clip at 22051, 44056 or 11026 Hz used to build a filter bank of gigabytes; under a 1 GiB
    address-space limit above what Python and torch already hold, each now resamples in seconds."""
    script = (
        "import resource, time, torch, mel\nfrom ground import audio_io\n"
        "vm = int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize')][0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2 ** 30, resource.RLIM_INFINITY))\n"
        "for sr in (22051, 44056, 11026):\n"
        "    start = time.time()\n"
        "    y = audio_io.resample(torch.zeros(3 * sr), sr, 22050)\n"
        "    assert y.shape == (66150,), y.shape\n"
        "    print(sr, round(time.time() - start, 2))\n")
    import os, subprocess, sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(float(line.split()[1]) < 30 for line in run.stdout.split("\n") if line), run.stdout


def write_wav_header_rate(path, rate, n=100):
    """A 16-bit mono WAV whose header claims `rate` Hz (soundfile would refuse to write most of these)."""
    payload = np.zeros(n, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2 % 2 ** 32, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
                     + fmt + b"data" + struct.pack("<I", len(payload)) + payload)


def test_an_absurd_header_rate_is_refused_in_one_sentence(tmp_path):
    for rate in (2 ** 31 - 1, 800_000, 999, 1):
        write_wav_header_rate(tmp_path / "odd.wav", rate)
        with pytest.raises(UserError, match=f"claims a sampling rate of {rate} Hz") as e:
            audio_io.load_audio(str(tmp_path / "odd.wav"))
        assert "\n" not in str(e.value)
    for rate in (1000, 768_000):                                                    # the ends of the real range load
        write_wav_header_rate(tmp_path / "edge.wav", rate, n=rate // 10)
        assert audio_io.load_audio(str(tmp_path / "edge.wav")).shape[0] == math.ceil(22050 / 10)


def test_a_folder_given_as_an_audio_file_is_called_a_folder(tmp_path):
    (tmp_path / "clips.wav").mkdir()
    with pytest.raises(UserError, match="is a folder, not an audio file"):
        audio_io.load_audio(str(tmp_path / "clips.wav"))


def test_a_full_disk_is_one_sentence_and_the_old_file_stays(tmp_path):
    """Writes beyond a file-size limit fail in the kernel as a full disk does (EFBIG instead of ENOSPC)."""
    import resource, signal
    path = tmp_path / "out.wav"
    audio_io.save_wav(str(path), tone(440, 22050, 0.1))
    before = path.read_bytes()
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, old_limit[1]))
        with pytest.raises(UserError, match=f"could not save {path}") as e:
            audio_io.save_wav(str(path), tone(440, 22050, 2.0))                            # 88 kB > 20 kB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "\n" not in str(e.value) and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]                # no temporary file left


def test_enospc_while_writing_a_png_is_one_sentence(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "x.png"
    png.save_png(str(path), np.eye(3), min_height=3)
    before = path.read_bytes()

    def full_disk(rgb):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(png, "png_bytes", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        png.save_png(str(path), np.eye(4), min_height=3)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_mel_and_the_resampler_run_on_their_inputs_device(device):
    """"meta" stands in for a GPU: any constant built on the host would meet the input there and raise."""
    wav = torch.randn(2, 4800, device=device)
    for orig, new in ((48000, 22050), (22051, 22050)):                       # the filter bank, then one filter per sample
        out = audio_io.resample(wav, orig, new)
        assert out.device == wav.device and out.shape == (2, -(-4800 * new // orig))
    m = mel.mel_spectrogram(torch.randn(2, 4096, device=device))
    assert m.device.type == device and m.shape == (2, 80, 16)


def test_constants_are_copied_to_a_device_and_dtype_once_and_usable_by_training():
    with torch.inference_mode():
        first = mel.on_device(mel._WINDOW, "meta", torch.float64)            # made under inference mode ...
    assert first.device.type == "meta" and first.dtype == torch.float64
    assert mel.on_device(mel._WINDOW, "meta", torch.float64) is first        # ... once
    assert not first.is_inference()                                          # ... and usable with autograd on
    assert mel.on_device(mel._WINDOW, "cpu", torch.float32) is mel._WINDOW   # already there: no copy


def test_griffin_lim_builds_its_constants_where_its_input_is(monkeypatch):
    asked = []
    real = mel.on_device

    def spy(constant, device, dtype):
        asked.append((torch.device(device), dtype))
        return real(constant, device, dtype)
    monkeypatch.setattr(mel, "on_device", spy)
    log_mel = mel.mel_spectrogram(torch.randn(1, 4096))
    asked.clear()
    wav = mel.griffin_lim(log_mel.double(), n_iter=2)
    assert len(asked) == 2 and set(asked) == {(torch.device("cpu"), torch.float32)}   # pseudo-inverse and window
    assert wav.shape == (1, 4096) and torch.isfinite(wav).all()
