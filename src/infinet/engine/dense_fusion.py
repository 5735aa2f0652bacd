"""A fully-connected layer and the closed-form activation after it, in one compiled pass over a tile.

On vectors a tile of a fully-connected network is an (N1, N2) matrix per kernel, and each Dense layer is three
passes over it (K' = w_std^2 K + b_std^2, Theta' = K' + w_std^2 Theta; Lee et al. 2018, eq. 4; Jacot et al.
2018, Thm. 1) and a diagonal copy, before the activation's own pass (:mod:`infinet.engine.native_pairs`). Here
the Dense layer's affine map runs inside the activation's loop (``affine`` of
:func:`infinet.engine.native_pairs.step`), row by row while the row is in cache: one pass reads K and Theta and
writes the activation's outputs.

The self-covariances are the layers' own: :meth:`~infinet.Dense.variance` and the activation's
:meth:`~infinet.engine.layers.activations.Activation.diagonal`; the diagonal of a symmetric tile is pinned to
them once, after the pair.

It applies to: a :class:`~infinet.Dense` itself (not a subclass) with float hyperparameters, followed by an
activation whose step the compiled loop computes (ReLU family, Erf, GELU: ``native_pairs()``) and whose kernel
transform is :class:`~infinet.engine.layers.activations.Activation`'s, on float64 CPU kernels of vectors without
masks, laws, sampling or a variance trace, outside autograd. Everything else, and any tile the loop declines
(see :mod:`infinet.engine.native_pairs`), takes the two layers' own kernel transforms, with the same formulas.
"""

from __future__ import annotations

from torch import Tensor

from . import native_pairs
from .kernel import Kernel

#: False: every Dense and activation applies its own kernel transform (for comparisons)
ENABLED = True


def applies(dense, act, k) -> bool:
    """Whether :func:`dense_activation` may compute ``act`` after ``dense`` on ``k`` (see the module docstring)."""
    from .layers.activations import Activation  # the layers import this module's callers

    if not (ENABLED and type(dense).__dict__.get("fused_affine", False) and isinstance(k, Kernel)):
        return False
    if isinstance(dense.w_std, Tensor) or isinstance(dense.b_std, Tensor):
        return False
    if not isinstance(act, Activation) or type(act).kernel_fn is not Activation.kernel_fn:
        return False
    if k.full or k.spatial or k.nngp is None or k.law is not None or k.trace is not None:
        return False
    return k.sampling is None and k.mask1 is None and act.native_pairs() is not None


def dense_activation(dense, act, k: Kernel) -> Kernel | None:
    """The kernel after ``dense`` and then ``act`` (what the two layers' ``kernel_fn`` give, the diagonal pinned),
    or None where the compiled loop declines the tile (the caller then applies the layers one by one). Requires
    :func:`applies`."""
    var1, var2 = k.map_variances(dense.variance)
    kind, params = act.native_pairs()
    out = native_pairs.step(kind, params, k.nngp, k.ntk, var1.unsqueeze(1), var2.unsqueeze(0),
                            affine=dense.affine_constants(k.shape[0]))
    if out is None:
        return None
    nngp, ntk = out
    new1 = act.diagonal(var1)
    new2 = new1 if var2 is var1 else act.diagonal(var2)
    fused = k.replace(nngp=nngp, ntk=ntk, var1=new1, var2=new2, shape=(dense.out_features,))
    return fused.pin_diagonal(inplace=True)
