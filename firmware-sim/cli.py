"""kidsafe-sim: simulated readers for technicians, and the end-to-end demo.

"kidsafe-sim run SCENARIO.toml" starts every device a scenario names (UHF
R2000 and NMEA GPS on ptys, BLE tags on a mock BlueZ, RDM6300), prints where
they are and the [[readers]] and [[tags]] to paste into a gateway config,
then plays the steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from firmware_sim import procs, simulator
from firmware_sim import scenario as scen
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.simulator import Context, Started
from firmware_sim.vserial import VirtualSerial
from gateway.model import canonical_tag_id

REPO = Path(__file__).resolve().parent.parent


def _say(msg: str) -> None:
    print(f"[sim] {msg}", flush=True)


def cmd_rdm6300(args: argparse.Namespace) -> int:
    try:
        sc = scen.load(args.scenario) if args.scenario else None
    except scen.ScenarioError as e:
        print(f"kidsafe-sim: {e}", file=sys.stderr)
        return 2
    port = VirtualSerial(args.link)
    device = port.plug()
    sim = Rdm6300Sim(port)
    _say(f"RDM6300 reader simulator: device {device}" +
         (f", link {args.link}" if args.link else ""))
    _say(f'put  port = "{port.path}"  in the reader\'s [[readers]] section')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if sc is not None:
            while not stop.is_set():
                _say(f"scenario {sc.name}: {len(sc.steps)} steps, {sc.duration:.1f} s")
                sim.run(sc, stop)
                if not args.loop:
                    break
            if not args.stay:
                return 0
        _say("by hand: type a tag id (10 hex digits) and Enter to present it; "
             "'garbage', 'unplug', 'plug', 'quit'")
        for line in sys.stdin:
            word = line.strip()
            if word in ("quit", "exit"):
                break
            if word == "garbage":
                sim.garbage()
            elif word == "unplug":
                port.unplug()
                _say("unplugged")
            elif word == "plug":
                _say(f"plugged in: {port.plug()}")
            elif re.fullmatch(r"[0-9A-Fa-f]{10}", word):
                sim.present(word.upper(), 0.5)
                _say(f"presented {word.upper()}")
            elif word:
                _say(f"not understood: {word!r}")
        else:
            stop.wait()  # stdin closed (a service): keep the device until stopped
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Broker + simulated reader + gatewayd + a backend subscriber, all local."""
    if args.chain:
        from firmware_sim import city

        try:
            return city.run(args)
        except KeyboardInterrupt:  # during the start: everything started is ended already
            return 130
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"kidsafe-sim demo: {e}", file=sys.stderr)
            return 2
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from firmware_sim.broker import BrokerMissing, LocalBroker, free_port

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kidsafe-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        broker = LocalBroker(str(work / "broker"), port=free_port()).start()
    except BrokerMissing as e:
        print(f"kidsafe-sim demo: {e}", file=sys.stderr)
        return 2
    _say(f"mosquitto listening on 127.0.0.1:{broker.port} (log {broker.log_path})")
    link = str(work / "ttyRFID0")
    port = VirtualSerial(link)
    port.plug()
    _say(f"simulated RDM6300 reader on {port.device}, linked as {link}")
    text = (REPO / "config" / "demo.toml").read_text()
    text = text.replace("/tmp/kidsafe-demo", str(work))
    text = re.sub(r"(?m)^port = 18883$", f"port = {broker.port}", text)
    cfg_path = work / "gateway.toml"
    cfg_path.write_text(text)
    sc = scen.load(str(REPO / "config" / "demo-scenario.toml"))
    expected = sum(1 for s in sc.steps if s.action == "present" and s.args.get("enrolled", True))
    noise = noise_fed(sc)
    got: list[dict[str, object]] = []
    health: list[tuple[float, dict[str, Any]]] = []  # (when received, body)
    ready = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = msg.payload.decode(errors="replace")
        if isinstance(body, dict) and msg.topic.endswith("/health"):
            health.append((time.monotonic(), body))
        if isinstance(body, dict) and "/event/" in msg.topic:
            got.append(body)
            print(f"[backend] {msg.topic}  seq={body.get('seq')} child={body.get('child')} "
                  f"reader={body.get('reader')} time={body.get('time')}", flush=True)
        else:
            print(f"[backend] {msg.topic}  {json.dumps(body)[:160]}", flush=True)

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-backend")
    sub.on_message = on_message

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe("kidsafe/v1/#", qos=1)
        ready.set()

    sub.on_connect = on_connect
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    ready.wait(5)
    _say(f"backend subscriber on kidsafe/v1/#; starting gatewayd with {cfg_path}")
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg_path)],
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    reader_online = threading.Event()

    def echo() -> None:  # the gateway's log as before, watched for its reader coming online
        assert gw.stdout is not None
        for line in gw.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if "reader gate-main: online" in line:
                reader_online.set()

    threading.Thread(target=echo, daemon=True).start()
    rc = 0
    try:
        # Play once the driver has the port open (a slow start on a busy machine took
        # longer than any fixed wait), and a little after: pyserial flushes input on open.
        reader_online.wait(30)
        time.sleep(0.5)
        _say(f"scenario '{sc.name}': {len(sc.steps)} steps over {sc.duration:.0f} s "
             f"({expected} presentations of enrolled cards)")
        _say("noise fed in on the way: " + "; ".join(noise))
        Rdm6300Sim(port).run(sc)
        played = time.monotonic()
        deadline = played + 5
        while len(got) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        _say(f"backend received {len(got)} gate events; the scenario presented "
             f"{expected} enrolled cards")
        # The next health message counts what the gateway refused (sent every interval_s).
        deadline = time.monotonic() + 15
        while not any(t > played for t, _ in health) and time.monotonic() < deadline:
            time.sleep(0.1)
        counted = noise_counted(next((b for t, b in health if t > played), None))
        _say(counted[1])
        rc = 0 if len(got) == expected and counted[0] else 1
        if args.stay:
            _say("still running: type tag ids into another 'kidsafe-sim' or press Ctrl-C")
            while gw.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        procs.end(gw)
        sub.loop_stop()
        port.close()
        broker.stop()
    _say(f"done; files in {work}")
    return rc


def noise_fed(sc: scen.Scenario) -> list[str]:
    """What the demo scenario feeds the reader besides enrolled cards, in words."""
    words = []
    for s in sc.steps:
        if s.action == "garbage":
            words.append(f"{s.args.get('bytes', 16)} garbage bytes at {s.at:g} s")
        elif s.action == "bad_checksum":
            words.append(f"a frame with a bad checksum at {s.at:g} s")
        elif s.action == "present" and not s.args.get("enrolled", True):
            words.append(f"a visitor's card {s.args.get('tag')} (not enrolled) at {s.at:g} s")
    return words


def noise_counted(health: dict[str, Any] | None) -> tuple[bool, str]:
    """(rejects and the visitor counted?, a line saying what the gateway counted)."""
    if health is None:
        return False, "no health message from the gateway: cannot show the noise counted"
    rejects = {rid: r.get("rejects", {}) for rid, r in health.get("readers", {}).items()}
    visitors = int(health.get("counters", {}).get("unenrolled_reads", 0))
    shown = "; ".join(f"reader {rid} rejected " + (", ".join(f"{n} {why}" for why, n in
                                                             sorted(rj.items())) or "nothing")
                      for rid, rj in rejects.items())
    ok = any(rejects.values()) and visitors > 0
    return ok, (f"the gateway's health message: {shown}; {visitors} read(s) of cards that are "
                "not enrolled (counted only, never stored or sent)")


# -- kidsafe-sim run: every simulated device a scenario needs ------------------------------


@dataclass
class _Running:
    """One started device of a scenario and its [[readers]] snippet."""

    dev: scen.Device
    started: Started

    @property
    def reader(self) -> dict[str, Any]:
        return {"id": self.dev.id, **self.started.reader, **self.dev.reader}


def readers_snippet(readers: list[dict[str, Any]]) -> str:
    """``[[readers]]`` tables to paste into a config, whatever their length.

    tomli-w writes a short list of tables inline (``readers = [{...}]``), which pasted
    after another table would land inside it. A top-level table it always writes under a
    ``[readers]`` header (sub-tables as ``[readers.x]``), so each reader is dumped as one
    and its header turned into ``[[readers]]``.
    """
    parts = []
    for reader in readers:
        body = tomli_w.dumps({"readers": reader})
        parts.append("[[readers]]\n" + body.removeprefix("[readers]\n"))
    return "\n".join(parts)


_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")  # a BLE address, not a tag id


def simulated_tags(sc: scen.MultiScenario, running: list[_Running]) -> list[str]:
    """Ids of the tags a scenario simulates, in order of appearance: those its steps present
    (a step with ``enrolled = false`` is a visitor: left out) and those a device declares."""
    ids: dict[str, None] = {}
    for r in running:
        ids.update(dict.fromkeys(r.started.tags))
    for step in sc.steps:
        tag = step.args.get("tag")
        if isinstance(tag, str) and not _ADDRESS.match(tag) and step.args.get("enrolled", True):
            ids[canonical_tag_id(tag)] = None
    return list(ids)


def tags_snippet(tags: list[str]) -> str:
    """``[[tags]]`` tables with made-up child references to replace with real ones."""
    return "\n".join("[[tags]]\n" + tomli_w.dumps({"id": t, "child": f"child-{i:02d}"})
                     for i, t in enumerate(tags, 1))


def _start_devices(sc: scen.MultiScenario, ctx: Context) -> list[_Running]:
    """Start each device through its kind's declared simulator (see firmware_sim.simulator)."""
    running = []
    for dev in sc.devices:
        sim = simulator.get(dev.kind)
        running.append(_Running(dev, sim.start(dev.id, sim.with_defaults(dev.settings), ctx)))
    return running


def play(sc: scen.MultiScenario, running: list[_Running], stop: threading.Event) -> None:
    """Start each step at its time; wait for the scenario's duration."""
    by_id = {r.dev.id: r for r in running}
    threads = []
    t0 = time.monotonic()
    for step in sc.steps:
        if stop.wait(max(0.0, t0 + step.at - time.monotonic())):
            break
        _say(f"t={step.at:5.1f}s {step.device}: {step.action} "
             + " ".join(f"{k}={v}" for k, v in step.args.items()))
        th = threading.Thread(target=by_id[step.device].started.act,
                              args=(step.action, step.args, stop), daemon=True)
        th.start()
        threads.append(th)
    stop.wait(max(0.0, t0 + sc.duration_s - time.monotonic()))
    for th in threads:
        th.join(0.1)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        sc = scen.load_multi(args.scenario)
    except scen.ScenarioError as e:
        print(f"kidsafe-sim: {e}", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        ctx = Context(work, stack)
        try:
            running = _start_devices(sc, ctx)
        except (OSError, RuntimeError, ValueError, TypeError, KeyError) as e:
            print(f"kidsafe-sim: cannot start the devices: {e}", file=sys.stderr)
            return 2
        _say(f"scenario '{sc.name}': {len(sc.devices)} devices, {len(sc.steps)} steps, "
             f"{sc.duration_s:.0f} s")
        if sc.description:
            _say(sc.description)
        for r in running:
            _say(f"device {r.dev.id} ({r.dev.kind}): {r.started.where}")
        if ctx.env:
            _say("start gatewayd with this in its environment:")
            for k, v in ctx.env.items():
                print(f"{k}={v}", flush=True)
        tags = simulated_tags(sc, running)
        _say("config for gatewayd: the readers"
             + (" and the simulated tags (child references made up: use real ones):"
                if tags else " (this scenario simulates no tags to enrol):"))
        print(readers_snippet([r.reader for r in running]), flush=True)
        if tags:
            print(tags_snippet(tags), flush=True)
        try:
            if args.start_delay > 0:
                _say(f"playing in {args.start_delay:g} s (start gatewayd now)")
                stop.wait(args.start_delay)
            while not stop.is_set():
                play(sc, running, stop)
                if not args.loop:
                    break
            _say("scenario done" + ("; devices stay until Ctrl-C" if args.stay else ""))
            if args.stay:
                stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kidsafe-sim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("rdm6300", help="a simulated RDM6300 125 kHz reader on a pty")
    r.add_argument("--link", default="/tmp/kidsafe/ttyRFID0",
                   help="stable path to put in the config (default %(default)s)")
    r.add_argument("--scenario", metavar="FILE", help="TOML scenario (see config/*scenario*)")
    r.add_argument("--loop", action="store_true", help="repeat the scenario until stopped")
    r.add_argument("--stay", action="store_true",
                   help="after the scenario, keep the device and take tags by hand")
    r.set_defaults(func=cmd_rdm6300)
    d = sub.add_parser("demo", help="local broker + simulated reader + gatewayd + subscriber")
    d.add_argument("--workdir", help="where to keep the demo's files (default: a temp dir)")
    d.add_argument("--stay", action="store_true", help="keep running after the scenario")
    d.add_argument("--chain", action="store_true",
                   help="the whole chain: two units, kidsafe-backend, PostgreSQL and the "
                        "operator page (./dev.sh demo)")
    d.add_argument("--port", type=int, default=0,
                   help="--chain: the operator page's port (default: a free one)")
    d.add_argument("--for", dest="run_for", type=float, metavar="S",
                   help="--chain: end S seconds after the scenario started (default: Ctrl-C)")
    d.set_defaults(func=cmd_demo)
    rn = sub.add_parser("run", help="every simulated device a scenario needs, then play it "
                                    "(see config/scenarios/)")
    rn.add_argument("scenario", metavar="SCENARIO.toml")
    rn.add_argument("--workdir", default="/tmp/kidsafe-sim",
                    help="where device links and the private D-Bus go (default %(default)s)")
    rn.add_argument("--start-delay", type=float, default=5.0, metavar="S",
                    help="seconds between starting the devices and playing (default %(default)s)")
    rn.add_argument("--loop", action="store_true", help="repeat the scenario until stopped")
    rn.add_argument("--stay", action="store_true", help="keep the devices after the scenario")
    rn.set_defaults(func=cmd_run)
    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
