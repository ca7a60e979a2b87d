"""The server's level schedule (:mod:`veilml.runtime.batch.evaluation`): deeper products on fewer primes, the
same results, and the noise budget the flooding needs kept."""

from __future__ import annotations

import numpy as np
from requires import require

require("tenseal", "bfv")

from veilml.runtime.batch.evaluation import level_schedule  # noqa: E402
from veilml.runtime.batch.program import Linear, ProgramBuilder  # noqa: E402
from veilml.runtime.batch.seal_bfv import FLOOD_MARGIN_BITS, BatchClient, BatchServer, batch_params  # noqa: E402


def test_one_level_of_slack_then_one_prime_fewer_per_level_never_below_the_flooding():
    assert level_schedule(4, 3) == [0, 0, 1, 2, 3]  # N = 16384, 5 data primes
    assert level_schedule(2, 1) == [0, 0, 1]  # N = 8192, 3 data primes
    assert level_schedule(5, 4) == [0, 0, 1, 2, 3, 4]
    assert level_schedule(9, 9) == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # N = 32768, 11 data primes
    assert level_schedule(2, 3) == [0, 0, 1]  # a shallow program on deeper parameters
    assert level_schedule(6, 3) == [0, 0, 0, 0, 1, 2, 3]  # deeper than the primes allow: switch late


def test_a_depth_4_program_is_exact_at_fewer_primes_with_the_flooding_margin():
    rng = np.random.default_rng(0)
    builder = ProgramBuilder(6)
    x = [builder.input(i) for i in range(6)]
    a, b = builder.multiply(x[0], x[1]), builder.multiply(x[2], Linear.constant(1) - x[3])  # depth 1
    c = builder.multiply(a + x[4], b)  # depth 2
    d = builder.multiply(c, x[5] + a)  # depth 3
    e = builder.multiply(d, b + Linear.constant(3))  # depth 4
    program = builder.build([e.scaled(5) + c + Linear.constant(2), a + x[5]])
    assert program.depth == 4
    params = batch_params(4)
    client = BatchClient(params)
    server = BatchServer(params, client.relin_keys, client.public_key)
    bits = rng.integers(0, 2, (6, 3000))
    inputs = client.encrypt(bits)
    sums = server.sums(program, inputs)
    ids = server.ctx.parms_ids
    # the depth-4 output was computed on 2 primes, the depth-1 one on all 5
    assert [ids.index(list(ct.parms_id())) for ct in sums] == [3, 0]
    assert min(client.noise_budget(server.ctx.save(ct)) for ct in sums) >= FLOOD_MARGIN_BITS
    got = client.decrypt(server.release(sums, 3000), 3000)
    np.testing.assert_array_equal(got, program.evaluate(bits, params.plain_modulus))
