"""What every encrypted tree estimator shares: fitting on codes, conversion, lowering, compilation, running.

The estimators themselves (:mod:`veilml.models.trees.estimators`) add their library's class and
signature; :mod:`.tasks` adds what classifiers and regressors do differently.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from veilml.compiler import Configuration
from veilml.models.trees.auto_bits import choose_bits
from veilml.models.trees.convert.supported import to_ensemble
from veilml.models.trees.estimators.params import PARAMETER_CONSTRAINTS, VEILML_PARAMS
from veilml.models.trees.families import Family, library_class
from veilml.models.trees.lowering.ensemble import LoweredEnsemble, lower_candidates, worth_compiling
from veilml.models.trees.persistence import PicklableFHE
from veilml.models.trees.report import FHEReport, fhe_report
from veilml.quantization import UniformQuantizer, one_range_warning
from veilml.runtime import FHEModel
from veilml.runtime.codec import ClientCodec, OutputSpec
from veilml.runtime.data_checks import check_sample_weight, check_X, check_y
from veilml.runtime.progress import progress_bar, show_progress, timed_step

__all__ = ["EncryptedEnsemble"]

logger = logging.getLogger("veilml.trees")


class EncryptedEnsemble(PicklableFHE, BaseEstimator):
    """What every family shares: fitting on codes, conversion, lowering, compilation, running."""

    _family: ClassVar[Family | None] = None
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = PARAMETER_CONSTRAINTS

    # ------------------------------------------------------------------------------ parameters
    @classmethod
    def _library_param_names(cls) -> list[str]:
        return [name for name in cls._get_param_names() if name not in VEILML_PARAMS]

    def _library_params(self) -> dict[str, Any]:
        names = [*self._library_param_names(), *getattr(self, "_extra_params", ())]
        return {name: getattr(self, name) for name in names}

    # XGBoost and LightGBM take further keyword arguments (``verbose=-1``, ``tree_method=...``) that
    # their get_params reports once set; so do these estimators, for those two libraries only.
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep)
        params.update({name: getattr(self, name) for name in getattr(self, "_extra_params", ())})
        return params

    def set_params(self, **params: Any) -> EncryptedEnsemble:
        known = self.get_params(deep=False)
        extra = {k: v for k, v in params.items() if k not in known and "__" not in k}
        self._set_extra_params(extra)
        return super().set_params(**{k: v for k, v in params.items() if k not in extra})

    def _set_extra_params(self, extra: dict[str, Any]) -> None:
        """Store keyword arguments beyond the signature's, where the library takes them (its ``**kwargs``)."""
        if not extra:
            return
        init = inspect.signature(type(self).__init__)  # the generated classes mirror their library's
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in init.parameters.values()):
            raise TypeError(f"{type(self).__name__} got an unexpected keyword argument {next(iter(extra))!r}")
        known = getattr(self, "_extra_params", ())
        self._extra_params = (*known, *(k for k in extra if k not in known))
        for name, value in extra.items():
            setattr(self, name, value)

    def _new_library_model(self) -> Any:
        assert self._family is not None
        return library_class(self._family)(**self._library_params())

    # ----------------------------------------------------------------------------------- fitting
    @one_range_warning
    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, progress: bool | None = None) -> EncryptedEnsemble:
        """Quantize ``X`` per feature and train the library's model so that it reads the integer codes.

        ``train_on="codes"`` (default) trains the library's model on the codes themselves, as a
        tree learner on binned data. ``train_on="float"`` trains it on the float features, then
        moves each threshold to one of the two code boundaries around it, the one that sends fewer
        rows of ``X`` the other way: the encrypted model is the float model with its thresholds
        rounded, which tracks the float model's accuracy more closely at a given ``n_bits`` (a
        model trained on codes is another model, not the float one rounded).

        With ``n_bits="auto"`` the input and leaf precisions are chosen first, cross-validated on
        ``X``: the cheapest circuit (concrete's complexity, estimated without compiling) among those
        whose ``fhe="disable"`` metric stays within ``auto_bits.TOLERANCE`` of the best tried
        (``train_on="codes"``), or whose agreement with the float model's predictions does within
        ``auto_bits.AGREEMENT_TOLERANCE`` (``train_on="float"``). They are in ``n_bits_`` and
        ``leaf_bits_``, the metric and cost of every candidate tried in ``auto_bits_report_``.
        ``progress``: a bar over that search (None: on a terminal or in a notebook).

        A frame with string column names sets ``feature_names_in_``: every later call that takes
        ``X`` (and the client bundle) then refuses other, missing or reordered columns, as
        scikit-learn does.
        """
        self._validate_params()
        if self._family is None:
            raise NotImplementedError(
                f"{type(self).__name__} wraps an imported model and cannot be refit: train the model in its "
                "library, export it again and import it with veilml.from_onnx"
            )
        self._check_column_names(X, reset=True)
        X = check_X(X, None, type(self).__name__)
        y = self._check_targets(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}: pass one target per row")
        sample_weight = check_sample_weight(sample_weight, len(X))
        if self.n_bits == "auto":
            n_bits, leaf_bits, self.auto_bits_report_ = choose_bits(self, X, y, sample_weight, progress)
        else:
            n_bits, leaf_bits = self.n_bits, self.leaf_bits
        quantizer = UniformQuantizer.calibrate(X, n_bits, axis=1)
        model = self._new_library_model()
        fit_params = {} if sample_weight is None else {"sample_weight": sample_weight}
        if self.train_on == "float":
            model.fit(X, self._library_targets(y), **fit_params)
            self._set_fitted(model, quantizer, n_bits, leaf_bits, thresholds_are_codes=False, warn_on_clip=True, X=X)
        else:
            model.fit(quantizer.quantize(X, warn=False), self._library_targets(y), **fit_params)
            self._set_fitted(model, quantizer, n_bits, leaf_bits, thresholds_are_codes=True, warn_on_clip=True)
        if hasattr(model, "n_iter_"):  # boosting with max_iter: scikit-learn's convention
            self.n_iter_ = model.n_iter_
        return self

    def _check_targets(self, y: Any) -> np.ndarray:
        return check_y(y)

    def _library_targets(self, y: np.ndarray) -> np.ndarray:
        return y

    @classmethod
    def from_fitted(cls, model: Any, X: Any = None, n_bits: int = 6, **params: Any) -> EncryptedEnsemble:
        """Wrap a model already trained in float by its library.

        Inputs are quantized on the min/max of ``X`` when given. Without data, each feature gets
        a uniform grid whose outermost code boundaries fall on the model's outermost thresholds on
        that feature, and inner thresholds on the nearest boundary (within half a code): rows
        near an inner threshold can go the other way, so check the agreement on your data and
        raise ``n_bits`` if needed. Values beyond the outermost thresholds are clipped, which
        changes no comparison. Such a grid is derived from the thresholds: whoever holds the
        client-side quantizer can read their range.

        The model's ``feature_names_in_`` (set by its library when it was fitted on a frame) is
        kept: ``X``, later calls and the client bundle are checked against it.
        """
        if cls._family is None:
            raise TypeError(f"{cls.__name__} is made by veilml.from_onnx, not from_fitted")
        expected = library_class(cls._family)
        if not isinstance(model, expected):
            family = cls._family
            raise TypeError(
                f"{cls.__name__}.from_fitted takes a fitted {family.module}.{family.name}, got {type(model).__name__}"
            )
        if n_bits == "auto":
            raise ValueError("n_bits='auto' chooses bits on training data: use fit(X, y), or give from_fitted an integer n_bits")
        ensemble = to_ensemble(model)  # refuses unfitted and unsupported models first
        names = set(cls._library_param_names())
        library_params = {k: v for k, v in model.get_params(deep=False).items() if k in names}
        estimator = cls(n_bits=n_bits, **{**library_params, **params})
        estimator._validate_params()
        names = getattr(model, "feature_names_in_", None)  # a property that raises on some libraries
        if names is not None and len(names) == ensemble.n_features and all(isinstance(n, str) for n in names):
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        estimator._set_fitted_float(model, ensemble, X, n_bits, f"the {type(model).__name__}")
        return estimator

    def _set_fitted_float(self, model: Any, ensemble: Any, X: Any, n_bits: int, who: str) -> None:
        """Fitted state for an ensemble trained in float: the input grid from ``X`` or from its thresholds."""
        if X is not None:
            self._check_column_names(X, reset=False)
            X = check_X(X, ensemble.n_features, who)
            quantizer = UniformQuantizer.calibrate(X, n_bits, axis=1)
        else:
            quantizer = UniformQuantizer.from_cut_points(ensemble.thresholds_by_feature(), n_bits)
        self._set_fitted(
            model,
            quantizer,
            n_bits,
            self.leaf_bits,
            thresholds_are_codes=False,
            warn_on_clip=X is not None,
            ensemble=ensemble,
            X=X,
        )

    def _set_fitted(
        self,
        model: Any,
        quantizer: UniformQuantizer,
        n_bits: int,
        leaf_bits: int | None,
        *,
        thresholds_are_codes: bool,
        warn_on_clip: bool,
        ensemble: Any = None,
        X: np.ndarray | None = None,
    ) -> None:
        ensemble = to_ensemble(model) if ensemble is None else ensemble
        if not thresholds_are_codes:
            ensemble = ensemble.to_codes(quantizer, X)
        candidates = lower_candidates(ensemble, n_bits, leaf_bits, self.encoding, leaf_lookups=self.leaf_lookups)
        self.model_ = model
        self.input_quantizer_ = quantizer
        self.ensemble_ = ensemble
        self.n_bits_, self.leaf_bits_ = n_bits, candidates[0].leaf_bits
        self.n_features_in_ = ensemble.n_features
        self._set_outputs(model, ensemble)
        output = self._output_spec(ensemble)
        names = getattr(self, "feature_names_in_", None)
        names = None if names is None else tuple(str(name) for name in names)
        # every candidate computes the same scores; compile() keeps the one concrete finds cheapest
        self._candidates = [(self._fhe_model(low, quantizer, output, warn_on_clip, names), low.stages) for low in candidates]
        self._low_error_only = [low.low_error_only for low in candidates]
        self.fhe_model_, self.lowering_ = self._candidates[0]

    @staticmethod
    def _fhe_model(
        lowered: LoweredEnsemble,
        quantizer: UniformQuantizer,
        output: OutputSpec,
        warn_on_clip: bool,
        feature_names: tuple[str, ...] | None = None,
    ) -> FHEModel:
        codec = ClientCodec(
            quantizer,
            lowered.encoding,
            lowered.output_quantizer,
            output_bias=lowered.output_bias,
            output_combine=lowered.output_combine,
            output=output,
            warn_on_clip=warn_on_clip,
            feature_names=feature_names,  # the client bundle checks columns as the estimator does
        )
        return FHEModel(codec, lowered.graph)

    def _set_outputs(self, model: Any, ensemble: Any) -> None:
        """Fitted attributes that depend on the task (``classes_``)."""

    def _output_spec(self, ensemble: Any) -> OutputSpec:
        """What the client does with the decrypted scores (see :class:`~veilml.runtime.codec.OutputSpec`)."""
        return OutputSpec("regression", ensemble.post_transform)

    # ----------------------------------------------------------------------------------- FHE
    def _check_column_names(self, X: Any, *, reset: bool) -> None:
        """Record (``reset``, in fit) or check the column names of ``X``: scikit-learn's rules and messages.

        Names only (``skip_check_array``; ``ensure_2d=False`` also skips scikit-learn's feature
        count): :func:`~veilml.runtime.data_checks.check_X` checks shape and values with veilml's messages.
        """
        validate_data(self, X, reset=reset, skip_check_array=True, ensure_2d=False)

    def _fitted_input(self, X: Any) -> np.ndarray:
        """``X`` checked against the fitted model (NotFittedError first, then names, shape and values)."""
        check_is_fitted(self)
        self._check_column_names(X, reset=False)
        return check_X(X, self.n_features_in_, type(self).__name__)

    @one_range_warning
    def compile(
        self, X: Any, configuration: Configuration | None = None, *, progress: bool | None = None, **options: Any
    ) -> EncryptedEnsemble:
        """Compile the FHE circuit with an inputset made of the rows of ``X``.

        ``options`` override fields of ``configuration`` (for example ``p_error=...``,
        ``device="cuda"``). The circuit's cost figures are then in ``report_``. When the lowering
        left more than one leaf stage worth trying (``leaf_lookups="auto"``), each is compiled and
        the one with the lowest complexity is kept (they compute the same scores); those worth trying only under
        a tight error budget (:data:`~veilml.models.trees.lowering.ensemble.LOW_ERROR`) only then. ``progress``: a bar
        over them (None: on a terminal or in a notebook); the time is logged (``veilml.trees``, INFO).
        """
        X = self._fitted_input(X)
        configuration = (configuration or Configuration()).fork(**options)
        candidates = getattr(self, "_candidates", [(self.fhe_model_, self.lowering_)])
        low_error_only = getattr(self, "_low_error_only", [False] * len(candidates))
        tried = [i for i in range(len(candidates)) if worth_compiling(low_error_only[i], configuration)] or [0]
        with timed_step("FHE compile", logger, False) as step:
            bar = progress_bar(tried, progress=progress, desc="FHE compile", unit="circuit", leave=False)
            reports = {i: candidates[i][0].compile(X, configuration).report for i in bar}
            best = min(tried, key=lambda i: reports[i].complexity)
            step["note"] = f"{len(tried)} circuit(s), kept complexity {reports[best].complexity:.3g}"
        for i, (model, _) in enumerate(candidates):
            if i != best:
                model.compiled = None  # free the circuit not kept
        self.fhe_model_, self.lowering_ = candidates[best]
        self.report_ = reports[best]
        return self

    @one_range_warning
    def decision_scores(
        self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto", progress: bool | None = None
    ) -> np.ndarray:
        """Raw model outputs after decryption, before any post-transform: (n_samples, n_outputs).

        Class probabilities for forests and single trees, margins (log-odds) for boosting, values
        for regressors: one value per class or output, whatever the number of trees.

        ``fhe_path`` (with ``fhe="execute"``): ``"auto"`` scores a table of ``BATCH_MIN_ROWS`` (128) rows or more on
        the batched path (leveled BFV, thousands of rows per ciphertext, no ``compile`` needed) and fewer rows on the
        TFHE path (compiled circuit, one row at a time); ``"batch"`` or ``"tfhe"`` force one. Both equal
        ``fhe="disable"`` on every row. ``progress`` (``execute``): a bar over rows or batches, True, False or None
        (on a terminal or in a notebook).
        """
        from veilml.models.trees.batch import use_batch

        X = self._fitted_input(X)  # before touching fhe_model_: NotFittedError comes first
        if use_batch(self, len(X), fhe, fhe_path):
            scorer = self._batch_scorer()
            scorer.progress = show_progress(progress)
            return self.fhe_model_.codec.scores(scorer.checked_integers(X))
        return self.fhe_model_.run(X, fhe, progress=progress)

    @one_range_warning
    def predict_integers(
        self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto", progress: bool | None = None
    ) -> np.ndarray:
        """The raw integers the TFHE circuit returns: the exact oracle between FHE modes.

        The batched path has no circuit (it sums the scores themselves), so ``"auto"`` stays on the TFHE path here
        and ``fhe_path="batch"`` is refused: use ``decision_scores(X, "execute", fhe_path="batch")``.
        """
        from veilml.models.trees.batch import FHE_PATHS

        if fhe_path not in FHE_PATHS or fhe_path == "batch":
            raise ValueError(
                f"predict_integers returns the TFHE circuit's integers, fhe_path must be 'auto' or 'tfhe', got "
                f"{fhe_path!r}; the batched path's scores are decision_scores(X, 'execute', fhe_path='batch')"
            )
        X = self._fitted_input(X)
        return self.fhe_model_.run_integers(X, fhe, progress=progress)

    def _batch_scorer(self) -> Any:
        """The batched path's scorer of the fitted model, made once (again after ``fit`` or ``compile`` changes it)."""
        scorer = getattr(self, "_batch", None)
        if scorer is None or scorer.estimator is not self or scorer.client.codec is not self.fhe_model_.codec:
            scorer = self._batch = self.batch_scorer()
        return scorer

    def batch_scorer(self, encoding: str = "auto", progress: bool | None = None, workers: int | None = None) -> Any:
        """A :class:`~veilml.models.trees.batch.BatchScorer` of this fitted model: whole tables scored on the batched
        (leveled BFV) path, one row per slot, equal to ``fhe="disable"`` on every row (no ``compile`` needed).
        ``predict(X, fhe="execute")`` uses one on tables of 128 rows or more (see ``decision_scores``)."""
        from veilml.models.trees.batch import BatchScorer

        return BatchScorer(self, encoding, progress, workers)

    def fhe_report(self) -> FHEReport:
        """The lowering's strategy per stage, PBS by precision, complexity and key sizes (once
        compiled), bytes up and down per row, and the estimated split of a row's time between
        client and server (:mod:`veilml.compiler.cost`); ``print`` it for a summary."""
        check_is_fitted(self)
        return fhe_report(self.fhe_model_.graph, self.lowering_, getattr(self, "report_", None))

    def save(self, directory: Any, signing_key: Any = None, *, preprocessing: Any = None) -> Any:
        """Write the compiled model as a deployment bundle: ``client/`` for data owners
        (:class:`veilml.serving.ModelClient`), ``server/`` for the server
        (:class:`veilml.serving.ModelServer`, ``veilml serve``: the TFHE circuit, and the batched path's programs
        in ``batch.json``); returns the directory.

        ``signing_key`` (an Ed25519 private key, its PEM bytes or a 0600 PEM file, see ``veilml sign --new-key``)
        signs both manifests, so that servers and clients given the public key can check who made the bundle.
        ``preprocessing``: a :class:`~veilml.runtime.preprocessing.FeaturePreprocessing` that clients apply to raw rows
        first (:func:`veilml.save_pipeline` passes a Pipeline's scalers). :func:`veilml.load` reads the bundle back.
        """
        from veilml.models.trees.batch import batch_server
        from veilml.serving.bundle import save_bundle

        check_is_fitted(self)
        try:
            batch = batch_server(self).to_json()  # the server side also answers whole tables (the batched path)
        except ValueError:  # leaves the batched path does not reproduce, or a program too deep for it
            batch = None
        return save_bundle(self.fhe_model_, directory, signing_key=signing_key, batch=batch, preprocessing=preprocessing)
