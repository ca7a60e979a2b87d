"""The batched path's uploads (:mod:`veilml.runtime.batch.upload`): seeded and bit-packed, checked by the
server before SEAL sees them, equal in meaning whether the client encrypts in one thread or several."""

from __future__ import annotations

import numpy as np
import pytest
from requires import require

from veilml.runtime.bitpack import pack_values, unpack_values

require("tenseal", "bfv")

from veilml.runtime.batch.program import ProgramBuilder  # noqa: E402
from veilml.runtime.batch.seal_bfv import BatchClient, BatchServer, batch_params  # noqa: E402
from veilml.runtime.batch.upload import MAGIC, seal_inputs, upload_size  # noqa: E402


@pytest.fixture(scope="module")
def session():
    client = BatchClient(batch_params(2))
    return client, BatchServer(client.ctx.params, client.relin_keys, client.public_key)


def _identity(n_inputs: int):
    builder = ProgramBuilder(n_inputs)
    return builder.build([builder.input(i) for i in range(n_inputs)])


@pytest.mark.parametrize("bits", [1, 7, 13, 38, 53, 60, 63])
def test_bit_packing_is_the_little_endian_stream_of_python_integers(bits):
    values = np.random.default_rng(bits).integers(0, 2 ** min(bits, 62), 257, dtype=np.int64)
    stream = sum(int(v) << (i * bits) for i, v in enumerate(values.tolist()))
    packed = pack_values(values, bits)
    assert packed == stream.to_bytes(-(-257 * bits // 8), "little")
    assert np.array_equal(unpack_values(packed, 257, bits), values)


def test_an_upload_is_seeded_packed_and_decrypts_to_its_bits(session):
    client, server = session
    n, primes = client.ctx.params.poly_degree, client.ctx.moduli[0]
    bits = np.random.default_rng(0).integers(0, 2, (3, 500))
    uploads = client.encrypt(bits)
    assert [len(u) for u in uploads] == [upload_size(n, client.ctx.params.coeff_bits[:-1])] * 3
    # one polynomial (the other is a seed), each residue in its prime's bits: under half of SEAL's whole ciphertext
    assert len(uploads[0]) < n * len(primes) * 8
    assert len(set(uploads)) == 3
    results = server.evaluate(_identity(3), uploads, 500)
    np.testing.assert_array_equal(client.decrypt(results, 500), bits)


def test_the_server_refuses_altered_uploads(session):
    client, server = session
    n, primes, parms_id = client.ctx.params.poly_degree, client.ctx.moduli[0], client.ctx.parms_ids[0]
    (upload,) = client.encrypt(np.ones((1, 10), dtype=np.uint8))
    seal_inputs([upload], n, primes, parms_id)  # the original is accepted
    head = len(MAGIC) + 32
    altered = {
        "not a batched upload": [upload[:-1], b"XXXX" + upload[4:], b"VLB\x01" + upload[4:], upload + b"\0"],
        "not below its prime": [upload[:head] + b"\xff" * (len(upload) - head)],
    }
    for message, uploads in altered.items():
        for data in uploads:
            with pytest.raises(ValueError, match=message):
                server.evaluate(_identity(1), [data], 10)
    # another seed is another (valid-looking) ciphertext: it decrypts to noise, not to the row
    reseeded = upload[: len(MAGIC)] + bytes(32) + upload[head:]
    assert not np.array_equal(client.decrypt(server.evaluate(_identity(1), [reseeded], 10), 10), np.ones((1, 10)))


def test_encryption_threads_encrypt_what_one_thread_would(session):
    client, server = session
    bits = np.random.default_rng(1).integers(0, 2, (70, 100))  # more than two chunks
    uploads = client.encrypt(bits, workers=2)
    assert len(uploads) == 70 and len(set(uploads)) == 70
    np.testing.assert_array_equal(client.decrypt(server.evaluate(_identity(70), uploads, 100), 100), bits)
