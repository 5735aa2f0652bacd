"""The documentation: its tutorial runs, and the site builds from the docstrings without a warning (a broken
cross-reference in any docstring fails this test, as it fails `make docs`)."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_tutorial_runs(capsys):
    runpy.run_path(str(DOCS / "tutorial.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "NTK of the first two training points" in out and "from_torch: serial(" in out


@pytest.mark.timeout(600)
def test_documentation_builds_without_warnings(tmp_path):
    subprocess.run([sys.executable, str(DOCS / "generate.py")], check=True)
    build = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", str(DOCS),
                            str(tmp_path / "html")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    api = (tmp_path / "html" / "api.html").read_text()
    gallery = (tmp_path / "html" / "gallery.html").read_text()
    from infinet.experiments import registry

    for name in registry():  # every experiment has its stored quick report (docs/make_gallery.py)
        assert (DOCS / "gallery" / f"{name}.json").exists() and (DOCS / "gallery" / f"{name}.png").exists(), name
        assert f'id="{name}"' in gallery
    assert gallery.count("<img") == len(registry())
    for name in ("infinet.engine.layers.graph.Aggregate", "infinet.engine.from_torch.from_torch", "infinet.predict.gp_inference",
                 "infinet.meanfield.critical_w_std", "infinet.inference.sklearn_kernels.NNGPKernel"):
        assert f'id="{name}"' in api, name
