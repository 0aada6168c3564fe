"""
ground/ — what the commands stand on, around the method: a first reading may take it as given.

  runtime.py       one-sentence user errors, atomic writes, checkpoints loaded with weights_only=True and
                   checked entry by entry, configs rebuilt from checkpoints, the device and the dtype
  audio_io.py      audio files in and out: any file soundfile reads, decoded in blocks, mixed to mono and
                   resampled (a windowed-sinc resampler written out); 16-bit wavs written atomically
  sample_edges.py  sample.py's edges: the ranges of its flags, the output names it claims (no take
                   overwrites another), and the decoding page of a take (its settings, each step's sound)

runtime.py imports nothing of the project (the ground floor); audio_io.py stands on it and on mel.SR;
sample_edges.py stands on pipeline.py and pictures/, under sample.py alone.
"""
