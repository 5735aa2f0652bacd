"""Write the generated pages of the documentation before sphinx-build runs: the experiment gallery, from the
experiments' registry and the summaries and figures stored in docs/gallery/ by docs/make_gallery.py."""

import json
from pathlib import Path

from infinet.experiments import registry

HERE = Path(__file__).parent


def main() -> None:
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    lines = []
    for name, exp in sorted(registry().items()):
        title = f"``{name}``"
        lines += [title, "-" * len(title), "", f"{exp.description}. Run it with ``infinet run {name}``"
                  f" (``--quick`` for the variant shown here).", ""]
        stored = HERE / "gallery" / f"{name}.json"
        if stored.exists():
            info = json.loads(stored.read_text())
            summary = " ".join(info["summary"].split()).replace("*", r"\*").replace("|", r"\|")
            lines += [f"*{info['title']}* (quick variant, {info['run_time_s']:.0f} s). {summary}", ""]
        if (HERE / "gallery" / f"{name}.png").exists():
            lines += [f".. image:: /gallery/{name}.png", "   :width: 90%", ""]
    (out / "experiments.rst").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
