"""Kernels larger than one machine's patience: tiles as Dask tasks into a resumable zarr store
(:mod:`~infinet.scale.store`), and solvers that stream the store. May import: :mod:`infinet.core`,
:mod:`infinet.engine` and :mod:`infinet.inference`.
"""

from .store import *  # noqa: F401,F403  (the public names of infinet.scale)
from .store import __all__  # noqa: F401
