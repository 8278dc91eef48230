"""The static rANS model of a code stream: probabilities from a quarter-octave quantized histogram.

A stream's model stores, per present symbol, ``q = round(STEPS_PER_OCTAVE * log2(count))``;
the probabilities are proportional to ``2 ** (q / STEPS_PER_OCTAVE)``. The coder
(`coding/entropy.py`) stores and codes with this model and the rate-aware quantizers
(`quant/rdq.py`) price each code by the ``-log2 p`` it will pay, so the functions take the array
namespace ``xp`` (NumPy, or jax.numpy inside jitted code).
"""

import numpy as np

STEPS_PER_OCTAVE = 4


def log_weights(counts, xp=np):
    """The stored weights ``round(STEPS_PER_OCTAVE * log2(counts))`` of counts float or int [m]
    (> 0; a zero count gives -inf, an absent symbol). Returns float [m]."""
    return xp.rint(STEPS_PER_OCTAVE * xp.log2(counts))


def probabilities(weights, xp=np):
    """Symbol probabilities float [m] of the model with stored weights [m] (-inf: probability 0)."""
    scaled = 2.0 ** ((weights - xp.max(weights)) / STEPS_PER_OCTAVE)
    return scaled / xp.sum(scaled)


def code_lengths(counts, xp=np):
    """Bits ``-log2 p`` float [m] that the model fitted to counts [m] (>= 0, at least one > 0)
    charges each symbol; inf where the count is 0."""
    with np.errstate(divide="ignore"):
        return -xp.log2(probabilities(log_weights(counts, xp), xp))
