"""Finite vs infinite width on MNIST: the demo's study (trained finite networks of growing width, as
trained and centered, with error bars over seeds, beside the NNGP posterior and the NTK prediction at
the same training time and at t = inf, and the kernel error against width) on the 5,000-image MNIST
sample instead of digits. Every other data set works too (``--param dataset=...``).
"""

from __future__ import annotations


from . import Experiment, Param
from .demo import EXPERIMENT as DEMO

EXPERIMENT = Experiment(
    name="finite-vs-infinite",
    description="Test accuracy / MSE of trained finite networks vs width beside NNGP and NTK, with error bars, on MNIST",
    params={
        **DEMO.params,
        "dataset": Param("mnist5k", "classification data set (see `infinet data`)"),
        "n_train": Param(1000, "training examples", quick=300),
        "n_test": Param(1000, "test examples", quick=300),
        "widths": Param((64, 256, 1024, 4096), "hidden widths of the finite networks", quick=(32, 128, 512)),
        "mc_points": Param(50, "inputs for the Monte Carlo kernel error", quick=20),
    },
    run=DEMO.run,
    details=__doc__,
)

