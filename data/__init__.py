"""
data/ — the clips the stages train on. A first reading may skip it: the method sees batches of waveforms.

  datasets.py  AudioCaps (its CSVs and whichever clips are on disk), any folder of audio, and `collate`
  toyworld.py  the toy sound world: twelve kinds of sound synthesised with numpy, with captions, a stand-in
               for AudioCaps that trains on a laptop (not the paper's data)
"""
