import pytest

from nws_avalanche.common.errors import ConfigError
from nws_avalanche.config.run_config import build_config, parse_set


def test_preset_then_set_overrides():
    cfg = build_config([], ["epochs=3", "lr=0.5", "milestones=[1,2]", "packnet.prune_ratio=0.5"])
    assert cfg.epochs == 3 and cfg.lr == 0.5 and cfg.milestones == [1, 2]
    assert cfg.arch == "resnet18-narrow"  # from presets/split-digits.yaml
    assert cfg.method_options == {"packnet": {"prune_ratio": 0.5}}


def test_parse_set_nested():
    assert parse_set("benchmark_options.tasks=2") == {"benchmark_options": {"tasks": 2}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("epochs")


def test_yaml_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 4\nbeta: 0.1\n")
    cfg = build_config([str(f)], ["beta=0.2"])
    assert cfg.epochs == 4 and cfg.beta == 0.2
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        build_config([str(tmp_path / "missing.yaml")], [])
