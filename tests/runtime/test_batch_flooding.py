"""What a returned ciphertext of the batched path reveals: the scores and nothing else (``docs/security.md`` §2).

With the client's secret key the test reads the *noise* of each returned ciphertext, the only part of a result
beyond the scores that could depend on how they were computed: two programs with equal outputs, one reading an
input as it is and one reaching it through products (``x y + x (1 - y) = x``, tens of bits more noise), return
results whose noise a two-sample Kolmogorov-Smirnov test cannot tell apart, while the same test separates the
outputs the server holds before it releases them.
"""

from __future__ import annotations

import numpy as np
import pytest
from requires import require

require("tenseal", "bfv")
stats = pytest.importorskip("scipy.stats")

from veilml.runtime.batch.program import Linear, ProgramBuilder  # noqa: E402
from veilml.runtime.batch.seal_bfv import BatchClient, BatchServer, batch_params  # noqa: E402
from veilml.runtime.seal_bytes import (  # noqa: E402
    CIPHER_MEMBERS,
    PLAIN_MEMBERS,
    _read_dynarray,
    ciphertext_bytes,
    unwrap,
)

ROWS = 4000


def _secret(client: BatchClient) -> np.ndarray:
    """The secret key's coefficients (-1, 0, 1): the decryption of (0, floor(p / t)) at the last prime is s."""
    ctx, n, t = client.ctx, client.ctx.params.poly_degree, client.ctx.params.plain_modulus
    (p,) = ctx.moduli[-1]
    polys = np.zeros((2, n), np.uint64)
    polys[1, 0] = p // t
    plain = ctx.seal.Plaintext()
    client._decryptor.decrypt(ctx.load(ctx.seal.Ciphertext(), ciphertext_bytes(tuple(ctx.parms_ids[-1]), polys)), plain)
    body = unwrap(ctx.save(plain), 1 << 20)
    count = PLAIN_MEMBERS.unpack_from(body)[4]
    coeffs = np.zeros(n, np.int64)
    coeffs[:count] = _read_dynarray(body, PLAIN_MEMBERS.size, count)[0].astype(np.int64)
    s = np.where(coeffs == t - 1, -1, coeffs)
    assert set(np.unique(s)) <= {-1, 0, 1}
    return s


def _noise(client: BatchClient, s: np.ndarray, data: bytes) -> np.ndarray:
    """The invariant noise of a ciphertext at any level: (t v mod q), centered, over q, for v = c0 + c1 s."""
    ctx, n, t = client.ctx, client.ctx.params.poly_degree, client.ctx.params.plain_modulus
    body = unwrap(data, 1 << 28)
    moduli = CIPHER_MEMBERS.unpack_from(body)[7]
    primes = next(level for level in ctx.moduli if len(level) == moduli)
    polys = _read_dynarray(body, CIPHER_MEMBERS.size, 2 * moduli * n)[0].reshape(2, moduli, n)
    q, v = 1, [0] * n
    for i, p in enumerate(primes):  # v mod p in Z_p[X] / (X^n + 1), s ternary: signed negacyclic shifts of c1
        c0, c1 = polys[0, i], polys[1, i]
        acc = c0 % np.uint64(p)
        for j in np.flatnonzero(s):
            shifted = np.concatenate([np.uint64(p) - c1[n - j :], c1[: n - j]]) if j else c1
            acc = (acc + (shifted if s[j] == 1 else np.uint64(p) - shifted)) % np.uint64(p)
        # CRT: v = v mod q, acc mod p -> mod q p
        inverse = pow(q % p, -1, p)
        v = [a + q * ((int(b) - a) * inverse % p) for a, b in zip(v, acc.tolist())]
        q *= p
    w = [(x * t) % q for x in v]
    return np.array([(x - q if x > q // 2 else x) / q for x in w], dtype=float)


@pytest.fixture(scope="module")
def results():
    params = batch_params(2)
    client = BatchClient(params)
    server = BatchServer(params, client.relin_keys, client.public_key)
    shallow_builder = ProgramBuilder(2)
    shallow = shallow_builder.build([shallow_builder.input(0)])
    builder = ProgramBuilder(2)
    x, y = builder.input(0), builder.input(1)
    deep = builder.build([builder.multiply(x, y) + builder.multiply(x, Linear.constant(1) - y)])
    bits = np.random.default_rng(0).integers(0, 2, size=(2, ROWS))
    inputs = client.encrypt(bits)
    out = {}
    for name, program in (("shallow", shallow), ("deep", deep)):
        before: list[bytes] = []
        (flooded,) = server.evaluate(program, inputs, ROWS, keep=before.append)
        np.testing.assert_array_equal(client.decrypt([flooded], ROWS)[0], bits[0])
        out[name] = (flooded, before[0])  # the output before the mask and flooding (at the first level)
    return client, _secret(client), out


def test_results_of_equal_scores_are_indistinguishable_by_their_noise(results):
    client, s, out = results
    shallow, deep = (_noise(client, s, out[name][0]) for name in ("shallow", "deep"))
    assert np.abs(shallow).max() < 0.5 and np.abs(deep).max() < 0.5  # decryptable
    # fresh keys and noise every run (nothing here can be seeded): under equal distributions the p-value is uniform,
    # so this fails by chance once in 100,000 runs; the unflooded outputs below give p ~ 0
    assert stats.ks_2samp(shallow, deep).pvalue > 1e-5


def test_before_the_flooding_the_same_test_tells_them_apart(results):
    client, s, out = results
    shallow, deep = (_noise(client, s, out[name][1]) for name in ("shallow", "deep"))
    assert stats.ks_2samp(shallow, deep).pvalue < 1e-6
    assert np.std(deep) > 4 * np.std(shallow)  # products left far more noise than a fresh input
