"""Operations on sequences N x C x L that recurrent networks compose with: time reversal and
bidirectional networks.

Sequences use one layout across the library, channels first as ``torch.nn.Conv1d`` (N x C x L), so that
1-D convolutions, pooling over time, Dense (on the channels of each step), recurrent layers and
attention compose without transposes, and a sequence kernel is an image kernel with one spatial axis:
(N1, N2, L) same-time pairs or (N1, N2, L, L) every pair.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernel import Kernel
from .base import Context, Layer, Spec
from .combinators import FanInConcat, FanOut, parallel, serial
from .recurrent import Recurrent, sequence_shape


class Reverse(Layer):
    """Reverse the time axis of sequences N x C x L: y_t = x_(L-1-t). The kernel is re-indexed the same
    way on both members of each pair: K'(t, s) = K(L-1-t, L-1-s) (a permutation: no parameters, so the
    NTK transforms alike)."""

    masking = "own"

    def __repr__(self) -> str:
        return "Reverse()"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        sequence_shape(self, spec.shape)
        return spec

    def kernel_fn(self, k: Kernel) -> Kernel:
        sequence_shape(self, k.shape)
        axes = (-2, -1) if k.full else (-1,)

        def flip(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.flip(t, axes)

        var1 = flip(k.var1)
        masks = {} if k.mask1 is None else {"mask1": torch.flip(k.mask1, (-1,)), "mask2": torch.flip(k.mask2, (-1,))}
        return k.replace(nngp=flip(k.nngp), ntk=flip(k.ntk), var1=var1, var2=var1 if k.var2 is k.var1 else flip(k.var2),
                         **masks)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return ReverseModule()


class ReverseModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.flip(x, (-1,))


def bidirectional(forward: Recurrent, backward: Recurrent | None = None) -> Layer:
    """A bidirectional recurrent layer (Schuster and Paliwal 1997; Recurrent, GRU or LSTM): ``forward`` reads the sequence in
    order, ``backward`` (default: a layer configured like ``forward``, with its own weights) reads it
    reversed, and their hidden states are concatenated along the channels, the backward states put
    back in time order. With ``return_sequence=False`` each direction gives its final state (the
    backward one has then read the whole sequence from its end to its start), as ``torch.nn.RNN``
    does. Composed from :class:`Reverse`, ``parallel`` and ``FanInConcat``, so finite module and kernel
    follow from those."""
    from .gated import _Gated

    kinds = (Recurrent, _Gated)
    if not isinstance(forward, kinds) or not (backward is None or isinstance(backward, kinds)):
        raise TypeError("bidirectional takes recurrent layers (Recurrent, GRU, LSTM)")
    backward = forward if backward is None else backward
    if forward.return_sequence != backward.return_sequence:
        raise ValueError("bidirectional: both directions must agree on return_sequence")
    back = serial(Reverse(), backward, Reverse()) if backward.return_sequence else serial(Reverse(), backward)
    return serial(FanOut(2), parallel(forward, back), FanInConcat())
