"""Mean-field theory of signal propagation: the order-chaos transition and depth scales.

The public path of the names implemented in ``infinet.theory.meanfield``."""

from .theory.meanfield import *  # noqa: F401,F403
from .theory.meanfield import __all__  # noqa: F401
