"""Inference with kernels: linear algebra (:mod:`~infinet.inference.solve`), GP posteriors and
gradient-descent training dynamics (:mod:`~infinet.inference.predict`), hyperparameter fitting
(:mod:`~infinet.inference.fitting`), scikit-learn estimators and kernels, GPyTorch kernels.
May import: :mod:`infinet.core` and :mod:`infinet.engine`.
"""
