"""Infinite depth at finite width: residual networks as diffusions.

The public path of the names implemented in ``infinet.theory.depth``."""

from .theory.depth import *  # noqa: F401,F403
from .theory.depth import __all__  # noqa: F401
