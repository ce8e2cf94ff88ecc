"""The settings' base (slidecell.schema): every YAML-backed model (run config, analysis, training,
evaluation, backend parameters) reports its errors the same way, one line naming each key."""

import pytest
from pydantic import Field

from slidecell.analysis.config import load_analysis_config
from slidecell.errors import ConfigError
from slidecell.schema import Strict, deep_merge, read_yaml, safe_yaml, validate
from slidecell.train import load_train_config


class Inner(Strict):
    k: int = Field(1, ge=0)


class Outer(Strict):
    inner: Inner = Field(default_factory=Inner)
    name: str = "x"


def test_errors_name_every_key_in_one_line():
    with pytest.raises(ConfigError) as err:
        validate(Outer, {"inner": {"k": -1, "j": 2}, "nme": "y"}, "f.yaml", "widget config")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("widget config f.yaml: ")
    assert "'inner.k' = -1: Input should be greater than or equal to 0" in msg
    assert "unknown key 'inner.j' (value 2)" in msg and "unknown key 'nme' (value 'y')" in msg


def test_assignments_are_validated_too():
    o = Outer()
    with pytest.raises(ValueError):
        o.inner.k = -5


def test_yaml_aliases_are_refused_before_anything_is_built():
    with pytest.raises(Exception, match="aliases"):
        safe_yaml('a: &a [1, 2]\nb: *a\n')
    assert safe_yaml("a: [1, 2]\n") == {"a": [1, 2]}


def test_read_yaml_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"^thing config .*nope.yaml: file not found$"):
        read_yaml(tmp_path / "nope.yaml", "thing config")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^thing config .*bad.yaml: not valid YAML: "):
        read_yaml(tmp_path / "bad.yaml", "thing config")


def test_deep_merge_merges_nested_mappings_only():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2], "c": 4}) == \
        {"a": {"x": 1, "y": 3}, "b": [2], "c": 4}


def test_every_settings_file_reports_the_same_way(tmp_path):
    """The analysis and training configs go through the same base as the run config."""
    p = tmp_path / "a.yaml"
    p.write_text("analysis:\n  graph:\n    methd: knn\n")
    with pytest.raises(ConfigError, match=r"^analysis config .*a.yaml: unknown key 'graph.methd'"):
        load_analysis_config(p)
    t = tmp_path / "t.yaml"
    t.write_text("name: x\nsets: []\nlrr: 1\n")
    with pytest.raises(ConfigError, match=r"^training config .*t.yaml: .*unknown key 'lrr'"):
        load_train_config(t)
    with pytest.raises(ConfigError, match=r"^training config .*missing.yaml: file not found"):
        load_train_config(tmp_path / "missing.yaml")
