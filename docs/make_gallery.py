"""Run every experiment's quick variant and keep, for the documentation's gallery, its summary (computed from
its numbers) and its first figure, in docs/gallery/. Run by hand (about half an hour on 2 cores), like the
reference data of the tests: the documentation build reads the stored gallery and runs nothing.

    .venv/bin/python docs/make_gallery.py [NAME ...]
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from infinet.experiments import registry, run_experiment

GALLERY = Path(__file__).parent / "gallery"
#: parameters an experiment's quick variant needs here: the UCI collection of the development machines
PARAMS = {"uci": {"data": str(Path(__file__).resolve().parents[2] / "shared" / "data" / "uci")}}


def main(names) -> None:
    GALLERY.mkdir(exist_ok=True)
    for name in names or sorted(registry()):
        with tempfile.TemporaryDirectory() as tmp:
            result, report = run_experiment(name, Path(tmp) / name, quick=True, progress=False,
                                            params=PARAMS.get(name))
            folder = report.parent
            figures = sorted(folder.glob("*.png"))
            if figures:
                shutil.copy(figures[0], GALLERY / f"{name}.png")
            info = json.loads((folder / "results.json").read_text())
            (GALLERY / f"{name}.json").write_text(json.dumps({"title": result.title, "summary": result.summary,
                                                              "run_time_s": info.get("run_time_s")}, indent=1))
        print(f"{name}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
