"""LAION-CLAP's input, our 22050 Hz audio at its 48 kHz, is computed on the audio's device with torch ops
(clap_format.to_laion_rate, which load_clap gives clap.LaionCLAP), and the wrapper hands the model audio on
the model's device. laion_clap is not needed: a stand-in module records what it receives. The "meta" device
(shapes, no data) shows that no step goes through the host: a tensor brought to the CPU there could not be
mixed with the others.
"""

import torch

import clap
from formats import clap_format
from ground import audio_io
import mel


def clips(n=3, samples=22050):
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(n, samples, generator=g)


def test_the_resampled_audio_stays_on_the_input_device():
    wav = clips().to("meta")
    out = clap_format.to_laion_rate(wav)
    assert out.device.type == "meta"
    assert out.shape == (3, 48000)                                   # one second at 48 kHz


def test_it_equals_the_host_computation():
    wav = clips()
    host = audio_io.resample(wav.cpu(), mel.SR, clap.LAION_SR)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        out = clap_format.to_laion_rate(wav.to(device))
        assert out.device.type == device
        torch.testing.assert_close(out.cpu(), host, rtol=1e-5, atol=1e-6)   # fp32 rounding


class StandIn:
    """laion-clap's audio call: records the device and length of what it is given."""

    def __init__(self):
        self.seen = []

    def get_audio_embedding_from_data(self, x, use_tensor=True):
        self.seen.append((x.device, x.shape[-1]))
        return torch.ones(x.shape[0], 512, device=x.device)


def test_the_wrapper_gives_the_model_48k_audio_on_its_device():
    module = StandIn()
    model = clap.LaionCLAP(module, clap_format.to_laion_rate, device="cpu", batch_size=2)
    e = model.embed_audio(clips())
    assert [n for _, n in module.seen] == [48000, 48000]             # batches of 2 and 1
    assert all(d.type == "cpu" for d, _ in module.seen) and e.shape == (3, 512)
