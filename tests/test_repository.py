"""The repository's text files: no merge leftovers, and the docs' relative links resolve."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (".py", ".md", ".toml", ".cfg", ".txt", ".ipynb", ".yaml", ".yml", ".sh")


def _tracked(*suffixes: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.splitlines() if p.endswith(suffixes) or os.path.basename(p) == "Makefile"]


def test_no_merge_conflict_markers():
    pattern = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
    found = []
    for path in _tracked(*TEXT):
        with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
            found += [f"{path}: {m.group(0).strip()}" for m in pattern.finditer(f.read())]
    assert not found, f"merge-conflict markers: {found}"


def test_relative_links_in_docs_resolve():
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for path in _tracked(".md"):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        for target in link.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor of the same page
            file = target.split("#", 1)[0]
            if not os.path.exists(os.path.join(ROOT, os.path.dirname(path), file)):
                broken.append(f"{path} -> {target}")
    assert not broken, f"links to missing files: {broken}"


def test_readme_python_example_runs():
    """The README's Python example, as a newcomer copies it: it runs and gives a finite loss
    with one gradient row per embedding."""
    import numpy as np

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)
    assert blocks, "README.md has no ```python block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert np.isfinite(namespace["loss"]) and np.shape(namespace["loss"]) == ()
    assert namespace["grads"].shape == namespace["emb"].shape
    assert np.all(np.isfinite(namespace["grads"]))


def test_the_version_is_the_one_in_pyproject():
    import tomllib

    import rankax

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert rankax.__version__ == tomllib.load(f)["project"]["version"]
