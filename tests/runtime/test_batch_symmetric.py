"""The batched path's own encryption (:mod:`veilml.runtime.batch.symmetric`) against SEAL: the same NTT form, the
same batch encoding, ciphertexts SEAL decrypts to every slot, and the transforms against their definition."""

from __future__ import annotations

import numpy as np
import pytest
from requires import require

require("tenseal", "bfv")

from veilml.runtime import ntt  # noqa: E402
from veilml.runtime.batch import symmetric  # noqa: E402
from veilml.runtime.batch.seal_bfv import BatchClient, batch_params  # noqa: E402
from veilml.runtime.seal_bytes import HEADER, PLAIN_MEMBERS, ciphertext_bytes, unwrap  # noqa: E402


@pytest.fixture(scope="module", params=[2, 4], ids=["8192x60", "16384x53"])
def client(request):
    return BatchClient(batch_params(request.param))


def _plain_coefficients(client: BatchClient, plain) -> np.ndarray:
    body = unwrap(client.ctx.save(plain), 1 << 28)
    count = PLAIN_MEMBERS.unpack_from(body)[4]
    out = np.zeros(client.ctx.params.poly_degree, np.uint64)
    out[:count] = np.frombuffer(body, "<u8", count=count, offset=PLAIN_MEMBERS.size + HEADER.size + 8)
    return out


def test_transforms_are_the_negacyclic_evaluation_at_odd_powers_in_bit_reversed_order():
    n, p = 16, 97  # 97 = 1 mod 32
    tables = ntt.tables64(n, (p,))
    psi = ntt.minimal_root(p, 2 * n)
    a = np.random.default_rng(0).integers(0, p, (n, 3)).astype(np.uint64)
    out = a.copy()
    ntt.forward(out, tables.forward[0], tables.forward_shoup[0], np.uint64(p))
    k = ntt.bit_reverse(np.arange(n), 4)
    expected = [
        [sum(int(a[i, c]) * pow(psi, (2 * int(k[j]) + 1) * i, p) for i in range(n)) % p for c in range(3)] for j in range(n)
    ]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.uint64))
    ntt.inverse(out, tables.inverse[0], tables.inverse_shoup[0], tables.scale[0], tables.scale_shoup[0], np.uint64(p))
    np.testing.assert_array_equal(out, a)


def test_the_secret_key_in_seal_ntt_form_transforms_back_to_a_ternary_polynomial(client):
    key = client._key
    tables = ntt.tables64(key.n, key.primes)
    coefficients = key.s.copy()
    for i, p in enumerate(key.primes):
        column = coefficients[i][:, None].copy()
        ntt.inverse(column, tables.inverse[i], tables.inverse_shoup[i], tables.scale[i], tables.scale_shoup[i], np.uint64(p))
        assert set(np.unique(column).tolist()) <= {0, 1, p - 1}  # SEAL's NTT form is ours, prime by prime
        signed = np.where(column[:, 0] == p - 1, -1, column[:, 0].astype(np.int64))
        if i == 0:
            first = signed
        np.testing.assert_array_equal(signed, first)  # one secret, all primes


def test_batch_encoding_is_seals(client):
    t, n = client.ctx.params.plain_modulus, client.ctx.params.poly_degree
    values = np.random.default_rng(1).integers(0, t, (2, n))
    ours = symmetric.batch_encode(values, n, t)
    for column, row in enumerate(values):
        np.testing.assert_array_equal(ours[:, column], _plain_coefficients(client, client.ctx.plain(row)))
    short = symmetric.batch_encode(values[:1, :100], n, t)[:, 0]  # a partial batch: the other slots are zero
    np.testing.assert_array_equal(short, _plain_coefficients(client, client.ctx.plain(values[0, :100])))


def test_seal_decrypts_every_slot_of_our_encryptions_with_a_fresh_budget(client):
    ctx, key = client.ctx, client._key
    rows = np.random.default_rng(2).integers(0, 2, (symmetric.COLUMNS + 3, ctx.params.slots))  # two chunks
    encrypted = symmetric.encrypt_rows(key, rows)
    assert len({seed for seed, _ in encrypted}) == len(rows)  # a fresh seed per ciphertext
    second = symmetric.uniform_coefficients([seed for seed, _ in encrypted], key.n, key.primes)
    for (_, c0), c1, row in zip(encrypted, second, rows):
        assert all((c0[i] < p).all() for i, p in enumerate(key.primes))
        ct = ctx.load(
            ctx.seal.Ciphertext(),
            ciphertext_bytes(tuple(ctx.parms_ids[0]), np.stack([c0.reshape(-1), c1.reshape(-1)]), None, len(key.primes)),
        )
        plain = ctx.seal.Plaintext()
        client._decryptor.decrypt(ct, plain)
        np.testing.assert_array_equal(np.asarray(ctx.encoder.decode_uint64(plain)), row)
    # as much budget as SEAL's own fresh encryption (the noise is SEAL's distribution)
    seal_ct = ctx.seal.Ciphertext()
    ctx.seal.Encryptor(ctx.context, client._secret).encrypt_symmetric(ctx.plain(rows[0]), seal_ct)
    assert abs(client._decryptor.invariant_noise_budget(ct) - client._decryptor.invariant_noise_budget(seal_ct)) <= 2


def test_the_seed_alone_determines_the_public_polynomial():
    primes = (12289, 40961)  # small primes 1 mod 2n: the expansion is the same code
    seed = bytes(range(32))
    a, b = symmetric.uniform_ntt([seed, seed], 1024, primes), symmetric.uniform_ntt([bytes(32)], 1024, primes)
    np.testing.assert_array_equal(a[:, :, 0], a[:, :, 1])
    assert not np.array_equal(a[:, :, 0], b[:, :, 0])
    assert all((a[i] < p).all() for i, p in enumerate(primes))
    with pytest.raises(ValueError, match="32 bytes"):
        symmetric.uniform_ntt([bytes(16)], 1024, primes)
