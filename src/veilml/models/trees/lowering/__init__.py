"""TreeEnsemble -> the integer IR: comparison codes, leaf stages (indicators, pairs, subtrees) and the ensemble sum.

- :mod:`.ensemble`: :func:`lower_ensemble` / :func:`lower_candidates`, :class:`LoweredEnsemble`
- :mod:`.stages`: the comparison stage of each input encoding
- :mod:`.leaf_values`: threshold codes, leaf tests, leaf quantization
- :mod:`.paired`: the value leaf stages' tables (pairs and subtrees)
"""
