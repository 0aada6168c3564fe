"""
speed/ — what makes sampling fast, and how fast it is. The root's model files keep the version to read;
every trick here computes the same thing, and tests/test_benchmark.py checks that it does.

  fast.py       int8 linears, bf16 weights held once, the transformer replayed as a CUDA graph, the vocoder
                in chunks, and the dtype measured on this CPU: sampling passes through it on every run
  benchmark.py  the timing table, plain path to fast path: python -m speed.benchmark tiny | full
  gpu_check.py  the GPU path's figures in one table (rtf cold and warm, clips/s, training tokens/s, peak
                memory, host syncs per sampling step, a MAGNeT sample): python -m speed.gpu_check
"""
