"""The default ``bfv`` engine (RNS modulo two 27-bit primes): every kernel bit for bit against its reference, the
torch kernels against the numba ones, the seed expansion, SEAL's own decryptor on the worker's results, and
hostile messages."""

import json
import struct

import numpy as np
import pytest
from requires import require

require("numba", "bfv")
require("cryptography", "bfv")

from veilml.linear import pack_frames, unpack_frames  # noqa: E402
from veilml.linear.bfv import BFVBackend, kernels, prg  # noqa: E402
from veilml.linear.bfv import reference as ref  # noqa: E402
from veilml.linear.bfv.encoding import output_positions, pack_bits, weight_blocks  # noqa: E402
from veilml.linear.bfv.keys import ClientKey  # noqa: E402
from veilml.linear.bfv.ntt import is_prime, minimal_root, shoup, tables  # noqa: E402
from veilml.linear.bfv.ops import INVERSE_P1, NumbaKernels, kernel_set  # noqa: E402
from veilml.linear.bfv.params import MAX_COEFF_BITS_128, MODULI, PRIME_BITS, BFVParams, client_params  # noqa: E402
from veilml.linear.bfv.product import unpack_values  # noqa: E402

rng = np.random.default_rng(11)
P = np.array(MODULI, np.int64)
Q = MODULI[0] * MODULI[1]


def residues(shape: tuple[int, ...], high: bool = False) -> np.ndarray:
    """Random residues (primes, *shape) int32, or the largest ones (p - 1) when ``high``."""
    return np.stack([np.full(shape, p - 1) if high else rng.integers(0, p, shape) for p in MODULI]).astype(np.int32)


# -- parameters ---------------------------------------------------------------------------------------------------


def test_the_moduli_are_the_two_largest_ntt_primes_below_2_27_and_fit_the_128_bit_table():
    found = [p for p in range(2**27 - 4095, 2**26, -4096) if is_prime(p)][:2]  # 1 mod 4096, largest first
    assert tuple(found) == MODULI and all(p % 8192 == 1 for p in MODULI)
    assert Q.bit_length() == MAX_COEFF_BITS_128 == 54 and max(MODULI).bit_length() == PRIME_BITS
    for p in MODULI:
        psi = minimal_root(p, 4096)
        assert pow(psi, 2048, p) == p - 1 and tables(2048).psi[MODULI.index(p)] == psi
    sealapi = pytest.importorskip("tenseal.sealapi")
    assert sealapi.CoeffModulus.MaxBitCount(2048, sealapi.SEC_LEVEL_TYPE.TC128) == MAX_COEFF_BITS_128


# -- every numba kernel against its reference ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 8, 128, 2048])
def test_transforms_are_the_evaluations_at_the_odd_roots(size):
    t = tables(size)
    a = residues((size, 5))
    a[:, :, 0] = residues((size,), high=True)
    out = a.copy()
    kernels.forward(out, 0, 5, t.forward, t.forward_shoup, t.moduli)
    for prime in range(2):
        assert np.array_equal(out[prime].T, ref.ntt_reference(a[prime].T, prime, size))
    back = out.copy()
    kernels.inverse(back, 0, 5, t.inverse, t.inverse_shoup, t.moduli, t.scale, t.scale_shoup)
    assert np.array_equal(back, a)
    for prime in range(2):  # the inverse of an arbitrary vector (not only of a transform)
        assert np.array_equal(ref.intt_reference(out[prime].T, prime, size), a[prime].T)
    part = a.copy()  # columns lo:hi only
    kernels.forward(part, 1, 3, t.forward, t.forward_shoup, t.moduli)
    assert np.array_equal(part[:, :, 1:3], out[:, :, 1:3]) and np.array_equal(part[:, :, [0, 3, 4]], a[:, :, [0, 3, 4]])


def test_slot_products_gemm_and_shoup_multiplication():
    for rows, inner, cols in [(2, 3, 5), (4, 300, 3), (64, 513, 2)]:  # J > 256: the lazy reduction's second round
        x, w = residues((4, rows, inner)), residues((4, inner, cols))
        x[:, :, 0] = residues((4, inner), high=True)
        w[:, :, :, 0] = residues((4, inner), high=True)
        out = np.empty((2, 4, rows, cols), np.int32)
        kernels.gemm(x, w, out, P, 1, 4)
        assert np.array_equal(out[:, 1:], ref.gemm_reference(x[:, 1:], w[:, 1:], P))
    a, s = residues((16, 3)), residues((16,))
    shoups = np.stack([shoup(s[i], p) for i, p in enumerate(MODULI)])
    out = a.copy()
    kernels.mul_rows(out, s, shoups, P, 0, 3)
    assert (out < 2 * P[:, None, None]).all()
    assert np.array_equal(out % P[:, None, None], a.astype(np.int64) * s[:, :, None] % P[:, None, None])


@pytest.mark.parametrize("n_t, n_d, n_m", [(1, 64, 32), (4, 8, 64), (32, 8, 8), (32, 64, 1), (2048, 1, 1)])
def test_chunked_products_are_the_ring_products(n_t, n_d, n_m):
    """scatter, scatter_weights, the transforms, the GEMM and overlap_add: c * w mod (X**N + 1, p), summed over J, for
    polynomials given in coefficients (load) or in the transform domain (load_uniform, the session's hints)."""
    ops, j, c = NumbaKernels(), 2, 3
    blocks = rng.integers(-128, 128, size=(j, c, n_d * n_m)) * (rng.random((j, c, n_d * n_m)) < 64 / (n_d * n_m))
    blocks[0, 0, :4], blocks[1, 2, -1] = 127, -128  # sparse (the reference's time is per non-zero), with the extremes
    weights = ops.weights(blocks, n_t)
    c0, c1 = residues((2048, j)), residues((2048, j))
    c1_hat = c1.copy()
    ops.forward(c1_hat, 2048)
    for source, x in ((c0, ops.load(c0.copy(), n_t)), (c1, ops.load_uniform(c1_hat, n_t))):
        res = ops.residues(ops.multiply(x, weights), n_t)  # (primes, 1, C, N)
        for prime, p in enumerate(MODULI):
            for col in range(c):
                expected = sum(ref.negacyclic_reference(source[prime, :, i], blocks[i, col], p) for i in range(j)) % p
                assert np.array_equal(res[prime, 0, col], expected.astype(np.int64))


@pytest.mark.parametrize("limbs, w_max", [(1, 128), (2, 2**15)])
def test_the_matrix_product_of_residues_is_exact(limbs, w_max):
    """matmul_mod: float64 products (one limb) or 14/13-bit limbs (two) give rows @ matrix mod p exactly, at the extremes."""
    from veilml.linear.bfv.product import limbs_for

    d = 3000
    assert limbs_for(d, w_max) == limbs
    rows = residues((6, d))
    rows[:, 0] = residues((d,), high=True)  # the largest residues in the first row
    matrix = rng.integers(-w_max, w_max, size=(d, 5))
    matrix[:, 0], matrix[:, 1] = -w_max, w_max - 1
    out = NumbaKernels().matmul_mod(rows, matrix, limbs)
    for prime, p in enumerate(MODULI):
        expected = (rows[prime].astype(object) @ matrix.astype(object)) % p
        assert (out[prime] == expected).all()


def test_crt_and_switch_round_exactly():
    values = np.concatenate([rng.integers(0, Q, 3000), [0, 1, Q - 1, Q // 2, (Q + 1) // 2]]).astype(object)
    values = np.concatenate([values, [(Q * k) // 2**13 + e for k in range(1, 5) for e in (-1, 0, 1)]])  # near ties
    res = np.stack([values % p for p in MODULI]).astype(np.int64)
    assert (ref.crt_reference(res, MODULI) == values).all()
    size = values.size
    cube = np.zeros((2, 2, size), np.int32)
    cube[:, 1] = res  # polynomial 1: every value, read whole; polynomial 0: at two indices
    indices = np.array([0, size - 1])
    cube[:, 0, indices] = res[:, indices]
    for bits in (13, 30, 48):
        expected = ref.switch_reference(values, Q, bits)
        whole, picked = np.empty((2, size), np.int64), np.empty((2, 2), np.int64)
        kernels.crt_switch(cube, np.arange(size), P, INVERSE_P1, bits, whole)
        kernels.crt_switch(cube, indices, P, INVERSE_P1, bits, picked)
        assert np.array_equal(whole[1], expected) and np.array_equal(picked[0], expected[indices])


def test_uniform_sampling_noise_and_packing_kernels():
    words = rng.integers(0, 2**32, size=(4, 600), dtype=np.uint64).astype(np.uint32)
    words[1, :100] = 2**27 - 1  # rejected words (above p2), some streams run short
    out = np.zeros((2, 2, 512), np.int32)
    filled = kernels.uniform(words, P, out)
    for s in range(4):
        kept = ref.uniform_reference(words[s].astype("<u4").tobytes(), MODULI[s % 2], int(filled[s]))
        assert kept == out[s // 2, s % 2, : filled[s]].tolist() and (filled[s] == 512 or s == 1)
    noise_words = rng.integers(-(2**62), 2**62, size=(7, 9))
    noise = np.empty((7, 9), np.int64)
    kernels.cbd(noise_words, noise)
    assert np.array_equal(noise, ref.cbd_reference(noise_words)) and np.abs(noise).max() <= 21
    src = rng.integers(0, 100, size=(5, 2, 70)).astype(np.int32)
    dst = np.empty((2, 70, 5), np.int32)
    kernels.to_columns(src, dst)
    assert np.array_equal(dst, src.transpose(1, 2, 0))
    for bits in (1, 27, 41, 55):
        values = rng.integers(0, 2**bits, size=333)
        packed = np.zeros(-(-333 * bits // 8), np.uint8)
        kernels.pack(values, bits, packed)
        assert packed.tobytes() == pack_bits(values.astype(np.uint64), bits)
        assert np.array_equal(unpack_values(packed.tobytes(), 333, bits), values)
        assert np.array_equal(unpack_values(packed.tobytes(), 333, bits, np.float64), values)


def test_seed_expansion_is_aes_ctr_per_ciphertext_and_prime():
    seed = bytes(range(32))
    a = prg.expand_uniform(seed, 3, 2)  # ciphertexts 3 and 4
    for k in range(2):
        for prime, p in enumerate(MODULI):
            stream = prg.keystream(seed, struct.pack(">IIQ", 3 + k, prime, 0), 16 * prg.STREAM_BLOCKS)
            assert a[prime, :, k].tolist() == ref.uniform_reference(stream, p, 2048)
            assert prg._read_on(seed, 3 + k, prime, p).tolist() == a[prime, :, k].tolist()
    assert np.array_equal(prg.expand_uniform(seed, 4, 1)[:, :, 0], a[:, :, 1])  # a stream depends on (k, prime) only
    assert not np.array_equal(a[0, :, 0], a[1, :, 0]) and not np.array_equal(a[:, :, 0], a[:, :, 1])
    with pytest.raises(ValueError, match="32 bytes"):
        prg.expand_uniform(seed[:16], 0, 1)
    secret = prg.ternary_secret()
    assert set(np.unique(secret)) == {-1, 0, 1} and abs((secret == 0).mean() - 1 / 3) < 0.06


def test_fresh_ciphertexts_decrypt_to_their_messages():
    """c0 + a_j s_r = round(q m / t) + e (mod p1, p2), e small, with the session's a_j and a fresh secret per row
    block: checked with schoolbook products of each secret."""
    params = client_params(64, 8, 127)
    key = ClientKey(params)
    rows = rng.integers(0, 256, size=(6, 40))  # two row blocks of 4 rows (the second one half full)
    uniform = prg.expand_uniform(bytes(range(32)), 0, 3)
    first, secrets = key.encrypt(rows, (4, 16, 32), (2, 3), uniform)
    assert first.shape == (6, 2, 2048) and secrets.shape == (2, 2048) and not np.array_equal(secrets[0], secrets[1])
    a = uniform.copy()
    NumbaKernels().inverse(a, 2048)
    t = params.plain_modulus
    for r in range(2):
        for j in range(3):
            message = np.zeros(2048, np.int64)
            for i in range(min(4, 6 - 4 * r)):
                part = rows[4 * r + i, j * 16 : j * 16 + 16]
                message[i * 512 : i * 512 + part.size] = part
            phases = [
                (first[3 * r + j, prime].astype(object) + ref.negacyclic_reference(a[prime, :, j], secrets[r], p)) % p
                for prime, p in enumerate(MODULI)
            ]
            phase = ref.crt_reference(np.stack(phases), MODULI)
            error = np.array([int(v) for v in phase], dtype=object) - np.array(
                [(Q * int(m) * 2 + t) // (2 * t) for m in message], dtype=object
            )
            error = np.array([(int(e) + Q // 2) % Q - Q // 2 for e in error])
            assert np.abs(error).max() <= 21 and error.std() > 1
    again = key.encrypt(rows, (4, 16, 32), (2, 3), uniform)[1]  # fresh secrets for every request
    assert not np.array_equal(again[0], secrets[0]) and set(np.unique(secrets)) == {-1, 0, 1}


def test_hints_kept_as_float64_decrypt_as_the_integers_do():
    """decrypt_outputs with the second polynomials as float64 (one limb, how a session keeps them) or as integers."""
    from veilml.linear.bfv.encoding import decrypt_outputs, selection

    secret = prg.ternary_secret()
    shape = (32, 64, 1)
    for bits, shift in ((34, 12), (41, 13)):
        c1 = rng.integers(0, 2**bits, size=(5, 2048))
        c1[0] = 2**bits - 1
        c0 = rng.integers(0, 2**bits, size=(5, 32))
        chosen = selection(secret, *shape)
        exact = decrypt_outputs(chosen, c1, c0, bits, shift, 2**20)
        assert np.array_equal(decrypt_outputs(chosen, c1.astype(np.float64), c0, bits, shift, 2**20), exact)


# -- the torch kernels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_t, n_d, n_m, d, m", [(1, 64, 32, 100, 70), (8, 32, 8, 100, 50), (128, 4, 4, 33, 65), (32, 64, 1, 100, 9)]
)
def test_torch_ops_equal_the_numba_ops_bit_for_bit(n_t, n_d, n_m, d, m):
    require("torch", "lora")
    numba_ops, torch_ops = kernel_set("numba"), kernel_set("torch", "cpu")
    j = -(-d // n_d)
    blocks = weight_blocks(rng.integers(-128, 128, size=(d, m)), n_d, n_m)
    w_numba, w_torch = numba_ops.weights(blocks, n_t), torch_ops.weights(blocks, n_t)
    assert np.array_equal(w_numba, torch_ops.to_numpy(w_torch))
    matrix = rng.integers(-128, 128, size=(d, m)).astype(np.int16)  # the worker's path: straight from the matrix
    from_blocks = numba_ops.weights(weight_blocks(matrix, n_d, n_m), n_t)
    assert np.array_equal(numba_ops.matrix_weights(matrix, n_d, n_m, n_t), from_blocks)
    assert np.array_equal(torch_ops.to_numpy(torch_ops.matrix_weights(matrix, n_d, n_m, n_t)), from_blocks)
    a_hat = prg.expand_uniform(bytes(32), 0, j)
    a_hat[:, :, 0] = residues((2048,), high=True)
    x_numba, x_torch = numba_ops.load_uniform(a_hat.copy(), n_t), torch_ops.load_uniform(a_hat, n_t)
    assert np.array_equal(x_numba, torch_ops.to_numpy(x_torch))
    y_numba, y_torch = numba_ops.multiply(x_numba, w_numba), torch_ops.multiply(x_torch, w_torch)
    assert np.array_equal(y_numba, torch_ops.to_numpy(y_torch))
    assert np.array_equal(numba_ops.residues(y_numba.copy(), n_t), torch_ops.to_numpy(torch_ops.residues(y_torch, n_t)))
    positions = output_positions(n_t, n_d, n_m)
    for bits in (13, 41, 48):
        assert np.array_equal(
            numba_ops.finish(y_numba.copy(), n_t, positions, bits), torch_ops.finish(y_torch, n_t, positions, bits)
        )
    rows = residues((5, d))
    rows[:, 0] = residues((d,), high=True)
    for limbs in (1, 2):
        assert np.array_equal(numba_ops.matmul_mod(rows, matrix, limbs), torch_ops.matmul_mod(rows, matrix, limbs))


def test_a_torch_worker_gives_the_exact_product_and_the_kernel_choice_is_checked():
    require("torch", "lora")
    import torch

    backend = BFVBackend(kernels="torch")
    assert backend.ops.name == "torch" and BFVBackend().ops.name == "numba"
    for n, d, m in [(3, 40, 12), (64, 2048, 4)]:
        M = np.full((d, m), -128)
        M[:, -1] = np.where(np.arange(d) % 2, -128, 127)
        server, session = backend.server(M, 8), backend.session()
        keys = session.register("m", server.spec, server.setup())
        x = np.full((n, d), 255)
        assert np.array_equal(session.decrypt("m", server.run(session.encrypt("m", x), keys)), x @ M)
    with pytest.raises(ValueError, match="numba kernels run on the CPU"):
        kernel_set("numba", "cuda")
    with pytest.raises(ValueError, match="unknown bfv kernels"):
        kernel_set("cupy")
    if torch.cuda.is_available():
        pytest.skip("the CPU-only error path of device='cuda' cannot be checked: it can use a GPU here")
    with pytest.raises(ValueError, match="no CUDA device"):
        BFVBackend(device="cuda")


# -- SEAL's own decryptor on the worker's results -----------------------------------------------------------------


def _seal_object(body: bytes) -> bytes:
    from veilml.runtime.seal_bytes import _object

    return _object(body)


def test_seal_decrypts_the_workers_results_to_the_clear_product():
    """Each result ciphertext as a SEAL ciphertext mod p1 p2 (its first polynomial the ring product c0 W, its second
    the session's hint sum_j a_j W, before the switch), decrypted by SEAL with the row block's secret in NTT form:
    SEAL's NTT form is the engine's transform domain, and the products are exact. And the worker's matrix product
    gives exactly the switched output coefficients of those ring products."""
    sealapi = require("tenseal.sealapi", "bfv")
    from veilml.runtime.seal_bytes import CIPHER_MEMBERS, PLAIN_MEMBERS, _dynarray, seal_files

    n, d, m = 5, 100, 24
    M, x = rng.integers(-128, 128, size=(d, m)), rng.integers(0, 256, size=(n, d))
    backend = BFVBackend()
    server, session = backend.server(M, 8), backend.session()
    keys = session.register("m", server.spec, server.setup())
    params = server.params(keys)
    ciphertext = session.encrypt("m", x)
    header, first = unpack_frames(ciphertext)
    secret = session._pending[json.loads(header)["id"]].secrets[0]
    plan = server.plan(params, n)
    r, j, c = plan.counts(n, d, m)
    assert r == 1 and plan.n_m == 1 and c == m
    c0 = unpack_values(first, j * 2 * 2048, PRIME_BITS).reshape(j, 2, 2048).transpose(1, 2, 0).astype(np.int32)
    ops = backend.ops
    weights = ops.weights(weight_blocks(server.matrix, plan.n_d, plan.n_m), plan.n_t)
    polys = [
        ops.residues(ops.multiply(x_, weights), plan.n_t)[:, 0]
        for x_ in (
            ops.load(np.ascontiguousarray(c0), plan.n_t),
            ops.load_uniform(prg.expand_uniform(params.seed, 0, j), plan.n_t),
        )
    ]  # (primes, C, N): c0 W and sum_j a_j W

    positions, bits = output_positions(plan.n_t, plan.n_d, plan.n_m), params.plain_bits + plan.shift
    _, values, hint = unpack_frames(server.run(ciphertext, keys))
    switched = unpack_values(values, c * plan.n_t, bits).reshape(c, plan.n_t)
    expected_switched = np.empty((c, plan.n_t), np.int64)
    kernels.crt_switch(polys[0], positions, P, INVERSE_P1, bits, expected_switched)
    assert np.array_equal(switched, expected_switched)  # the matrix product is the ring product at the outputs
    whole = np.empty((c, 2048), np.int64)
    kernels.crt_switch(polys[1], np.arange(2048), P, INVERSE_P1, bits, whole)
    assert np.array_equal(unpack_values(hint, c * 2048, bits).reshape(c, 2048), whole)

    extra = next(p for p in range(2**26 + 1, 2**27, 4096) if is_prime(p))  # SEAL's special prime: data level = (p1, p2)
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(2048)
    parms.set_coeff_modulus([sealapi.Modulus(p) for p in (*MODULI, extra)])
    parms.set_plain_modulus(params.plain_modulus)
    context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.NONE)
    assert context.parameters_set() and context.first_context_data().parms().coeff_modulus()[1].value() == MODULI[1]
    s_hat = np.stack([secret % p for p in (*MODULI, extra)]).astype(np.int32)[:, :, None]
    kernels.forward(s_hat, 0, 1, *(lambda t: (t.forward, t.forward_shoup, t.moduli))(tables(2048, (*MODULI, extra))))
    key_bytes = _seal_object(
        PLAIN_MEMBERS.pack(*context.key_parms_id(), s_hat.size, 1.0) + _dynarray(s_hat.reshape(-1).astype(np.uint64))
    )
    secret_key = seal_files().load(sealapi.SecretKey(), context, key_bytes)
    decryptor = sealapi.Decryptor(context, secret_key)
    t = params.plain_modulus
    expected = (x @ M) % t
    for col in range(c):
        members = CIPHER_MEMBERS.pack(*context.first_parms_id(), 0, 2, 2048, 2, 1.0, 1)
        values = np.stack([polys[0][:, col], polys[1][:, col]]).reshape(-1).astype(np.uint64)  # poly 0 (p1, p2), poly 1
        ciphertext = seal_files().load(sealapi.Ciphertext(), context, _seal_object(members + _dynarray(values)))
        plain = sealapi.Plaintext()
        decryptor.decrypt(ciphertext, plain)
        coefficients = np.array([plain.data(i) for i in range(plain.coeff_count())] + [0] * (2048 - plain.coeff_count()))
        assert np.array_equal(coefficients[positions][:n], expected[:, col])
        assert decryptor.invariant_noise_budget(ciphertext) > 0


# -- hostile keys and messages ----------------------------------------------------------------------------------


def test_bad_keys_and_messages_are_refused_before_any_product():
    M = rng.integers(-127, 128, size=(40, 12))
    backend = BFVBackend()
    server, session = backend.server(M, 8), backend.session()
    keys = session.register("m", server.spec, server.setup())
    x = rng.integers(0, 256, size=(5, 40))
    ciphertext = session.encrypt("m", x)
    result = server.run(ciphertext, keys)
    params = json.loads(keys)
    for junk, words in [
        (b"junk", "veilml-bfv-params/3"),
        (json.dumps({**params, "format": "veilml-bfv-params/2"}).encode(), "veilml-bfv-params/3"),
        (json.dumps({**params, "poly_degree": 1024}).encode(), "polynomial degree 2048"),
        (json.dumps({**params, "moduli": [MODULI[0], 12289]}).encode(), "moduli"),
        (json.dumps({**params, "plain_bits": 8}).encode(), "too small"),
        (json.dumps({**params, "plain_bits": 4.5}).encode(), "integer"),
        (json.dumps({**params, "plain_bits": 30}).encode(), "not this worker's"),
        (json.dumps({**params, "seed": "00" * 16}).encode(), "a seed of 32 bytes"),
        (json.dumps({**params, "seed": "zz" * 32}).encode(), "expected a veilml-bfv-params/3"),
        (json.dumps({k: v for k, v in params.items() if k != "seed"}).encode(), "seed"),
    ]:
        with pytest.raises(ValueError, match=words):
            server.check_keys(junk)
    header, first = unpack_frames(ciphertext)
    lying = json.loads(header)
    assert lying["hint"] is True and len(lying["id"]) == 32  # the first request of its shape asks for the hint
    plan = server.plan(BFVParams.from_bytes(keys), 200)  # seven row blocks of 32 rows, not one
    too_big = bytearray(first)
    too_big[:4] = b"\xff\xff\xff\x07"  # the first residue: 2**27 - 1, not below p1
    for changed, frames, words in [
        ({"n": 2}, [first], "not this worker's plan for 2 rows"),
        ({"n": 200, "plan": [plan.n_t, plan.n_d, plan.n_m, plan.shift]}, [first], "bytes"),
        ({"plan": [64, 4, 4, 12]}, [first], "powers of two whose product"),
        ({"plan": [1, 2048, 1, 12]}, [first], "not this worker's plan"),
        ({"format": "veilml-bfv-ct/2"}, [first], "veilml-bfv-ct/3"),
        ({}, [first[:-1]], "bytes"),
        ({}, [first, bytes(32)], "one data frame"),
        ({}, [], "one data frame"),
        ({}, [bytes(too_big)], "not below its prime"),
        ({"id": "../etc"}, [first], "an id of 1 to 64 letters and digits"),
        ({"id": None}, [first], "an id"),
        ({"hint": 1}, [first], "true or false"),
    ]:
        with pytest.raises(ValueError, match=words):
            server.run(pack_frames([json.dumps({**lying, **changed}).encode(), *frames]), keys)
    header, values, hint = unpack_frames(result)
    told = json.loads(header)
    for changed, frames, words in [
        ({"n": 70}, [values, hint], "block plan"),
        ({}, [values[:-1], hint], "bytes"),
        ({}, [values, hint[:-1]], "bytes"),
        ({"id": "0" * 32}, [values, hint], "answers no request"),
        ({"id": 7}, [values, hint], "answers no request"),
        ({}, [values], "lacks the hint"),
        ({"hint": False}, [values, hint], "lacks the hint"),
    ]:
        with pytest.raises(ValueError, match=words):
            session.decrypt("m", pack_frames([json.dumps({**told, **changed}).encode(), *frames]))
    assert np.array_equal(session.decrypt("m", result), x @ M)  # refused results took nothing from the request
    with pytest.raises(ValueError, match="answers no request"):  # its secrets are gone once it is decrypted
        session.decrypt("m", result)
    again = session.encrypt("m", x)
    assert json.loads(unpack_frames(again)[0])["hint"] is False  # the session keeps the hint of its shape
    header, values = unpack_frames(server.run(again, keys))
    with pytest.raises(ValueError, match="carries the hint"):
        session.decrypt("m", pack_frames([header, values, hint]))
    assert np.array_equal(session.decrypt("m", pack_frames([header, values])), x @ M)
    with pytest.raises(ValueError, match="veilml-bfv-setup/2"):
        backend.session().register("m", server.spec, server.setup().replace(b"/2", b"/1"))


def test_the_worker_command_takes_a_device_for_the_bfv_backend(tmp_path, capsys):
    from veilml.cli.main import build_parser, main

    args = build_parser().parse_args(["worker", "--weights", "w.safetensors"])
    assert (args.backend, args.device) == ("bfv", "cpu")
    args = build_parser().parse_args(["worker", "--weights", "w", "--backend", "bfv-seal", "--device", "cuda:1"])
    assert (args.backend, args.device) == ("bfv-seal", "cuda:1")
    (tmp_path / "w.safetensors").write_bytes(b"")  # refused before the weights are read
    assert main(["worker", "--weights", str(tmp_path / "w.safetensors"), "--backend", "bfv-seal", "--device", "cuda"]) != 0
    assert "--device cuda is for --backend bfv" in capsys.readouterr().err
