"""
training/ — what train.py's loop stands on but a first reading need not follow.

  edges.py  the flags' ranges, the run folder's lock, resume and the random streams, DDP (one process per
            GPU under torchrun), the held-out FAD of --eval-every, the vocoder-against-Griffin-Lim verdict,
            and the bundle that sample.py loads
"""
