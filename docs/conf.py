"""Sphinx configuration: the documentation is built offline from the docstrings (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath("../src"))

project = "infinet"
author = "the infinet developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.mathjax"]
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_typehints = "none"  # signatures show the types; references to torch and numpy need no inventories
autosummary_generate = False
nitpicky = True  # a broken cross-reference in a docstring fails the build (-W)
nitpick_ignore_regex = [(r"py:.*", r"(torch|numpy|np|typing|collections|sklearn|gpytorch|dask|zarr|typer)\..*")]
html_theme = "alabaster"
exclude_patterns = ["_build"]

nitpick_ignore_regex += [
    (r"py:.*", r"(jax|neural_tangents)\..*"),
    (r"py:.*", r"(.*\.)?_\w+"),       # private bases shown by show-inheritance and private helpers
    (r"py:class", r"(Module|Tensor|Parameter|nn\.Module)"),
]
autodoc_default_options["exclude-members"] = ",".join(
    f"set_{kind}_request" for kind in ("fit", "predict", "score", "partial_fit", "transform"))

import re  # noqa: E402

_CODE = re.compile(r"(``.*?``|:[\w:]+:`[^`]*`|`[^`]*`_?)")


def _escape(app, what, name, obj, options, lines):
    """Docstrings are written as plain text with reST roles: escape * and | outside code spans and roles, so
    that shapes like (N, *S) and norms like |x| are not read as emphasis or substitutions."""
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        bullet = stripped.startswith("* ")
        if bullet:  # a list item keeps its marker
            line = stripped[2:]
        parts = _CODE.split(line)
        for j in range(0, len(parts), 2):
            parts[j] = parts[j].replace("*", r"\*").replace("|", r"\|")
        lines[i] = ("".join([lines[i][: len(lines[i]) - len(stripped)], "* "]) if bullet else "") + "".join(parts)
    # plain-text hanging indents ("name: text" with indented continuations, indented formulas) become
    # definition lists and block quotes in reST, which need a blank line where the indentation drops
    def indent(text):
        return len(text) - len(text.lstrip())

    out, bullet = [], None  # bullet: the indentation of the list item being continued, or None
    for line in lines:
        text = line.strip()
        if not text:
            out.append(line)
            continue
        is_item = text.startswith(("* ", "- "))
        continues_item = bullet is not None and indent(line) == bullet + 2
        previous = out[-1] if out else ""
        if previous.strip() and indent(line) != indent(previous) and not continues_item \
                and not (is_item and bullet is not None and indent(line) == bullet) \
                and not previous.rstrip().endswith("::"):
            out.append("")
        if is_item:
            bullet = indent(line)
        elif not continues_item:
            bullet = None
        out.append(line)
    lines[:] = out


def _public_path(app, env, node, contnode):
    """``infinet.Kernel`` and the other names re-exported by the package resolve to where they are defined."""
    target = node.get("reftarget", "")
    if not target.startswith("infinet.") or node.get("refdomain") != "py":
        return None
    import importlib

    from infinet import _compat

    parts = target.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module (old flat paths included)
        try:
            module = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        return None
    rest, home = parts[i:], module.__name__
    if rest:  # an object: where it is defined (its module when it does not say), or the public module re-exporting it
        defined = getattr(getattr(module, rest[0], None), "__module__", None)
        home = defined if isinstance(defined, str) and defined.startswith("infinet") else home
    new = ".".join([_compat.FACADES.get(home, home)] + rest)
    if new == target:
        return None
    node["reftarget"] = new
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node, contnode)


def setup(app):
    app.connect("autodoc-process-docstring", _escape)
    app.connect("missing-reference", _public_path)
