"""The batched path: tree programs equal to the TFHE path's ``disable`` mode, and their encrypted evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from veilml.models.trees.batch import (
    BatchEncoding,
    BatchScorer,
    batch_seconds,
    encode_codes,
    matching_leaves,
    part_programs,
    tree_groups,
    tree_program,
    upload_bytes,
)
from veilml.models.trees.estimators import (
    DecisionTreeClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    XGBClassifier,
)
from veilml.runtime.batch.program import Linear, ProgramBuilder
from veilml.runtime.batch.seal_bfv import (
    FLOOD_MARGIN_BITS,
    LEVELS,
    PLAIN_MODULUS,
    BatchClient,
    BatchContext,
    BatchParams,
    BatchServer,
    batch_params,
)

pytest.importorskip("tenseal")
pytest.importorskip("xgboost")

CANCER = load_breast_cancer(return_X_y=True)
WINE = load_wine(return_X_y=True)
DIABETES = load_diabetes(return_X_y=True)

FITTED = {
    "tree": lambda: DecisionTreeClassifier(n_bits=6, max_depth=5, random_state=0).fit(*CANCER),
    "forest-3-classes": lambda: RandomForestClassifier(n_bits=6, n_estimators=5, max_depth=4, random_state=0).fit(*WINE),
    "xgboost": lambda: XGBClassifier(n_bits=6, n_estimators=8, max_depth=3).fit(*CANCER),
    "boosting-regressor": lambda: GradientBoostingRegressor(n_bits=6, n_estimators=8, max_depth=3, random_state=0).fit(*DIABETES),
}
DATA = {"tree": CANCER, "forest-3-classes": WINE, "xgboost": CANCER, "boosting-regressor": DIABETES}


@pytest.mark.parametrize("encoding", list(BatchEncoding))
@pytest.mark.parametrize("name", list(FITTED))
def test_tree_program_sums_what_disable_sums(name, encoding):
    """The program, run on clear residues, gives every row the integers the TFHE circuit's ``disable`` mode decodes."""
    est, (X, _) = FITTED[name](), DATA[name]
    leaves = matching_leaves(est)
    tp = tree_program(est.ensemble_, leaves.values, est.n_bits_, encoding)
    codes = est.fhe_model_.codec.input_quantizer.quantize(X)
    bits = encode_codes(codes, tp.encoding, est.n_bits_)
    assert bits.shape == (X.shape[1] * tp.bits_per_feature, len(X)) and set(np.unique(bits)) <= {0, 1}
    sums = tp.program.evaluate(bits, PLAIN_MODULUS).T
    assert sums.max() < PLAIN_MODULUS // 2  # decoded without wrapping
    _, _, combine = leaves.output_steps(est.ensemble_, np.eye(len(leaves.outputs), dtype=np.int64))
    expected = est.predict_integers(X, "disable") @ est.fhe_model_.codec.output_combine
    np.testing.assert_array_equal(sums @ combine, expected)
    if encoding is BatchEncoding.DIGITS:  # the digits cost one level more than the free thermometer comparisons
        thermometer = tree_program(est.ensemble_, leaves.values, est.n_bits_, "thermometer")
        assert tp.program.depth <= thermometer.program.depth + 1 and tp.program.n_inputs * 4 < thermometer.program.n_inputs


def test_multiclass_trees_use_indicators_one_product_per_node():
    est = FITTED["forest-3-classes"]()
    leaves = matching_leaves(est)
    tp = tree_program(est.ensemble_, leaves.values, est.n_bits_, "thermometer")
    assert len(tp.program.outputs) == len(leaves.outputs) == 2  # class probabilities sum to 1: class 0 is derived
    # one product per internal node below each root, whatever the number of classes (indicators top down)
    internal = sum(int((tree.left >= 0).sum()) - 1 for tree in est.ensemble_.trees)
    assert tp.program.n_products <= internal


def test_parameters_are_128_bit_and_taken_from_the_depth():
    from tenseal import sealapi

    for depth, (degree, bits) in LEVELS.items():
        assert sum(bits) <= sealapi.CoeffModulus.MaxBitCount(degree, sealapi.SEC_LEVEL_TYPE.TC128)
        assert batch_params(depth) == BatchParams(degree, bits)
    assert batch_params(0).poly_degree == 8192 and batch_params(3).poly_degree == 16384
    with pytest.raises(ValueError, match="too deep"):
        batch_params(max(LEVELS) + 1)
    with pytest.raises(ValueError, match="batch_params"):
        BatchContext(BatchParams(8192, (60, 60, 60, 60)))  # not a table entry (and over 218 bits)


@pytest.fixture(scope="module")
def small_session():
    params = batch_params(2)
    client = BatchClient(params)
    return client, BatchServer(params, client.relin_keys, client.public_key)


def test_the_server_holds_public_keys_only(small_session):
    from tenseal import sealapi

    client, server = small_session
    held = [value for value in vars(server).values()] + [value for value in vars(server.ctx).values()]
    assert not any(isinstance(value, sealapi.SecretKey) for value in held)
    assert any(isinstance(value, sealapi.SecretKey) for value in vars(client).values())


def test_flooding_hides_how_deep_the_result_was_computed(small_session):
    """Two programs with the same output, one a fresh input and one after products (x y + x (1 - y) = x):
    before flooding their noise differs by tens of bits, after it the client cannot tell them apart by it."""
    client, server = small_session
    builder = ProgramBuilder(2)
    shallow = builder.build([builder.input(0)])
    builder = ProgramBuilder(2)
    x, y = builder.input(0), builder.input(1)
    deep = builder.build([builder.multiply(x, y) + builder.multiply(x, Linear.constant(1) - y)])
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(2, 1000))
    inputs = client.encrypt(bits)
    budgets = {}
    for name, program in (("shallow", shallow), ("deep", deep)):
        before: list[bytes] = []
        (result,) = server.evaluate(program, inputs, 1000, keep=before.append)
        np.testing.assert_array_equal(client.decrypt([result], 1000)[0], bits[0])
        budgets[name] = (client.noise_budget(before[0]), client.noise_budget(result))
    assert budgets["shallow"][0] - budgets["deep"][0] >= 20
    assert abs(budgets["shallow"][1] - budgets["deep"][1]) <= 1


def test_slots_without_rows_hold_nothing(small_session):
    client, server = small_session
    builder = ProgramBuilder(1)
    program = builder.build([builder.input(0) + Linear.constant(7)])  # every slot would hold at least 7
    (result,) = server.evaluate(program, client.encrypt(np.ones((1, 300), dtype=np.uint8)), 300)
    everything = client.decrypt([result], client.ctx.params.slots)[0]
    assert (everything[:300] == 8).all() and (everything[300:] == 0).all()


def test_the_server_refuses_inputs_of_other_parameters(small_session):
    client, server = small_session
    other = BatchClient(batch_params(4))
    builder = ProgramBuilder(1)
    with pytest.raises(ValueError, match="not a batched upload of these parameters"):
        server.evaluate(builder.build([builder.input(0)]), other.encrypt(np.ones((1, 10), dtype=np.uint8)), 10)
    with pytest.raises(ValueError, match="reads 1 inputs"):
        server.evaluate(builder.build([builder.input(0)]), [], 10)


def test_the_scorer_predicts_as_disable_on_every_row():
    """A small model end to end (three features: one batch, partly filled)."""
    X, y = CANCER[0][:, :3], CANCER[1]
    est = DecisionTreeClassifier(n_bits=6, max_depth=3, random_state=0).fit(X, y)
    scorer = est.batch_scorer(progress=False)
    assert isinstance(scorer, BatchScorer)
    # 42 digit bits at 16,384 slots (5 primes) cost less to encrypt than 189 thermometer bits at 8,192 (3 primes)
    assert scorer.plan(len(X)).encoding is BatchEncoding.DIGITS
    np.testing.assert_array_equal(scorer.predict_proba(X), est.predict_proba(X, fhe="disable"))
    np.testing.assert_array_equal(scorer.predict(X), est.predict(X, fhe="disable"))
    assert scorer.bytes_up > 0 and scorer.bytes_down > 0


@pytest.mark.execute
def test_a_forest_batch_equals_disable_with_the_flooding_margin():
    """Every row of a 3-class forest (indicators, 13 features), and the noise budget the flooding needs."""
    est, (X, _) = FITTED["forest-3-classes"](), WINE
    leaves = matching_leaves(est)
    tp = tree_program(est.ensemble_, leaves.values, est.n_bits_, "thermometer")
    params = batch_params(tp.program.depth)
    client = BatchClient(params)
    server = BatchServer(params, client.relin_keys, client.public_key)
    codes = est.fhe_model_.codec.input_quantizer.quantize(X)
    before: list[bytes] = []
    outputs = server.evaluate(
        tp.program, client.encrypt(encode_codes(codes, tp.encoding, est.n_bits_)), len(X), keep=before.append
    )
    assert min(client.noise_budget(data) for data in before) >= FLOOD_MARGIN_BITS
    _, _, combine = leaves.output_steps(est.ensemble_, np.eye(len(leaves.outputs), dtype=np.int64))
    got = client.decrypt(outputs, len(X)).T @ combine
    np.testing.assert_array_equal(got, est.predict_integers(X, "disable") @ est.fhe_model_.codec.output_combine)


def test_tree_groups_add_up_to_the_whole_program():
    est, (X, _) = FITTED["xgboost"](), CANCER
    leaves = matching_leaves(est)
    whole = tree_program(est.ensemble_, leaves.values, est.n_bits_, "digits").program
    parts = part_programs(est.ensemble_, leaves.values, est.n_bits_, BatchEncoding.DIGITS, 2)
    groups = tree_groups(est.ensemble_, 2)
    assert len(parts) == 2 and sorted(t for g in groups for t in g) == list(range(len(est.ensemble_.trees)))
    bits = encode_codes(est.fhe_model_.codec.input_quantizer.quantize(X), BatchEncoding.DIGITS, est.n_bits_)
    summed = sum(part.evaluate(bits, PLAIN_MODULUS) for part in parts) % PLAIN_MODULUS
    np.testing.assert_array_equal(summed, whole.evaluate(bits, PLAIN_MODULUS))
    assert abs(parts[0].n_products - parts[1].n_products) <= whole.n_products // 2


def test_a_forest_on_two_processes_predicts_as_disable():
    """The trees in two groups, the second in a helper process: outputs summed encrypted, every row exact."""
    X, y = CANCER[0][:, :3], CANCER[1]
    est = RandomForestClassifier(n_bits=6, n_estimators=4, max_depth=2, random_state=0).fit(X, y)
    scorer = est.batch_scorer(encoding="thermometer", progress=False, workers=2)
    np.testing.assert_array_equal(scorer.decision_scores(X), est.decision_scores(X, "disable"))


def test_a_table_of_several_batches_streams_through_helper_processes():
    """Two batches: each evaluated whole in a helper process while the client encrypts the next; every row exact."""
    X, y = CANCER[0][:, :3], CANCER[1]
    est = DecisionTreeClassifier(n_bits=6, max_depth=3, random_state=0).fit(X, y)
    table = np.tile(X, (15, 1))[: 8192 + 100]
    scorer = est.batch_scorer(encoding="thermometer", progress=False, workers=2)
    np.testing.assert_array_equal(scorer.predict(table), est.predict(table, fhe="disable"))
    assert scorer.params.slots == 8192 and scorer.bytes_down > 0


def test_the_client_checks_results_before_decrypting(small_session):
    client, server = small_session
    builder = ProgramBuilder(1)
    program = builder.build([builder.input(0)])
    inputs = client.encrypt(np.ones((1, 50), dtype=np.uint8))
    (result,) = server.evaluate(program, inputs, 50)
    with pytest.raises(ValueError, match="answered 2 outputs where the model has 1"):
        client.decrypt([result, result], 50, expected=1)
    with pytest.raises(ValueError, match="larger than any result"):
        client.decrypt(inputs, 50)  # a fresh ciphertext (all primes) handed back as a result: refused unread
    with pytest.raises(ValueError, match="not a ciphertext"):
        client.decrypt([result[:-10]], 50)
    np.testing.assert_array_equal(client.decrypt([result], 50, expected=1)[0], np.ones(50))


def test_the_cost_model_counts_the_upload():
    """Breast cancer's 30 features: the thermometer uploads 1,890 ciphertexts a batch, the digits 420; for a large
    table the digits win on time and bytes, and the estimate grows with the bytes when the link is slower."""
    est = FITTED["xgboost"]()
    scorer = BatchScorer(est, progress=False)
    thermometer, digits = scorer.programs[BatchEncoding.THERMOMETER], scorer.programs[BatchEncoding.DIGITS]
    assert thermometer.program.n_inputs == 1890 and digits.program.n_inputs == 420
    assert upload_bytes(digits) < upload_bytes(thermometer)
    assert scorer.plan(10**6).encoding is BatchEncoding.DIGITS
    assert batch_seconds(thermometer, 10**6, link_bytes_per_s=1e6) - batch_seconds(thermometer, 10**6) > 1e3
