"""scikit-learn estimators backed by infinite-width kernels.

``NNGPRegressor`` / ``NTKRegressor``: the mean (and standard deviation) over random initializations of
infinitely wide networks trained on the MSE loss for time ``t`` (default: to convergence), with only
the readout (NNGP) or all layers (NTK) training (Lee et al. 2019; :func:`infinet.predict.gradient_descent_mse_ensemble`). ``NNGPClassifier`` / ``NTKClassifier``: the same regression on
one-hot zero-mean targets (Lee et al. 2018); ``predict`` takes the arg-max of the mean, and
``predict_proba`` uses the probit approximation of the softmax of the Gaussian outputs
(MacKay 1992; Bishop 2006, eq. 4.153): p_c proportional to exp(mu_c / sqrt(1 + pi sigma^2 / 8)).
With ``method="svm"`` the classifiers are instead support vector machines on the precomputed NNGP or
NTK (Arora, Du, Li, Salakhutdinov, Wang and Yu 2020, "Harnessing the power of infinitely wide deep nets on
small-data tasks", Sec. 5: scikit-learn's ``SVC``, one-vs-one, with the soft-margin constant ``C``):
``predict`` and ``decision_function`` are the SVM's; it has no ``predict_proba``.

The contract is scikit-learn's: ``__init__`` stores parameters, ``fit`` returns self, fitted
attributes end in ``_``; inputs are arrays (N, features), or images (N, C, H, W) for convolutional
architectures.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..core.extras import require

require("sklearn", "infinet.estimators")
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..engine.layers.base import Layer
from .predict import gradient_descent_mse_ensemble
from .svm import fit_svc
from ..engine.spec import parse_spec

DEFAULT_ARCHITECTURE = "Dense(512, w_std=1.5, b_std=0.05) > Relu() > Dense(1, w_std=1.5, b_std=0.05)"


def _validate_X(estimator, X, reset: bool):
    from sklearn.utils.validation import validate_data

    X = validate_data(estimator, X, reset=reset, dtype=np.float64, allow_nd=True, ensure_min_samples=1)
    return X


class _KernelEstimator(BaseEstimator):
    kernel_name = "ntk"

    def __init__(self, architecture=DEFAULT_ARCHITECTURE, t: float = math.inf, diag_reg: float = 1e-4,
                 learning_rate: float = 1.0):
        self.architecture = architecture
        self.t = t
        self.diag_reg = diag_reg
        self.learning_rate = learning_rate

    def _net(self) -> Layer:
        if isinstance(self.architecture, Layer):
            return self.architecture
        if isinstance(self.architecture, str):
            return parse_spec(self.architecture)
        raise TypeError(f"architecture must be an infinet layer or a spec string, got {type(self.architecture).__name__}")

    def _check_params(self) -> None:
        if not (isinstance(self.t, numbers.Real) and not isinstance(self.t, bool) and self.t >= 0):
            raise ValueError(f"t must be a number >= 0 (inf allowed), got {self.t!r}")
        if not (isinstance(self.diag_reg, numbers.Real) and math.isfinite(self.diag_reg) and self.diag_reg >= 0):
            raise ValueError(f"diag_reg must be a finite number >= 0, got {self.diag_reg!r}")

    def _fit_targets(self, X, Y: np.ndarray):
        self._check_params()
        net = self._net()
        self.net_ = net
        self.X_train_ = torch.tensor(np.array(X, dtype=np.float64))
        self.y_train_ = torch.tensor(np.array(Y, dtype=np.float64))
        self.k_train_ = net.kernel(self.X_train_, get=self._kernels())
        return self

    def _kernels(self) -> tuple[str, ...]:
        """What the ensemble needs: the NNGP alone for NNGP estimators (gated layers have no NTK to ask for)."""
        return ("nngp",) if self.kernel_name == "nngp" else ("nngp", "ntk")

    def _posterior(self, X, return_cov: bool):
        check_is_fitted(self, "k_train_")
        X = torch.tensor(np.array(_validate_X(self, X, reset=False), dtype=np.float64))
        ks = self.net_.kernel(X, self.X_train_, get=self._kernels())
        kss = self.net_.kernel(X, get="nngp") if return_cov else None
        post = gradient_descent_mse_ensemble(self.k_train_, self.y_train_, float(self.t), ks, kss,
                                             kernel=self.kernel_name, compute_cov=return_cov, diag_reg=self.diag_reg,
                                             learning_rate=self.learning_rate)
        return post.mean.numpy(), None if post.cov is None else post.cov.numpy()


class _Regressor(RegressorMixin, _KernelEstimator):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Compute and keep the training kernel; y is (N,) or (N, outputs)."""
        from sklearn.utils.validation import validate_data

        X, y = validate_data(self, X, y, dtype=np.float64, allow_nd=True, multi_output=True, y_numeric=True)
        self._y_1d = y.ndim == 1
        return self._fit_targets(X, y.reshape(len(y), -1))

    def predict(self, X, return_std: bool = False):
        """Ensemble mean at time t; with ``return_std``, also the ensemble standard deviation (per point)."""
        mean, cov = self._posterior(X, return_std)
        mean = mean[:, 0] if self._y_1d else mean
        if not return_std:
            return mean
        return mean, np.sqrt(np.clip(np.diagonal(cov), 0.0, None))


METHODS = ("regression", "svm")


class _Classifier(ClassifierMixin, _KernelEstimator):
    def __init__(self, architecture=DEFAULT_ARCHITECTURE, t: float = math.inf, diag_reg: float = 1e-4,
                 learning_rate: float = 1.0, method: str = "regression", C: float = 1.0):
        super().__init__(architecture, t, diag_reg, learning_rate)
        self.method = method
        self.C = C

    def _check_params(self) -> None:
        super()._check_params()
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (isinstance(self.C, numbers.Real) and not isinstance(self.C, bool) and math.isfinite(self.C)
                and self.C > 0):
            raise ValueError(f"C must be a finite number > 0, got {self.C!r}")

    def fit(self, X, y):
        """``method="regression"``: regress one-hot zero-mean targets (1 - 1/C for the class, -1/C elsewhere);
        ``method="svm"``: fit an SVM with soft-margin constant ``C`` on the training kernel."""
        from sklearn.utils.validation import validate_data

        X, y = validate_data(self, X, y, dtype=np.float64, allow_nd=True)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y, got only one class: "
                             f"{self.classes_.tolist()}")
        codes = self._encoder.transform(y)
        if self.method == "svm":
            self._check_params()
            self.net_ = self._net()
            self.X_train_ = torch.tensor(np.array(X, dtype=np.float64))
            self.k_train_ = self.net_.kernel(self.X_train_, get=self.kernel_name)
            self.svm_ = fit_svc(_matrix(self.k_train_, self.kernel_name), codes, self.C)
            return self
        c = max(len(self.classes_), 2)
        targets = np.full((len(codes), c), -1.0 / c)
        targets[np.arange(len(codes)), codes] += 1.0
        return self._fit_targets(X, targets)

    def _test_kernel(self, X) -> np.ndarray:
        check_is_fitted(self, "svm_")
        X = torch.tensor(np.array(_validate_X(self, X, reset=False), dtype=np.float64))
        return _matrix(self.net_.kernel(X, self.X_train_, get=self.kernel_name), self.kernel_name)

    def decision_function(self, X):
        if self.method == "svm":
            kernel = self._test_kernel(X)  # checks fitted first
            return self.svm_.decision_function(kernel)
        mean, _ = self._posterior(X, False)
        return mean[:, 1] - mean[:, 0] if len(self.classes_) == 2 else mean

    def predict(self, X):
        if self.method == "svm":
            kernel = self._test_kernel(X)
            return self.classes_[self.svm_.predict(kernel)]
        mean, _ = self._posterior(X, False)
        return self.classes_[np.argmax(mean[:, : len(self.classes_)], axis=1)]

    def _has_proba(self) -> bool:
        return self.method != "svm"

    @available_if(_has_proba)
    def predict_proba(self, X):
        """Probit approximation of E[softmax(f)] for Gaussian outputs f ~ N(mean, var) per class."""
        mean, cov = self._posterior(X, True)
        var = np.clip(np.diagonal(cov), 0.0, None)[:, None]
        logits = mean[:, : len(self.classes_)] / np.sqrt(1.0 + math.pi * var / 8.0)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def _matrix(k, name: str) -> np.ndarray:
    """The NNGP or NTK of a Kernel as a float64 array, refusing NaN or inf (an SVM would fit them silently)."""
    values = getattr(k, name).detach().cpu().numpy()
    if not np.all(np.isfinite(values)):
        raise ValueError(f"the {name.upper()} has NaN or inf entries; the SVM cannot use it")
    return values


class NNGPRegressor(_Regressor):
    """Infinitely wide networks whose readout is trained (the NNGP posterior at t = inf)."""

    kernel_name = "nngp"


class NTKRegressor(_Regressor):
    """Infinitely wide networks with all layers trained by gradient flow (the NTK ensemble)."""

    kernel_name = "ntk"


class NNGPClassifier(_Classifier):
    """Classification by NNGP regression on one-hot zero-mean targets."""

    kernel_name = "nngp"


class NTKClassifier(_Classifier):
    """Classification by NTK regression on one-hot zero-mean targets."""

    kernel_name = "ntk"


__all__ = ["NNGPClassifier", "NNGPRegressor", "NTKClassifier", "NTKRegressor"]
