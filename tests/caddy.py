"""A real Caddy (Debian's ``/usr/bin/caddy``) on loopback, running the shipped
``deploy/Caddyfile`` unchanged: its settings come from the environment, as in production.

``start_caddy(tmp_dir, upstream)`` picks free ports, gives Caddy its own data directory (so
its local CA lives there and nowhere else) and returns once Caddy answers over TLS with a
certificate from that CA. ``Caddy.stop()`` ends that process by its own pid.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port
from tests.processes import stop_process

CADDY = Path("/usr/bin/caddy")
CADDYFILE = Path(__file__).resolve().parent.parent / "deploy" / "Caddyfile"
READY_TIMEOUT_S = 30.0


@dataclass
class Caddy:
    """A running Caddy in front of ``upstream``; people open ``base_url``."""

    port: int
    process: subprocess.Popen[bytes]
    ca_file: Path
    log_file: Path

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts Caddy's local CA, and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def stop(self) -> None:
        stop_process(self.process, 10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def start_caddy(tmp_dir: Path, upstream: str) -> Caddy:
    if not CADDY.exists():
        raise RuntimeError(f"{CADDY} is missing: install Debian's caddy (apt-get install -y caddy)")
    home = tmp_dir / "caddy"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
        "TELEHEALTH_SITE": f"https://127.0.0.1:{port}", "TELEHEALTH_UPSTREAM": upstream,
        "CADDY_ADMIN": f"127.0.0.1:{free_port()}", "CADDY_HTTP_PORT": str(free_port()),
        "CADDY_HTTPS_PORT": str(port),
    }
    log_file = home / "caddy.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(CADDY), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    caddy = Caddy(port, process, home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt", log_file)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"caddy exited with {process.returncode}:\n{caddy.log_tail()}")
        if caddy.ca_file.exists() and _handshake(caddy):
            return caddy
        if time.monotonic() > deadline:
            caddy.stop()
            raise RuntimeError(f"caddy did not answer over TLS in {READY_TIMEOUT_S:.0f} s:\n{caddy.log_tail()}")
        time.sleep(0.1)


def _handshake(caddy: Caddy) -> bool:
    """Whether Caddy completes a TLS handshake with a certificate its CA signed."""
    try:
        with (socket.create_connection(("127.0.0.1", caddy.port), timeout=2) as raw,
              caddy.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")):
            return True
    except (OSError, ssl.SSLError):
        return False
