"""The application shell: the command line (``infinet.app.cli``), the experiments
(``infinet.app.experiments``), the one report writer (:mod:`~infinet.app.report`) and the offline
data sets (:mod:`~infinet.app.datasets`). Nothing of infinet imports it but the package's public façade.
May import: :mod:`infinet.core`, :mod:`infinet.engine`, :mod:`infinet.inference`, :mod:`infinet.finite`,
:mod:`infinet.theory` and :mod:`infinet.scale`.
"""
