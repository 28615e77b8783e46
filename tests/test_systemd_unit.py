"""deploy/telehealth.service and deploy/telehealth.env.example, checked by systemd's own tools
and by a real `telehealth serve` started with the example's settings."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from telehealth.config import Config, from_env
from tests.conftest import free_port
from tests.served import Launcher

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "telehealth.service"
ENV_EXAMPLE = DEPLOY / "telehealth.env.example"
INSTALLED_AT = "/opt/telehealth/bin/telehealth"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# systemd-analyze security scores 0 (locked down) to 10; "OK" ends at 2.0.
MAX_EXPOSURE = 2.0



def systemd_analyze() -> str:
    assert SYSTEMD_ANALYZE is not None, "systemd-analyze is missing: scripts/test.sh installs systemd"
    return SYSTEMD_ANALYZE


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def installed_copy(tmp_path: Path) -> Path:
    """The unit as installed where this telehealth really is: verify checks that ExecStart exists."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_AT) == 1
    here = Path(sys.executable).parent / "telehealth"
    assert here.exists(), "the telehealth command is not installed in this Python's environment"
    copy = tmp_path / "telehealth.service"
    copy.write_text(text.replace(INSTALLED_AT, str(here)))
    return copy


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", str(installed_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr + result.stdout


def test_the_unit_is_sandboxed_by_systemds_own_measure(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager",
                             str(installed_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_the_unit_runs_serve_as_its_own_user_with_a_private_state_folder() -> None:
    unit = settings(UNIT.read_text())
    assert unit["ExecStart"] == [f"{INSTALLED_AT} serve"]
    assert unit["User"] == ["telehealth"] and unit["User"] != ["root"]
    assert unit["StateDirectory"] == ["telehealth"] and unit["StateDirectoryMode"] == ["0700"]
    assert unit["Environment"] == ["TELEHEALTH_DATA_DIR=%S/telehealth"]
    assert unit["EnvironmentFile"] == ["/etc/telehealth/telehealth.env"]
    assert unit["UMask"] == ["0077"]
    # A refusal at start (exit 2: wrong key, damaged database...) is not retried in a loop.
    assert unit["RestartPreventExitStatus"] == ["2"]
    for hardening in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                      "CapabilityBoundingSet=", "SystemCallArchitectures=native"):
        key, value = hardening.split("=")
        assert unit[key] == [value], key
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]


def example_settings(*, commented: bool) -> dict[str, str]:
    """The example's NAME=value lines, as systemd reads them; with ``commented`` also the
    optional ones shown commented out."""
    found = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw[1:] if commented and raw.startswith("#TELEHEALTH_") else raw
        if line.startswith("TELEHEALTH_"):
            name, value = line.split("=", 1)
            found[name] = value
    return found


def test_every_setting_in_the_environment_example_is_a_real_one() -> None:
    fields = {f"TELEHEALTH_{f.name.upper()}" for f in dataclasses.fields(Config)}
    named = example_settings(commented=True)
    assert set(named) <= fields, set(named) - fields
    assert "TELEHEALTH_DATA_DIR" not in named  # the unit sets it
    assert from_env(example_settings(commented=False)).base_url == "https://video.clinic.example"


@pytest.mark.parametrize("commented", [False, True], ids=["as-shipped", "every-option-on"])
async def test_serve_starts_with_the_example_settings(
    serve: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commented: bool
) -> None:
    for name, value in example_settings(commented=commented).items():
        monkeypatch.setenv(name, value)
    served = await serve(tmp_path / "state" / "telehealth", free_port())  # the port a test can have
    assert served.serving, served.stderr
