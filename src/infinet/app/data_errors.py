"""The error of data sets that cannot be found, read or split (:mod:`infinet.app.datasets`, :mod:`infinet.app.uci`)."""


class DatasetError(ValueError):
    """A data set that cannot be found, read or split as asked; the message names the path or value."""


__all__ = ["DatasetError"]
