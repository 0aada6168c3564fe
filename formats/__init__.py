"""
formats/ — reading checkpoints written by others, and our own, into the method's models.

  hifigan_format.py  HiFiGAN: ours and the official generator_v1/v2/v3 (jik876/hifi-gan), weight norm
                     folded for inference (running it is vocoder.vocode)
  clap_format.py     TinyCLAP's checkpoint, and LAION-CLAP's 630k-audioset-best.pt in clap.LaionCLAP with its
                     48 kHz resampler (laion-clap is imported only on that path)

A first reading may skip the checks here; what they build is a model from the root's files.
"""
