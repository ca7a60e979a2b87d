"""The ``glwe`` encrypted-linear backend: approximate ``x @ M`` with GLWE packing, on ``concrete-ml-extensions``.

The extension multiplies an encrypted integer matrix by a clear one: every input row is one seeded
GLWE ciphertext per 2048 features (only the body is stored, at 39 bits per coefficient: ~10 KiB per
row), the server computes one LWE per output integer and packs them back into GLWE ciphertexts with
a packing key switch (the *compression key*, ~128 MiB, the only evaluation key), then switches the
result to a 26-bit modulus (~6.6 KiB per row plus 3.25 bytes per output integer). There is no
bootstrapping, so nothing clears the noise and the decrypted integers are approximate.

- :mod:`.backend`: :class:`GLWEBackend` and its halves, :class:`GLWEServer` and :class:`GLWESession`
- :mod:`.noise`: the accumulator's bit budget, row blocks that never wrap, the noise model
- :mod:`.wire`: crypto parameters, setup, ciphertext and result messages
- :mod:`.keys`: the evaluation-key message and the server's cache of deserialized keys
- :mod:`.extension`: the calls into ``concrete-ml-extensions`` (imported on first use)
"""

from veilml.linear.glwe.backend import GLWEBackend, GLWEServer, GLWESession
from veilml.linear.glwe.noise import plan_row_blocks
from veilml.linear.glwe.wire import GLWESetup

__all__ = ["GLWEBackend", "GLWEServer", "GLWESession", "GLWESetup", "plan_row_blocks"]
