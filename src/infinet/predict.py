"""Predictions of infinitely wide networks: GP posteriors, gradient-descent training dynamics and
hyperparameter fitting.

The public path of the names implemented in ``infinet.inference.predict`` and of ``fit_hyperparameters``
(``infinet.inference.fitting``)."""

from .inference.fitting import FitResult, fit_hyperparameters
from .inference.predict import *  # noqa: F401,F403
from .inference.predict import __all__ as _implemented

__all__ = _implemented + ["FitResult", "fit_hyperparameters"]
