"""docs/systemd.md: its unit files are the ones in docs/systemd/, and systemd accepts them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"
UNIT = DOCS / "systemd" / "beamdeploy-myapp.service"
SOCKET = DOCS / "systemd" / "beamdeploy-myapp.socket"
BEAMDEPLOY = "/opt/beamdeploy/bin/beamdeploy"


def test_the_page_shows_the_unit_files_as_they_are():
    page = (DOCS / "systemd.md").read_text()
    blocks = [block.split("```", 1)[0] for block in page.split("```ini\n")[1:]]
    assert blocks == [UNIT.read_text(), SOCKET.read_text()]


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text().replace("\\\n", " "))
    return parser["Service"]


def test_the_unit_waits_for_the_arbiter_and_lets_it_drain():
    unit = service()
    assert unit["Type"] == "notify"
    assert unit["NotifyAccess"] == "main"  # a reexec's MAINPID= comes from the main process
    assert unit["KillMode"] == "mixed"  # TERM to the arbiter alone
    assert "--graceful-timeout 30" in unit["ExecStart"]
    assert int(unit["TimeoutStopSec"]) > 30 + 2  # graceful timeout + the kill margin
    assert unit["ExecStart"].startswith(f"{BEAMDEPLOY} serve ")
    assert "--release" not in unit["ExecStart"]  # it boots `current`
    assert unit["ExecReload"].startswith(f"{BEAMDEPLOY} upgrade ")
    assert int(unit["WatchdogSec"]) >= 2
    assert "AF_UNIX" in unit["RestrictAddressFamilies"].split()
    assert unit["NoNewPrivileges"] == "yes" and unit["CapabilityBoundingSet"] == ""
    assert unit["ProtectSystem"] == "strict"
    assert "/var/lib/myapp" in unit["ReadWritePaths"].split()
    assert unit["Environment"]  # configparser keeps the last; the state dir is checked below
    assert "Environment=BEAMDEPLOY_STATE_DIR=/var/lib/myapp" in UNIT.read_text()


def test_systemd_analyze_accepts_the_units(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:  # the keys were checked above; nothing more to ask
        return
    # verify wants ExecStart= to exist: this environment's beamdeploy.
    beamdeploy = str(Path(sys.executable).parent / "beamdeploy")
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace(BEAMDEPLOY, beamdeploy))
    (tmp_path / SOCKET.name).write_text(SOCKET.read_text())
    done = subprocess.run(
        [tool, "verify", "--man=no", f"./{UNIT.name}", f"./{SOCKET.name}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are warnings with exit code 0: none at all.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
