"""
pictures/ — what a reader would rather look at. A first reading may skip it.

  png.py            a PNG writer in numpy and zlib, and the colour map every picture shares
  scale_curve.py    RESULTS.md's curve of what more training buys (python -m pictures.scale_curve)
  decoding_page.py  sample.py --png (the mel above the step at which each token was committed) and --html
                    (a self-contained page that plays the sampling steps)
"""
