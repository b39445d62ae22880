"""Every setting has a flag and a DISTILSERVE_* variable; flags beat the environment."""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from distilserve.cli import COMMANDS, add_settings_arguments, main
from distilserve.models.bundle import MODEL_NAME
from distilserve.server.main import run
from distilserve.server.settings import ModelSpec, ServerSettings


def parse(argv: list[str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, ServerSettings)
    return ServerSettings(**vars(parser.parse_args(argv)))


def test_every_server_setting_has_a_flag_and_an_env_var_in_its_help() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, ServerSettings)
    help_text = parser.format_help()
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text, name
        assert f"DISTILSERVE_{name.upper()}" in help_text, name


def test_flags_override_the_environment_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse([]).max_batch_size == 32
    monkeypatch.setenv("DISTILSERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DISTILSERVE_WARMUP", "false")
    assert parse([]).max_batch_size == 8
    assert parse([]).warmup is False
    settings = parse(["--max-batch-size", "4", "--warmup"])
    assert settings.max_batch_size == 4 and settings.warmup is True


def test_models_from_repeated_flags_and_from_a_comma_separated_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = parse(["--model", "a=/bundles/a", "--model", "b=/bundles/b"])
    assert settings.model_specs == [ModelSpec("a", Path("/bundles/a")), ModelSpec("b", Path("/bundles/b"))]
    monkeypatch.setenv("DISTILSERVE_MODEL", "x=/b/x,/b/plain")
    assert [spec.name for spec in parse([]).model_specs] == ["x", "plain"]
    with pytest.raises(ValueError, match="unique"):
        parse(["--model", "a=/x", "--model", "a=/y"])


def test_the_api_key_is_a_secret() -> None:
    settings = parse(["--api-key", "hunter2"])
    assert "hunter2" not in repr(settings)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "hunter2"


def test_invalid_settings_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_the_console_script_lists_its_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "distilserve", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in result.stdout


def test_serve_help_does_not_import_torch() -> None:
    code = (
        "import sys; from distilserve.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# Refusals are checked on the settings (what `distilserve serve` turns into exit 2 and a message,
# as test_invalid_settings_exit_2_with_a_message shows): a server that wrongly accepted them
# would otherwise start serving inside the test.
def test_an_empty_api_key_is_refused_from_the_flag_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for empty in ("", "   "):
        with pytest.raises(ValidationError, match="API key must not be empty"):
            parse(["--api-key", empty])
    monkeypatch.setenv("DISTILSERVE_API_KEY", "")
    with pytest.raises(ValidationError, match="API key must not be empty"):
        parse([])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_a_host_reachable_from_elsewhere_needs_a_key_or_an_explicit_opt_out(host: str) -> None:
    with pytest.raises(ValidationError, match="--allow-unauthenticated"):
        parse(["--host", host])
    assert parse(["--host", host, "--allow-unauthenticated"]).allow_unauthenticated
    assert parse(["--host", host, "--api-key", "k"]).api_key is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_serve_without_a_key(host: str) -> None:
    assert parse(["--host", host]).host == host


def test_a_corrupted_bundle_is_refused_before_binding_with_one_line(
    tiny_bundles: dict[tuple[str, str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = Path(shutil.copytree(tiny_bundles[("bert", "text-classification")], tmp_path / "bundle"))
    model = bundle / MODEL_NAME
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    settings = ServerSettings(model=[f"broken={bundle}"], port=0, warmup=False)
    with caplog.at_level(logging.ERROR):
        assert run(settings) == 2
    (record,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.getMessage() == f"cannot start: {model}: sha256 does not match the manifest: " + (
        "the file is corrupted or was changed"
    )
    assert record.exc_info is None


@pytest.mark.parametrize("key", [" lead", "trail ", "\tboth\n"])
def test_an_api_key_with_outer_whitespace_is_refused_from_the_flag_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # HTTP trims header values, so no client could ever send such a key: every request would be 401.
    with pytest.raises(ValidationError, match="must not start or end with whitespace"):
        parse(["--api-key", key])
    monkeypatch.setenv("DISTILSERVE_API_KEY", key)
    with pytest.raises(ValidationError, match="must not start or end with whitespace"):
        parse([])
    assert parse(["--api-key", "inner space is fine"]).api_key is not None


def test_the_memory_budget_is_the_flag_or_the_cgroup_limit_shared_by_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gib = 2**30
    assert parse(["--memory-budget-mb", "700"]).memory_budget_bytes(lambda: gib) == 700 * 2**20
    assert parse([]).memory_budget_bytes(lambda: gib) == gib
    assert parse(["--workers", "2"]).memory_budget_bytes(lambda: gib) == gib // 2
    assert parse([]).memory_budget_bytes(lambda: None) is None  # no limit anywhere: no budget
    monkeypatch.setenv("DISTILSERVE_MEMORY_BUDGET_MB", "512")
    assert parse([]).memory_budget_bytes(lambda: gib) == 512 * 2**20
    assert parse(["--no-release-memory"]).release_memory is False
