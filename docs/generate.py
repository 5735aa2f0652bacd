"""Write the generated pages of the documentation (the experiment gallery's list) before sphinx-build runs."""

from pathlib import Path

from infinet.experiments import registry

HERE = Path(__file__).parent


def main() -> None:
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    lines = []
    for name, exp in sorted(registry().items()):
        lines += [f"``{name}``", f"   {exp.description}. Run it with ``infinet run {name}``.", ""]
    (out / "experiments.rst").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
