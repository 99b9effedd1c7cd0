"""A RabbitMQ 3.10 cluster on this machine: N nodes with the MQTT plugin on loopback ports.

For the fleet test, the fleet bench and a technician trying the gateway against a
clustered broker. Debian's ``rabbitmq-server`` package (``./dev.sh setup`` installs it
without starting its system node). Everything lives in one directory: the Erlang cookie
(``home/.erlang.cookie``, the ``HOME`` of every node and CLI call), each node's config,
mnesia and logs, and ``cluster.json`` (ports and pids).

Why it is started the way it is (../shared/notes/backend-and-fleet.md has the tests):
- The nodes and their own epmd are direct children of this process (``Popen``, waited
  for): a container's PID 1 may not reap orphans, and a daemonized epmd outlives the
  nodes. Each cluster has its own epmd port, so two clusters may both name their nodes
  ``rabbit1@localhost``.
- The scripts in /usr/lib/rabbitmq/bin are called directly: the /usr/sbin wrappers
  ``su rabbitmq`` and use the system cookie.
- Node 1 boots alone; the others join it at their first boot through classic-config
  peer discovery (no ``stop_app; join_cluster; start_app`` per node: each CLI call
  starts an Erlang VM, 0.4-1 s of CPU on a 2-core machine).
- A node is ready when its MQTT listener accepts connections (the plugin starts last).
- Downed nodes are restarted together: a node restarted while another is still down
  blocks in the MQTT plugin's boot until a majority is back.
- Durable MQTT subscriptions (clean_session off) are quorum queues, replicated on every
  node: the backend's queue and each unit's command/receipt queue survive a node's death.

CLI (``python -m fleet.cluster``): ``start DIR`` runs the cluster in the foreground
(Ctrl-C or ``stop DIR`` ends it) and answers ``status DIR``, ``kill DIR N``,
``restart DIR N [N...]`` and ``stop DIR`` over a Unix socket in DIR, so the nodes stay its
children.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "epmd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout):
        return True
    return False


def proc_state(pid: int) -> str:
    """The kernel's state letter of ``pid`` ('' if gone; 'Z' a zombie: gone too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class NodePorts:
    name: str  # rabbitN@localhost
    amqp: int
    dist: int
    mqtt: int


@dataclass(frozen=True)
class Layout:
    root: str
    epmd: int
    nodes: tuple[NodePorts, ...]

    @staticmethod
    def fresh(root: Path, size: int) -> Layout:
        nodes = tuple(NodePorts(f"rabbit{i}@localhost", free_port(), free_port(), free_port())
                      for i in range(1, size + 1))
        return Layout(str(root), free_port(), nodes)

    @staticmethod
    def load(root: Path) -> Layout:
        d = json.loads((root / "cluster.json").read_text())
        return Layout(d["root"], d["epmd"], tuple(NodePorts(**n) for n in d["nodes"]))

    def dump(self, pids: dict[str, int]) -> str:
        return json.dumps({**asdict(self), "pids": pids}, indent=1)


@dataclass(frozen=True)
class Settings:
    """What the nodes are told (rabbitmq.conf); defaults for the fleet."""

    # Unacknowledged deliveries per MQTT subscriber (RabbitMQ's default is 10: one
    # consumer, the backend, would then wait a round trip per 10 events).
    mqtt_prefetch: int = 64
    memory_watermark: float = 0.2  # of the machine's RAM, per node


class ClusterError(RuntimeError):
    pass


class Cluster:
    """The nodes of one cluster; ``with Cluster(dir).start() as c:`` stops them at the end."""

    def __init__(self, root: Path, size: int = 3, settings: Settings | None = None) -> None:
        self.root = Path(root).resolve()
        self.size = size
        self.settings = settings or Settings()
        self.layout = Layout.fresh(self.root, size)
        self.epmd: subprocess.Popen[bytes] | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # node number -> its wrapper sh
        self._log_marks: dict[int, int] = {}  # node number -> its log's size at its spawn

    # -- addresses ---------------------------------------------------------------------------

    def node(self, i: int) -> NodePorts:
        return self.layout.nodes[i - 1]

    def mqtt_port(self, i: int) -> int:
        return self.node(i).mqtt

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt for n in self.layout.nodes]

    def _dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self, i: int) -> dict[str, str]:
        """The environment of node ``i`` and of CLI calls aimed at it."""
        n, d = self.node(i), self._dir(i)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home), ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(self.layout.epmd),
            RABBITMQ_NODENAME=n.name, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(n.amqp), RABBITMQ_DIST_PORT=str(n.dist),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "beam.pid"), RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # -- files -------------------------------------------------------------------------------

    def _write_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        for i in range(1, self.size + 1):
            self._write_node(i)

    def _write_node(self, i: int) -> None:
        first = self.node(1).name
        n, d = self.node(i), self._dir(i)
        (d / "log").mkdir(parents=True, exist_ok=True)
        conf = [
            f"listeners.tcp.default = 127.0.0.1:{n.amqp}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{n.mqtt}",
            "mqtt.durable_queue_type = quorum",
            "mqtt.allow_anonymous = true",
            f"mqtt.prefetch = {self.settings.mqtt_prefetch}",
            "loopback_users = none",
            f"vm_memory_high_watermark.relative = {self.settings.memory_watermark}",
            "log.console = false",
            "log.file.level = info",
        ]
        if i > 1:  # joins node 1 at its first boot (peer discovery runs on a blank node only)
            conf += ["cluster_formation.peer_discovery_backend = classic_config",
                     f"cluster_formation.classic_config.nodes.1 = {first}"]
        (d / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (d / "advanced.config").write_text("[].\n")

    def _save(self) -> None:
        pids = {str(i): self.beam_pid(i) or 0 for i in range(1, self.size + 1)}
        (self.root / "cluster.json").write_text(self.layout.dump(pids))

    # -- processes ---------------------------------------------------------------------------

    def _log(self, i: int) -> Path:
        return self._dir(i) / "log" / f"{self.node(i).name}.log"

    def _spawn(self, i: int) -> None:
        d = self._dir(i)
        with contextlib.suppress(FileNotFoundError):
            (d / "beam.pid").unlink()
        try:
            self._log_marks[i] = self._log(i).stat().st_size
        except OSError:
            self._log_marks[i] = 0
        out = open(d / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[i] = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")], env=self.env(i), cwd=str(d),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()

    def beam_pid(self, i: int) -> int | None:
        """The Erlang VM's pid of node ``i`` (the wrapper shell's child), if it runs."""
        try:
            pid = int((self._dir(i) / "beam.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if proc_state(pid) in ("", "Z"):
            return None
        try:  # a pid file outlives its process: the pid may be someone else's by now
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"beam" in cmd and str(self.home).encode() in cmd else None

    def running(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.poll() is None and listening(self.mqtt_port(i))

    def _wait_ready(self, nodes: Sequence[int], timeout: float, fresh: bool = False) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(nodes)
        retries = 3
        while waiting:
            for i in sorted(waiting):
                p = self.procs[i]
                if p.poll() is not None and fresh and retries > 0 and (
                        "already_used" in self.log_tail(i) or "eaddrinuse" in self.log_tail(i)):
                    # A free port picked at the start was taken before the node bound it
                    # (other tests on the machine): a blank node may move to other ports.
                    retries -= 1
                    self._repick(i)
                    self._spawn(i)
                    continue
                if p.poll() is not None:
                    raise ClusterError(f"node {i} exited at start (rc {p.returncode}): "
                                       f"{self.log_tail(i)}")
                if listening(self.mqtt_port(i)) and self._serves_mqtt(i):
                    waiting.discard(i)
            if waiting and time.monotonic() > deadline:
                raise ClusterError(f"nodes {sorted(waiting)} not ready in {timeout:g} s: "
                                   + " | ".join(self.log_tail(i) for i in sorted(waiting)))
            if waiting:
                time.sleep(0.1)
        self._save()

    def _serves_mqtt(self, i: int) -> bool:
        """Node ``i`` says, since its spawn, that it listens on its MQTT port: a port that
        accepts may be another process's (the one that took it from a blank node)."""
        try:
            with open(self._log(i), "rb") as f:
                f.seek(self._log_marks.get(i, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return f"started MQTT TCP listener on 127.0.0.1:{self.mqtt_port(i)}" in text

    def _repick(self, i: int) -> None:
        nodes = list(self.layout.nodes)
        nodes[i - 1] = NodePorts(nodes[i - 1].name, free_port(), free_port(), free_port())
        self.layout = Layout(self.layout.root, self.layout.epmd, tuple(nodes))
        d = self._dir(i)
        for f in [d / "stdout.log", *(d / "log").glob("*.log")]:
            f.unlink(missing_ok=True)
        shutil.rmtree(d / "mnesia", ignore_errors=True)
        self._write_node(i)

    def log_tail(self, i: int, n: int = 1500) -> str:
        d = self._dir(i)
        text = ""
        for f in [d / "stdout.log", *sorted((d / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                text += f"[{f.name}] " + f.read_text(errors="replace")[-n:]
        return text[-2 * n:]

    def start(self, timeout: float = 90.0) -> Cluster:
        """Start epmd and every node; return once all of them are clustered and serve MQTT."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_files()
        out = open(self.root / "epmd.log", "ab")  # noqa: SIM115 - handed to the child
        self.epmd = subprocess.Popen(
            [EPMD, "-port", str(self.layout.epmd), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 5
        while not listening(self.layout.epmd):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"epmd did not start on {self.layout.epmd}")
            time.sleep(0.05)
        try:
            self._spawn(1)
            self._wait_ready([1], timeout, fresh=True)
            rest = list(range(2, self.size + 1))
            for i in rest:
                self._spawn(i)
            self._wait_ready(rest, timeout, fresh=True)
            self.wait_members(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def members(self) -> list[str]:
        """The running members as node 1 (or the first running node) sees them."""
        for i in range(1, self.size + 1):
            if not self.running(i):
                continue
            r = self.ctl(i, "cluster_status", "--formatter", "json", timeout=30)
            if r.returncode == 0:
                return sorted(json.loads(r.stdout).get("running_nodes", []))
        return []

    def wait_members(self, timeout: float = 30.0) -> None:
        want = sorted(n.name for n in self.layout.nodes)
        deadline = time.monotonic() + timeout
        while True:
            have = self.members()
            if have == want:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster has {have}, expected {want}")
            time.sleep(1)

    def ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE_i ARGS`` (an Erlang VM of its own: about a second of CPU)."""
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node(i).name, *args],
                              env=self.env(i), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s Erlang VM (a crash: no goodbye to the cluster or clients)."""
        pid = self.beam_pid(i)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p = self.procs.get(i)
        if p is not None:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        deadline = time.monotonic() + 10
        while listening(self.mqtt_port(i)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop_node(self, i: int, timeout: float = 30.0) -> None:
        """Stop node ``i`` gracefully (SIGTERM to its wrapper), then by force."""
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(i)
        # The wrapper gone and its Erlang VM not (a wrapper killed by someone else): end it.
        pid = self.beam_pid(i)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.beam_pid(i) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.beam_pid(i) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def restart(self, *nodes: int, timeout: float = 120.0) -> float:
        """Start the given (downed) nodes together on their data; seconds until all serve."""
        t0 = time.monotonic()
        for i in nodes:
            if self.procs.get(i) is not None and self.procs[i].poll() is None:
                raise ClusterError(f"node {i} still runs")
            self._spawn(i)
        self._wait_ready(list(nodes), timeout)
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop every node (together: one by one, the last would wait for the others) and
        epmd."""
        threads = [threading.Thread(target=self.stop_node, args=(i,))
                   for i in range(1, self.size + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(5)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait(5)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for i in range(1, self.size + 1):
            pid = self.beam_pid(i)
            out.append({"node": i, "name": self.node(i).name, "mqtt_port": self.mqtt_port(i),
                        "running": self.running(i), "beam_pid": pid,
                        "rss_mb": round(rss_mb(pid), 1) if pid else 0.0})
        return out

    def rss_mb(self) -> dict[int, float]:
        """Each running node's Erlang VM resident memory, MB."""
        return {i: rss_mb(pid) for i in range(1, self.size + 1)
                if (pid := self.beam_pid(i)) is not None}

    def cpu_seconds(self) -> dict[int, float]:
        return {i: cpu_seconds(pid) for i in range(1, self.size + 1)
                if (pid := self.beam_pid(i)) is not None}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3, settings: Settings | None = None
                    ) -> Iterator[Cluster]:
    c = Cluster(root, size, settings).start()
    try:
        yield c
    finally:
        c.stop()


# -- the CLI: a foreground supervisor answering on DIR/control.sock ---------------------------

def _serve(cluster: Cluster, stop: threading.Event) -> None:
    path = cluster.root / "control.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(None)
            words = conn.makefile().readline().split()
            try:
                reply = _command(cluster, words, stop)
            except Exception as e:  # a technician's typo must not end the cluster
                reply = {"error": str(e)}
            conn.sendall((json.dumps(reply) + "\n").encode())
    srv.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _command(cluster: Cluster, words: list[str], stop: threading.Event) -> Any:
    match words:
        case ["status"]:
            return {"nodes": cluster.status(), "epmd": cluster.layout.epmd}
        case ["kill", n]:
            cluster.kill(int(n))
            return {"killed": int(n)}
        case ["restart", *ns] if ns:
            took = cluster.restart(*(int(n) for n in ns))
            return {"restarted": [int(n) for n in ns], "seconds": round(took, 1)}
        case ["stop"]:
            stop.set()
            return {"stopping": True}
    return {"error": f"unknown command {' '.join(words)!r}"}


def _ask(root: Path, words: list[str], timeout: float = 180) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(root / "control.sock"))
    except OSError as e:
        print(f"no cluster running in {root} ({e}); start one with: start {root}",
              file=sys.stderr)
        return 1
    with s:
        s.sendall((" ".join(words) + "\n").encode())
        reply = s.makefile().readline()
    print(reply.strip())
    return 1 if "error" in json.loads(reply) else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fleet.cluster", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="run a cluster in DIR in the foreground")
    st.add_argument("dir", type=Path)
    st.add_argument("--nodes", type=int, default=3)
    for name, h in (("status", "nodes, ports, pids, memory"), ("stop", "stop every node")):
        p = sub.add_parser(name, help=h)
        p.add_argument("dir", type=Path)
    k = sub.add_parser("kill", help="SIGKILL node N")
    k.add_argument("dir", type=Path)
    k.add_argument("node", type=int)
    r = sub.add_parser("restart", help="start downed nodes N... together")
    r.add_argument("dir", type=Path)
    r.add_argument("nodes", type=int, nargs="+")
    a = ap.parse_args(argv)
    root = Path(a.dir).resolve()
    if a.cmd != "start":
        words = [a.cmd] + ([str(a.node)] if a.cmd == "kill" else [])
        words += [str(n) for n in getattr(a, "nodes", [])] if a.cmd == "restart" else []
        return _ask(root, words)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    t0 = time.monotonic()
    cluster = Cluster(root, a.nodes).start()
    try:
        print(f"cluster of {a.nodes} up in {time.monotonic() - t0:.1f} s; MQTT on 127.0.0.1 "
              f"ports {', '.join(map(str, cluster.mqtt_ports))}; {root}/cluster.json; "
              "Ctrl-C or `stop DIR` ends it", flush=True)
        server = threading.Thread(target=_serve, args=(cluster, stop), daemon=True)
        server.start()
        while not stop.is_set():
            stop.wait(0.5)
        server.join(2)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
