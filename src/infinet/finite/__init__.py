"""Finite networks measured against their limits: empirical NTKs (:mod:`~infinet.finite.empirical`),
linearized networks (:mod:`~infinet.finite.linearization`), Monte Carlo kernels
(:mod:`~infinet.finite.montecarlo`) and the training loop (:mod:`~infinet.finite.training`).
May import: :mod:`infinet.core` and :mod:`infinet.engine`.
"""
