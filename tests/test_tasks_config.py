"""Job parameter specs, presets and the model registry."""

import hashlib
from dataclasses import dataclass

import pytest

from headsync.core import registry
from headsync import tasks
from headsync.core.config import load_preset, preset_names, section
from headsync.core.errors import UserError


def test_validate_fills_defaults_and_checks_types():
    p = tasks.validate("prepare", {"video": "/x.mp4", "subject": "/s", "fps": 30})
    assert p["preset"] == "auto" and p["fps"] == 30.0 and p["audio"] is None
    for bad, match in [({"subject": "/s"}, "needs the parameter 'video'"),
                       ({"video": "/x", "subject": "/s", "fps": "fast"}, "must be a valid number"),
                       ({"video": "/x", "subject": "/s", "fps": float("inf")}, "must be a finite number"),
                       ({"video": "/x", "subject": "/s", "fps": 1e3}, "less than or equal to 120"),
                       ({"video": "/x", "subject": "/s", "resolution": 12.5}, "must be a valid integer"),
                       ({"video": "/x", "subject": "/s", "resolution": True}, "must be a valid integer"),
                       ({"video": "/x", "subject": "/s", "resolution": -4}, "greater than or equal to 64"),
                       ({"video": "/x", "subject": "/s", "resolution": 100000}, "less than or equal to 2048"),
                       ({"video": "", "subject": "/s"}, "at least 1 character"),
                       ({"video": "/x", "subject": "/s", "colour": 1}, "unknown parameter")]:
        with pytest.raises(UserError, match=match):
            tasks.validate("prepare", bad)
    with pytest.raises(UserError, match="unknown job kind"):
        tasks.validate("paint", {})
    with pytest.raises(UserError, match="must be a registered renderer: nerf"):
        tasks.validate("train", {"subject": "/s", "renderer": "raytracer"})
    for run in ("a\n", "../x", "a..b", "a/b", "", " a", "x" * 65):
        with pytest.raises(UserError, match="parameter 'run'"):
            tasks.validate("train", {"subject": "/s", "run": run})
    assert tasks.validate("train", {"subject": "/s", "run": "v1.2_b-3"})["run"] == "v1.2_b-3"


def test_names_are_matched_whole():
    """A name ending in a newline (Python's ``$`` matches before one) or holding '..' is refused."""
    for ok in ("a", "astro", "A1.b-c_d", "x" * 64, "a."):
        assert tasks.is_name(ok), ok
    for bad in ("a\n", "a\nb", "\na", "a..b", "..", ".a", "a/b", "a b", "é", "x" * 65, "", None, 5):
        assert not tasks.is_name(bad), bad


def test_one_name_rule_for_jobs_records_and_renderers(tmp_path):
    """The rule the jobs check is the one the subject records read back from disk and renderers register
    under: a run's recorded renderer that is no name (a space, '..', a newline) is shown as unknown, and a
    renderer cannot be registered as one."""
    import json

    from headsync.core import names
    from headsync.renderers.base import Renderer
    from headsync.renderers.registry import register_renderer
    from headsync.subject.info import run_info

    assert tasks.is_name is names.is_name and tasks.NAME_PATTERN == names.NAME_PATTERN
    for recorded, shown in (("gaussian", "gaussian"), ("my-plugin.v2", "my-plugin.v2"), ("a b", None),
                            ("..", None), ("nerf\n", None), ("x" * 65, None), (3, None)):
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "metrics.json").write_text(json.dumps({"renderer": recorded}))
        assert run_info(tmp_path / "run")["renderer"] == shown, recorded
    for bad in ("a b", "../x", ""):
        with pytest.raises(ValueError, match="is not a name"):
            register_renderer(bad)(type("Bad", (Renderer,), {}))


def test_one_schema_drives_the_command_line():
    """The CLI's flags come from the kinds' schemas: a flag per parameter, the same checks."""
    from headsync import cli

    parser = cli._parser()
    for kind, task in tasks.TASKS.items():
        args = parser.parse_args([kind, "v.mp4", "--subject", "s"] if kind == "prepare" else
                                 [kind, "--subject", "s"] + (["--audio", "a.wav"] if kind == "render" else []))
        assert set(cli._params(args)) <= set(task.names)
    args = parser.parse_args(["render", "--subject", "s", "--audio", "a.wav", "--no-portrait", "--shot", "take2"])
    assert cli._params(args) == {"subject": "s", "audio": "a.wav", "portrait": False, "shot": "take2"}
    assert cli._params(parser.parse_args(["eval", "--subject", "s", "--sync"]))["sync"] == "latest"
    rc = cli.main(["prepare", "v.mp4", "--subject", "s", "--fps", "inf"])
    assert rc == 2  # the schema refuses it before anything runs


def test_auto_preset_is_preview_on_a_cpu_and_standard_on_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_preset("auto").name == "preview" and load_preset().name == "preview"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_preset("auto").name == "standard"


def test_presets_load_and_reject_unknown_keys(tmp_path):
    assert {"preview", "standard", "paper"} <= set(preset_names())

    @dataclass(frozen=True)
    class Prep:
        fps: float = 25.0
        resolution: int = 512

    p = load_preset("preview")
    assert section(p, "prepare", Prep).resolution < section(load_preset("paper"), "prepare", Prep).resolution
    assert section(p, "prepare", Prep, resolution=128).resolution == 128
    bad = tmp_path / "bad.toml"
    bad.write_text("[prepare]\nfsp = 25\n")
    with pytest.raises(UserError, match="unknown setting"):
        section(load_preset(str(bad)), "prepare", Prep)
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("ultra")


def test_nested_renderer_tables_and_every_preset_builds_its_components(tmp_path):
    from headsync.core.config import as_dict, from_table
    from headsync.renderers.nerf.model import ModelConfig
    from headsync.render.dub import RenderConfig
    from headsync.renderers.registry import renderer_class, renderer_names
    from headsync.training.trainer import TrainConfig, train_config

    cfg = section(load_preset("preview"), "renderer.nerf", ModelConfig)
    assert cfg.hash.levels == 10 and cfg.march.samples == 16 and cfg.field.geo_feat_dim == 32
    assert cfg.field.density_layers == ModelConfig().field.density_layers  # unset keys keep the one default
    assert from_table(ModelConfig, as_dict(cfg)) == cfg  # what a checkpoint stores rebuilds it
    bad = tmp_path / "bad.toml"
    bad.write_text("[renderer.nerf.hash]\nlevelz = 3\n")
    with pytest.raises(UserError, match=r"renderer\.nerf\.hash"):
        section(load_preset(str(bad)), "renderer.nerf", ModelConfig)
    bad.write_text("[train]\nhash_levels = 3\n")  # the old flat key: an error, not silently ignored
    with pytest.raises(UserError, match="unknown setting"):
        section(load_preset(str(bad)), "train", TrainConfig)
    for name in preset_names():  # every shipped preset's tables build their components
        p = load_preset(name)
        for kind in renderer_names():
            train_config(p, kind)
            section(p, f"renderer.{kind}", renderer_class(kind).Config)
        section(p, "render", RenderConfig)


def test_train_sub_table_of_a_renderer_replaces_its_settings(tmp_path):
    from headsync.core.config import Preset
    from headsync.training.trainer import TrainConfig, train_config

    p = Preset("x", {"train": {"coarse_iters": 5, "resolution": 64, "gaussian": {"coarse_iters": 7}}})
    assert train_config(p, "nerf") == TrainConfig(coarse_iters=5, resolution=64)  # the other renderer's: ignored
    assert train_config(p, "gaussian") == TrainConfig(coarse_iters=7, resolution=64)
    with pytest.raises(UserError, match="name no renderer"):
        train_config(Preset("y", {"train": {"gausian": {"coarse_iters": 7}}}), "gaussian")
    with pytest.raises(UserError, match=r"unknown setting.*train\.gaussian"):
        train_config(Preset("z", {"train": {"gaussian": {"coarse_iterz": 7}}}), "gaussian")


def test_registry_install_checks_hash(tmp_path, monkeypatch):
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not the model")
    monkeypatch.setenv("HEADSYNC_MODELS", str(tmp_path / "models"))
    assert registry.find("face_landmarker") is None
    with pytest.raises(UserError, match="sha256"):
        registry.install("face_landmarker", from_file=fake)
    assert registry.find("face_landmarker") is None  # nothing half-installed
    e = registry.entry("face_landmarker")
    monkeypatch.setitem(registry.MODELS, "face_landmarker",
                        registry.ModelEntry(**{**e.__dict__, "sha256": hashlib.sha256(b"not the model").hexdigest()}))
    dest = registry.install("face_landmarker", from_file=fake)
    assert registry.find("face_landmarker") == dest
