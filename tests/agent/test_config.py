from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import ConfigError, load_config

FULL = """\
device_id: demo-1
broker_url: mqtt://127.0.0.1:1883
tls: null
state_dir: ./state
tags: {site: lab}
telemetry_interval_s: 5
telemetry_buffer_max: 10000
api_host: 127.0.0.1
api_port: 8470
backend: onnxruntime
intra_op_threads: 1
bake_s: 30
fetch_window_blocks: 32
fetch_timeout_s: 5
replay: {file: inputs.npy, rate_hz: 5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_full_config_loads_and_resolves_paths_against_its_directory(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.device_id == "demo-1"
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.replay is not None
    assert config.replay.file == (tmp_path / "inputs.npy").resolve()
    assert config.tags == {"site": "lab"}
    assert config.broker_address().port == 1883


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("device_id: demo-1", "device_id"),  # replaced below by a bad id
        ("api_port: 8470", "api_port"),
        ("backend: onnxruntime", "backend"),
        ("broker_url: mqtt://127.0.0.1:1883", "broker_url"),
        ("telemetry_interval_s: 5", "telemetry_interval_s"),
    ],
)
def test_bad_values_name_the_field(tmp_path, change, field):
    bad = {
        "device_id": "device_id: 'a/b#'",
        "api_port": "api_port: 70000",
        "backend": "backend: pytorch",
        "broker_url": "broker_url: http://x",
        "telemetry_interval_s": "telemetry_interval_s: 0",
    }[field]
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        load_config(write(tmp_path, FULL.replace(change, bad)))


def test_unknown_and_missing_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="field 'telemetry_intervall': unknown key"):
        load_config(write(tmp_path, FULL + "telemetry_intervall: 3\n"))
    with pytest.raises(ConfigError, match="field 'state_dir': is required"):
        load_config(write(tmp_path, FULL.replace("state_dir: ./state\n", "")))


def test_unreadable_or_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "device_id: [unclosed\n"))


def test_run_agent_reports_a_bad_config_with_exit_code_2(tmp_path, capsys):
    from edge_agent import run_agent

    assert run_agent(write(tmp_path, FULL + "colour: blue\n")) == 2
    assert "field 'colour'" in capsys.readouterr().err
