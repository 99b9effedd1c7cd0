"""A throw-away local mosquitto for the demo and the tests (loopback only).

Never the system broker on 1883: we pick a free port, write our own config,
and own the process, so callers can kill, restart, pause and resume it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from firmware_sim import procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerMissing(RuntimeError):
    pass


class LocalBroker:
    def __init__(
        self,
        workdir: str | None = None,
        port: int | None = None,
        persistence: bool = True,
        extra_conf: str = "",
        tls_port: int | None = None,
    ) -> None:
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None)
        if exe is None:
            raise BrokerMissing("mosquitto is not installed (Debian package 'mosquitto'); "
                                "run ./dev.sh setup")
        self.exe = exe
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="kidsafe-broker-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"

    def conf_text(self) -> str:
        lines = [
            "user root" if os.geteuid() == 0 else "",  # root would drop to 'mosquitto' otherwise
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "password_file" not in self.extra_conf else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            self.extra_conf,
        ]
        return "\n".join(x for x in lines if x) + "\n"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.proc = procs.spawn_listening([self.exe, "-c", str(conf)], self.log_path,
                                                  self.port, "mosquitto", timeout)
                return self
            except RuntimeError as e:
                # Our port is free between a stop and a start (restart()); a client of
                # another process may hold it briefly as its local port. Wait that out.
                if "Address already in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM lets mosquitto save its persistence file; SIGKILL models a crash."""
        procs.end(self.proc, sig, timeout)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
