"""Configs: defaults, YAML files, dotted overrides, and one-line errors for bad input."""

from pathlib import Path

import pytest
import yaml

from distill.config import Config, DistillError, dump_yaml, from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_file_equals_builtin_defaults():
    # The CLI falls back to the built-in defaults when configs/ is absent: they must agree.
    assert load_config(CONFIGS / "quickstart.yaml") == Config()
    # and its header says every key is spelled out: the same keys as the resolved config

    def keys(tree, prefix=""):
        return {k for name, v in tree.items()
                for k in ({prefix + name} | (keys(v, prefix + name + ".") if isinstance(v, dict) else set()))}

    written = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert keys(written) == keys(yaml.safe_load(dump_yaml(Config())))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    assert isinstance(load_config(path), Config)


def test_overrides_are_typed_and_nested():
    cfg = from_dict({"student": {"bond_dim": 4}}, ["student.bond_dim=16", "teacher.hidden=[32, 16]",
                                                  "distill.lr=2e-3", "data.data_dir=null"])
    assert cfg.student.bond_dim == 16
    assert cfg.teacher.hidden == (32, 16)
    assert cfg.distill.lr == pytest.approx(2e-3) and isinstance(cfg.distill.lr, float)
    assert cfg.data.data_dir is None
    # an integer is accepted where a number is expected, and stored as float
    assert from_dict({"distill": {"temperature": 2}}).distill.temperature == 2.0


def test_round_trip_through_yaml(tmp_path):
    cfg = from_dict({}, ["student.bond_dim=7", "teacher.hidden=[9]", "name=x"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, needle", [
    ("student.bond_dim=0", "student.bond_dim = 0 is not allowed: must be an integer ≥ 1"),
    ("distill.lr=-1", "distill.lr = -1.0 is not allowed: must be a number > 0"),
    ("distill.alpha=1.5", "distill.alpha = 1.5 is not allowed: must be a number in [0, 1]"),
    ("student.bnd_dim=3", "unknown key 'student.bnd_dim'; did you mean 'student.bond_dim'?"),
    ("studnt.bond_dim=3", "unknown key 'studnt'; did you mean 'student'?"),
    ("distill.mode=stage", "did you mean 'staged'?"),
    ("student.family=ttt", "did you mean 'tt'?"),
    ("data.name=fashion", "did you mean 'fashion_mnist'?"),
    ("teacher.hidden=3", "teacher.hidden = 3 is not allowed: expected a list of integers"),
    ("teacher.hidden=[64, 0]", "teacher.hidden = (64, 0) is not allowed: must be a list of integers ≥ 1"),
    ("student.bond_dim=2.5", "student.bond_dim = 2.5 is not allowed: expected an integer"),
    ("student.bond_dim=true", "expected an integer"),
    ("seed=-1", "seed = -1 is not allowed"),
    ("distill.lr=nan", "distill.lr = nan is not allowed: expected a number"),
    ("bond_dim", "expected key=value"),
])
def test_bad_values_are_refused_with_one_line(override, needle):
    with pytest.raises(DistillError) as err:
        from_dict({}, [override])
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_bad_files(tmp_path):
    with pytest.raises(DistillError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    with pytest.raises(DistillError, match="not valid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text(yaml.safe_dump({"student": [1, 2]}))
    with pytest.raises(DistillError, match="student must be a mapping"):
        load_config(notmap)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
