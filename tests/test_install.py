"""The light core install: a fresh virtual environment with `pip install infinet` (no extras) computes
kernels, imports no optional package, and names the extra a missing feature needs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys
import torch
import infinet as inf

x = torch.randn(4, 3, dtype=torch.float64)
k = inf.serial(inf.Dense(8, b_std=0.1), inf.Relu(), inf.Dense(1)).kernel(x)
assert k.ntk.shape == (4, 4) and bool(torch.isfinite(k.ntk).all())
assert inf.meanfield.__name__ == "infinet.meanfield" and inf.depth.__name__ == "infinet.depth"
optional = [m for m in ("sklearn", "matplotlib", "typer", "dask", "zarr", "mnist1d", "mlxtend") if m in sys.modules]
assert not optional, optional
for name, extra in (("estimators", "sklearn"), ("sklearn_kernels", "sklearn")):
    try:
        getattr(inf, name)
    except ImportError as e:
        assert f"pip install 'infinet[{extra}]'" in str(e), str(e)
    else:
        raise AssertionError(f"infinet.{name} imported without scikit-learn")
try:
    inf.datasets.load("digits")
except ImportError as e:
    assert "pip install 'infinet[sklearn]'" in str(e), str(e)
print("core ok")
"""


@pytest.mark.timeout(600)
def test_core_install_without_extras(tmp_path):
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
                              str(ROOT)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    for optional in ("scikit-learn", "matplotlib", "typer", "dask", "zarr", "mnist1d", "mlxtend"):
        assert f"{optional}==" not in frozen, f"{optional} came with the core install"
    run = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "core ok" in run.stdout, run.stderr[-3000:]
