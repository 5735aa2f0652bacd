"""The ``infinet`` command: ``python -m infinet.cli`` runs it as the console script does.

The commands are implemented in ``infinet.app.cli``."""

from .app.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main()
