"""Theory of deep networks from the same Gaussian expectations: signal propagation and the order-chaos
transition (:mod:`~infinet.theory.meanfield`), residual networks at infinite depth
(:mod:`~infinet.theory.depth`), Mercer spectra of kernels on spheres (:mod:`~infinet.theory.spectrum`).
May import: :mod:`infinet.core`, :mod:`infinet.engine` and :mod:`infinet.finite` (simulations of the
finite networks the theory describes).
"""
