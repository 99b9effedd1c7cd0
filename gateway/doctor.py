"""`gatewayd doctor`: checks a box the way a technician would, each with what to fix.

Every check only looks: nothing is written, no MQTT session is opened (the
daemon's own session would be taken over), the buffer is opened read-only.
Run it as root or as the daemon's user; device permissions are judged for the
daemon's user (``kidsafe`` when it exists), not for whoever runs the doctor.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from gateway import control, sysinfo
from gateway.config import Config
from gateway.outbox import BufferReadError, Outbox

DAEMON_USER = "kidsafe"
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: str  # "ok", "warn", "fail", "skip"
    detail: str
    fix: str = ""


def _daemon_user() -> tuple[str, int, set[int]]:
    """Name, uid and groups of the user the unit runs as (else whoever runs us)."""
    try:
        pw = pwd.getpwnam(DAEMON_USER)
    except KeyError:
        pw = pwd.getpwuid(os.getuid())
    groups = {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem} | {pw.pw_gid}
    return pw.pw_name, pw.pw_uid, groups


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_daemon(cfg: Config) -> list[Check]:
    try:
        doc = control.query(control.socket_path(cfg.buffer.path), timeout_s=TIMEOUT_S)
    except control.NotRunning as e:
        return [Check("daemon", "warn", str(e),
                      "systemctl start kidsafe-gatewayd; journalctl -u kidsafe-gatewayd "
                      "says why it stopped")]
    hung = {n: w for n, w in doc.get("workers", {}).items() if w != "ok"}
    if hung:
        return [Check("daemon", "fail", f"pid {doc.get('pid')}: hung workers: {hung}",
                      "systemd's watchdog restarts it; if it does not, systemctl restart "
                      "kidsafe-gatewayd, and report the journal lines before the hang")]
    return [Check("daemon", "ok", f"running, pid {doc.get('pid')}, "
                                  f"up {doc.get('uptime_s', 0):.0f} s")]


def check_serial(cfg: Config) -> list[Check]:
    out = []
    user, uid, groups = _daemon_user()
    for r in cfg.readers:
        port = getattr(r.options, "port", None)
        if not isinstance(port, str):
            continue
        name = f"serial {r.id}"
        try:
            st = os.stat(port)
        except FileNotFoundError:
            out.append(Check(name, "fail", f"{port} does not exist",
                             "plug the reader in; `ls -l /dev/serial/by-id/` lists the "
                             f"adapters: put that path in the reader's port ({r.id})"))
            continue
        except OSError as e:
            out.append(Check(name, "fail", f"{port}: {e}", "check the path and its folders"))
            continue
        real = os.path.realpath(port)
        if not stat.S_ISCHR(st.st_mode):
            out.append(Check(name, "fail", f"{port} ({real}) is not a serial device",
                             "point port at the adapter's /dev/serial/by-id/ link"))
            continue
        mode, group = st.st_mode, _group(st.st_gid)
        can = ((st.st_uid == uid and mode & 0o600 == 0o600)
               or (st.st_gid in groups and mode & 0o060 == 0o060)
               or mode & 0o006 == 0o006)
        where = f"{port} -> {real}, {stat.filemode(mode)} root:{group}"
        if can:
            out.append(Check(name, "ok", f"{where}; {user} may read and write it"))
        else:
            out.append(Check(name, "fail", f"{where}; {user} may not open it",
                             f"adduser {user} {group} (then restart the daemon)"))
    return out


async def _bluez_powered(adapter: str) -> bool:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), TIMEOUT_S)
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination="org.bluez", path=f"/org/bluez/{adapter}",
            interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
            body=["org.bluez.Adapter1", "Powered"])), TIMEOUT_S)
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        raise LookupError(reply.error_name if reply is not None else "no reply")
    return bool(reply.body[0].value)


def check_bluez(cfg: Config) -> list[Check]:
    out = []
    for r in cfg.readers:
        if r.kind != "ble":
            continue
        adapter = r.options.adapter
        name = f"bluez {r.id}"
        try:
            powered = asyncio.run(_bluez_powered(adapter))
        except ImportError as e:
            out.append(Check(name, "fail", f"BLE stack missing: {e}", "./dev.sh setup"))
        except LookupError as e:
            err = str(e)
            if "ServiceUnknown" in err or "NameHasNoOwner" in err:
                out.append(Check(name, "fail", "BlueZ is not running (no org.bluez on the "
                                 "system bus)", "apt install bluez; systemctl enable --now "
                                 "bluetooth"))
            else:
                out.append(Check(name, "fail", f"adapter {adapter}: {err}",
                                 "`bluetoothctl list` shows the adapters; set the reader's "
                                 "adapter, or plug the dongle in"))
        except Exception as e:  # dbus_fast's own errors, a refused or missing bus
            out.append(Check(name, "fail", f"system D-Bus not reachable: "
                             f"{type(e).__name__}: {e}", "systemctl status dbus"))
        else:
            if powered:
                out.append(Check(name, "ok", f"adapter {adapter} present and powered"))
            else:
                out.append(Check(name, "warn", f"adapter {adapter} is powered off",
                                 "bluetoothctl power on (or rfkill unblock bluetooth)"))
    return out


def check_gpsd(cfg: Config) -> list[Check]:
    out = []
    for r in cfg.readers:
        if r.kind != "gpsd":
            continue
        o = r.options
        where = f"{o.host}:{o.gpsd_port}"
        name = f"gpsd {r.id}"
        try:
            with socket.create_connection((o.host, o.gpsd_port), TIMEOUT_S) as s:
                s.settimeout(TIMEOUT_S)
                banner = s.recv(4096)
        except OSError as e:
            out.append(Check(name, "fail", f"gpsd at {where}: {e}",
                             "systemctl status gpsd gpsd.socket; gpsd must listen there "
                             "(GPSD_OPTIONS, or the reader's host/gpsd_port)"))
            continue
        if b'"VERSION"' in banner:
            out.append(Check(name, "ok", f"gpsd answers at {where}"))
        else:
            out.append(Check(name, "warn", f"{where} answered, but not like gpsd",
                             "check the reader's host and gpsd_port"))
    return out


def _private(path: str, what: str, fix_owner: str) -> Check | None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return Check(what, "warn", f"{path} is {stat.filemode(mode)}: readable by others",
                     f"chmod 600 {path}; chown {fix_owner} {path}")
    return None


def check_broker(cfg: Config) -> list[Check]:
    b = cfg.broker
    where = f"{b.host}:{b.port}"
    out: list[Check] = []
    user = _daemon_user()[0]
    pw = cfg.raw.get("broker", {}).get("password_file")
    if isinstance(pw, str) and pw:
        p = pw if pw.startswith("/") else str(Path(cfg.file).parent / pw)
        if (c := _private(p, "broker password file", user)) is not None:
            out.append(c)
    ctx: ssl.SSLContext | None = None
    if b.tls is not None:
        for what, f in (("ca_file", b.tls.ca_file), ("cert_file", b.tls.cert_file),
                        ("key_file", b.tls.key_file)):
            if f and not os.access(f, os.R_OK):
                out.append(Check(f"broker tls {what}", "fail", f"{f} cannot be read",
                                 f"install it there, readable by {user}"))
        if b.tls.key_file and (c := _private(b.tls.key_file, "broker tls key_file",
                                             user)) is not None:
            out.append(c)
        try:
            ctx = ssl.create_default_context(cafile=b.tls.ca_file)
            if b.tls.cert_file:
                ctx.load_cert_chain(b.tls.cert_file, b.tls.key_file)
            if b.tls.insecure_skip_hostname:
                ctx.check_hostname = False
        except (OSError, ssl.SSLError) as e:
            out.append(Check("broker tls files", "fail", f"cannot load: {e}",
                             "ca_file must be the CA (PEM); cert_file and key_file the "
                             "unit's certificate and its key"))
            return out
    try:
        with socket.create_connection((b.host, b.port), TIMEOUT_S) as raw:
            if ctx is not None:
                with ctx.wrap_socket(raw, server_hostname=b.host) as tls:
                    version = tls.version()
                out.append(Check("broker", "ok", f"{where} reachable, TLS handshake ok "
                                 f"({version}); MQTT login not tried (the daemon holds the "
                                 "session)"))
            else:
                out.append(Check("broker", "ok", f"{where} reachable (TCP); MQTT login not "
                                 "tried (the daemon holds the session)"))
    except ssl.SSLCertVerificationError as e:
        out.append(Check("broker", "fail", f"{where}: {e.verify_message}",
                         f"ca_file ({b.tls.ca_file if b.tls else '-'}) must be the CA that "
                         "signed the broker's certificate, and host its name"))
    except ssl.SSLError as e:
        out.append(Check("broker", "fail", f"{where}: TLS handshake failed: {e}",
                         "the broker may want a client certificate (cert_file, key_file), "
                         "or one its CA signed"))
    except OSError as e:
        out.append(Check("broker", "fail", f"{where}: {e}",
                         "check the network (ip route; ping), the broker's address and port, "
                         "and any firewall between"))
    return out


def check_clock(cfg: Config) -> list[Check]:
    c = sysinfo.clock_sync()
    err = f", max error {c.max_error_s:g} s" if c.max_error_s is not None else ""
    if c.synchronized:
        return [Check("clock", "ok", f"synchronised (source {c.source}{err})")]
    fix = ("timedatectl set-ntp true and check the network; with GPS only, gpsd + chrony "
           "keep it; events carry the unit's time")
    if c.synchronized is None:
        return [Check("clock", "warn", "cannot ask the kernel whether the clock is "
                                       "synchronised", fix)]
    return [Check("clock", "warn", f"NOT synchronised (source {c.source}{err})", fix)]


def check_disk(cfg: Config) -> list[Check]:
    d = sysinfo.disk(cfg.buffer.path)
    if d is None:
        return [Check("disk", "fail", f"cannot stat the filesystem of {cfg.buffer.path}",
                      "check that the buffer's folder exists (StateDirectory)")]
    detail = f"{d.path}: {d.free_mb:.0f} MB free of {d.total_mb:.0f} MB ({d.free_pct:.0f} %)"
    fix = ("free space there (journalctl --vacuum-size=50M, old recordings), or lower "
           "[buffer] max_mb")
    if d.free_mb < 64 or d.free_pct < 2:
        return [Check("disk", "fail", detail, fix)]
    if d.free_mb < cfg.buffer.max_mb:
        return [Check("disk", "warn", f"{detail}: less than the buffer cap "
                                      f"({cfg.buffer.max_mb:g} MB)", fix)]
    return [Check("disk", "ok", detail)]


def check_buffer(cfg: Config) -> list[Check]:
    path = cfg.buffer.path
    if not os.path.exists(path):
        return [Check("buffer", "ok", f"{path} not created yet (the daemon creates it)")]
    out = []
    user = _daemon_user()[0]
    for suffix in ("", "-wal", "-shm"):
        if (c := _private(path + suffix, "buffer permissions", user)) is not None:
            out.append(c)
    try:
        with Outbox.saved(path, timeout_s=TIMEOUT_S) as saved:
            problems = saved.quick_check()
            depth = saved.depth() if problems == ["ok"] else None
    except BufferReadError as e:
        return [*out, Check("buffer", "fail", str(e),
                            "stop the daemon, keep a copy of the file for forensics, and "
                            "see docs/operations.md, 'The buffer'")]
    if problems != ["ok"]:
        return [*out, Check("buffer", "fail", f"{path}: integrity check failed: "
                            + "; ".join(problems[:3]),
                            "stop the daemon, keep a copy of the file for forensics, and "
                            "see docs/operations.md, 'The buffer'")]
    return [*out, Check("buffer", "ok", f"{path}: integrity ok, {depth} events waiting")]


CHECKS: tuple[Callable[[Config], list[Check]], ...] = (
    check_daemon, check_serial, check_bluez, check_gpsd, check_broker, check_clock,
    check_disk, check_buffer)


def run_checks(cfg: Config) -> list[Check]:
    out: list[Check] = []
    for check in CHECKS:
        try:
            out.extend(check(cfg))
        except Exception as e:  # one broken check must not hide the others
            out.append(Check(check.__name__.removeprefix("check_"), "fail",
                             f"the check itself failed: {type(e).__name__}: {e}"))
    return out


MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "--  "}


def main_doctor(cfg: Config, as_json: bool, out: TextIO) -> int:
    checks = run_checks(cfg)
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2), file=out)
    else:
        for c in checks:
            print(f"{MARK[c.level]} {c.name}: {c.detail}", file=out)
            if c.fix and c.level != "ok":
                print(f"     fix: {c.fix}", file=out)
        fails = sum(c.level == "fail" for c in checks)
        warns = sum(c.level == "warn" for c in checks)
        print(f"{len(checks)} checks: {fails} failed, {warns} warnings", file=out)
    return 1 if any(c.level == "fail" for c in checks) else 0

