"""One front end for tree models: source models -> :class:`~veilml.models.trees.ensemble.TreeEnsemble`.

- :mod:`.supported`: the explicit converter table (:data:`CONVERTERS`, :func:`to_ensemble`)
- :mod:`.treelite`: scikit-learn ensembles, XGBoost and LightGBM through treelite's field accessors
- :mod:`.sklearn`: scikit-learn's single trees, read directly
- :mod:`.onnx`: ONNX-ML ``TreeEnsemble*`` operators; :mod:`.imported`: estimators around imported models
- :mod:`.arrays`: what the converters share: ``make_tree``, ``float32_tests``, :class:`UnsupportedModelError`
"""
