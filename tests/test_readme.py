"""The README's Python example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    assert code, "README has no python example"
    scope: dict = {}
    exec(compile(code[0], "README.md", "exec"), scope)
    acc = float((scope["f"].argmax(1) == scope["data"].labels_test).double().mean())
    assert acc > 0.9  # NTK regression on digits; chance is 0.1
    assert scope["mc"].ntk.shape == (20, 20)
