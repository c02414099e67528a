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


@pytest.mark.parametrize(
    "override, needle",
    [
        (["n_embd=100", "n_head=3"], "n_embd=100 is not divisible by n_head=3"),
        (["position=rope", "n_embd=36", "n_head=4"], "n_head=4 gives an odd head size 9; rope rotates pairs"),
        (["lr=-1"], "lr="),
        (["n_layer=abc"], "n_layer='abc' is not a valid int"),
        (["optimizer=adam"], "optimizer"),
        (["bogus=1"], "unknown config field 'bogus'"),
        (["dropout=1.5"], "dropout"),
        (["noequals"], "key=value"),
        (["muon_ns_steps=0"], "muon_ns_steps=0 must be in [1, 20]"),
        (["muon_coeffs=cubic"], "muon_coeffs"),
        (["precision=fp16"], "precision"),
    ],
)
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


def test_choices_come_from_the_type_and_are_listed():
    with pytest.raises(GptlabError) as err:
        build_config("cpu-tiny", None, ["mlp=swish"])
    assert "mlp='swish' must be one of: gelu, gelu_tanh, relu2, swiglu" in str(err.value)
    cfg = build_config("cpu-tiny", None, ["position=rope", "norm=rmsnorm", "schedule=wsd", "optimizer=muon"])
    assert (cfg.model.position, cfg.model.norm, cfg.train.schedule, cfg.train.optimizer) == (
        "rope",
        "rmsnorm",
        "wsd",
        "muon",
    )


def test_a_value_set_in_code_is_type_checked_at_validation():
    cfg = build_config("cpu-tiny", None, [])
    cfg.model.norm = "batchnorm"
    with pytest.raises(GptlabError, match="norm='batchnorm' must be one of"):
        cfg.validate()


def test_optional_fields_are_resolved_from_the_type_hints():
    from dataclasses import dataclass

    from gptlab.config import _set_field

    @dataclass
    class Section:
        cap: float | None = None

    s = Section()
    _set_field(s, "cap", "2.5", "x")
    assert s.cap == 2.5
    _set_field(s, "cap", "none", "x")
    assert s.cap is None


def test_an_ambiguous_bare_key_is_refused_naming_the_sections(monkeypatch):
    from gptlab import config

    cfg = build_config("cpu-tiny", None, [])
    real = config._field_types
    # A field both sections have (none do today; growth must not make an old override change meaning).
    monkeypatch.setattr(config, "_field_types", lambda obj: {**real(obj), "seed": int})
    cfg.model.seed = 0
    with pytest.raises(GptlabError, match="'seed' is in several sections; write model.seed or train.seed"):
        config.apply_overrides(cfg, ["seed=3"])
    config.apply_overrides(cfg, ["train.seed=3"])
    assert cfg.train.seed == 3


def test_muon_with_fsdp_is_refused_with_the_reason():
    with pytest.raises(GptlabError, match="Muon needs whole matrices"):
        build_config("cpu-modern", None, ["fsdp=true"])


def test_presets_have_a_model_part_and_a_train_part():
    from gptlab.config import ModelConfig, TrainConfig
    from gptlab.model.presets import PRESETS

    model_fields, train_fields = set(vars(ModelConfig())), set(vars(TrainConfig()))
    for name, preset in PRESETS.items():
        assert set(preset) == {"model", "train"}, name
        assert set(preset["model"]) <= model_fields and set(preset["train"]) <= train_fields, name
        build_config(name, None, [])  # every preset validates
