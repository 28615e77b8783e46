"""The installed distribution is complete: every package, the templates and static files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib, pathlib, sys
for name in ("telehealth", "signaling", "media", "web", "fallback"):
    mod = importlib.import_module(name)
    print(name, pathlib.Path(mod.__file__).parent)
import web
root = pathlib.Path(web.__file__).parent
assert (root / "templates" / "base.html").exists(), "templates missing from the install"
assert any((root / "static").iterdir()), "static files missing from the install"
"""


def test_every_package_imports_from_outside_the_source_tree(tmp_path: Path) -> None:
    # -P keeps the working directory off sys.path, so this sees what `pip install .` put in place.
    result = subprocess.run([sys.executable, "-P", "-c", PROBE], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5


def test_the_command_line_entry_point_is_installed(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("telehealth")
    result = subprocess.run([str(exe), "room", "create", "--data-dir", str(tmp_path), "--therapist", "T",
                             "--partner", "A", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"room_id"' in result.stdout
