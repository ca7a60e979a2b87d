"""TreeEnsemble -> the integer IR: comparison codes, leaf stages (indicators, pairs, subtrees) and the ensemble sum.

- :mod:`.ensemble`: :func:`lower_ensemble` / :func:`lower_candidates`, :class:`LoweredEnsemble`, :func:`build`
- :mod:`.options`: the ``encoding=`` and ``leaf_lookups=`` choices as enums, the candidate encodings
- :mod:`.walk`: the one walk over the trees' paths that every leaf stage shares (groups, comparisons, coefficients)
- :mod:`.tables`: what every leaf stage's tables hold; :mod:`.indicators` and :mod:`.values` build them
  (one lookup per leaf; per pair of sibling leaves or per subtree)
- :mod:`.stages`: the graph's stages, with the comparison strategy of each input encoding kind
- :mod:`.leaf_values`: threshold codes, leaf tests, leaf quantization
"""
