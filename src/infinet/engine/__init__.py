"""The kernel engine: one architecture description, its finite network and its exact kernels.

:mod:`~infinet.engine.kernel` (the ``Kernel`` data), :mod:`~infinet.engine.gaussian` (Gaussian
expectations of activations, the one home of that mathematics), :mod:`~infinet.engine.layers` (each
layer's finite forward pass and kernel transform), :mod:`~infinet.engine.tiling` (the tile engine that
every kernel computation goes through), :mod:`~infinet.engine.sampling` (layers without closed forms),
:mod:`~infinet.engine.spec` and :mod:`~infinet.engine.architectures` (descriptions as text and
ready-made networks), :mod:`~infinet.engine.from_torch` (descriptions of users' own modules).
May import: :mod:`infinet.core` only.
"""
