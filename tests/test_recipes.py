"""``docs/recipes.md`` agrees with the configs and ``configs/official``; the record is complete.

The table is regenerated in memory from the configs and compared with the committed file, so a
config change that is not written down (``python -m experiments.recipes``) fails here.
"""

import pathlib

import pytest

from configs import official
from experiments import recipes

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("default", "__init__"))


def test_committed_recipes_match_the_configs():
    committed = recipes.DOC.read_text()
    assert committed == recipes.render(), "docs/recipes.md is stale: run `python -m experiments.recipes`"


def test_every_published_config_has_a_recipe():
    published = [c for c in CONFIGS if c not in official.NOT_PUBLISHED]
    assert sorted(official.RECIPES) == published


@pytest.mark.parametrize("name", sorted(official.RECIPES))
def test_each_row_is_explained(name):
    keys = [e.key for e in official.RECIPES[name]]
    assert len(keys) == len(set(keys)), f"{name}: a key is listed twice"
    for entry, row in zip(official.RECIPES[name], recipes.rows(name), strict=True):
        from_paper = entry.source.startswith(official.PAPER_ARCHIVE)
        assert from_paper or ":" in entry.source, f"{name} {entry.key}: source must be repo:path"
        state = row[3]
        if state == "deviation":
            assert entry.why, f"{name} {entry.key}: a deviation needs its reason (why=...)"
        if state in ("pending", "undetermined"):
            assert entry.note, f"{name} {entry.key}: {state} needs a note (proposed key or choice made)"


def test_status_rules():
    # Independent of any config: the four states from hand-made entries and values.
    o = official.Official
    assert recipes.status(o("a", 1e-5, "r:p"), 1.0e-5) == "match"
    assert recipes.status(o("a", (0.3, 0.7), "r:p"), [0.3, 0.7]) == "match"
    assert recipes.status(o("a", 1, "r:p"), True) == "deviation"  # bool is not int
    assert recipes.status(o("a", 5e-6, "r:p"), 1e-6) == "deviation"
    assert recipes.status(o("a", True, "r:p"), recipes.MISSING) == "pending"
    assert recipes.status(o("a", official.UNDETERMINED, "r:p"), 3) == "undetermined"
    assert recipes.lookup({"x": {"y": 2}}, "x.y") == 2
    assert recipes.lookup({"x": {"y": 2}}, "x.z") is recipes.MISSING
