"""Foundation: what every layer of infinet may use and nothing of infinet's own.

Optional dependencies named by the extra that installs them (:mod:`~infinet.core.extras`), renamed
arguments (:mod:`~infinet.core.deprecation`), the CPU allocator tuning of the tile engine
(``infinet.core.allocator``), argument checks (:mod:`~infinet.core.checks`) and the statistics of repeated
measurements (:mod:`~infinet.core.stats`). May import: torch, numpy and the standard library only.
"""

__version__ = "0.1.0"
