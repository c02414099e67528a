import pytest

from gptlab.config import RunConfig, build_config, load_toml
from gptlab.errors import GptlabError


def test_preset_then_toml_then_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "tutorial"\n[model]\nn_layer = 3\n[train]\nlr = 0.01\nbatch_size = 7\n')
    cfg = build_config(None, toml, ["batch_size=5", "model.dropout=0.25", "optimizer=sgd"])
    assert cfg.preset == "tutorial" and cfg.model.n_embd == 64  # from the preset
    assert cfg.model.n_layer == 3 and cfg.train.lr == 0.01  # from the file
    assert cfg.train.batch_size == 5 and cfg.model.dropout == 0.25 and cfg.train.optimizer == "sgd"


def test_round_trip_through_dict():
    cfg = build_config("cpu-small", None, ["sample_prompt=ROMEO:"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, needle", [
    (["n_embd=100", "n_head=3"], "n_embd=100 is not divisible by n_head=3"),
    (["lr=-1"], "lr="),
    (["n_layer=abc"], "n_layer='abc' is not a valid int"),
    (["optimizer=adam"], "optimizer"),
    (["bogus=1"], "unknown config field 'bogus'"),
    (["dropout=1.5"], "dropout"),
    (["noequals"], "key=value"),
])
def test_invalid_values_name_the_field(override, needle):
    with pytest.raises(GptlabError, match=None) as err:
        build_config("cpu-tiny", None, override)
    assert needle in str(err.value)


def test_unknown_preset_lists_known():
    with pytest.raises(GptlabError) as err:
        build_config("gpt5", None, [])
    assert "unknown preset 'gpt5'" in str(err.value) and "gpt2-small" in str(err.value)


def test_bad_toml_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer=")
    with pytest.raises(GptlabError, match="not valid TOML"):
        build_config(None, bad, [])
    extra = tmp_path / "extra.toml"
    extra.write_text("[optim]\nlr=1\n")
    with pytest.raises(GptlabError, match="unknown section"):
        build_config(None, extra, [])


def test_shipped_config_files_load():
    from conftest import ROOT

    paths = sorted((ROOT / "configs").glob("*.toml"))
    assert paths
    for path in paths:
        data = load_toml(path)
        cfg = build_config(None, path, [])
        # Every value the file sets is what the config holds.
        for section in ("model", "train"):
            for key, value in data.get(section, {}).items():
                assert getattr(getattr(cfg, section), key) == value, (path.name, key)
