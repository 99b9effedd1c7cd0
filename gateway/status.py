"""`gatewayd status`: the running daemon's health, asked over its local socket.

Human output for a technician at the box, ``--json`` for scripts (the same
document the daemon answers: its health message plus broker, clock, disk and
worker state).
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from gateway import control
from gateway.config import Config


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} days"


def render(doc: dict[str, Any], cfg: Config) -> list[str]:
    kinds = {r.id: r.kind for r in cfg.readers}
    lines = [f"gatewayd {doc.get('software', '?')}: unit {doc.get('unit')} "
             f"(pid {doc.get('pid', '?')}), up {_age(doc.get('uptime_s'))}"]
    if conf := doc.get("config"):  # versions: SHA-256 of the files (the `config` command)
        trial = conf.get("trial")
        lines.append(f"config    {str(conf.get('version'))[:12]} (previous "
                     f"{str(conf.get('previous') or '-')[:12]})"
                     + (f"; ON TRIAL, rolled back to {trial['previous'][:12]} unless the "
                        f"broker is reached within {trial['deadline_s']:g} s" if trial else ""))
    workers = doc.get("workers", {})
    hung = {n: w for n, w in workers.items() if w != "ok"}
    lines.append("workers   " + ("all going" if not hung else
                                 "HUNG: " + ", ".join(f"{n} ({w})" for n, w in hung.items())))
    for rid, r in doc.get("readers", {}).items():
        rejects = ", ".join(f"{k} {v}" for k, v in sorted(r.get("rejects", {}).items()))
        detail = f" ({r['detail']})" if r.get("detail") else ""
        lines.append(f"reader    {rid}: {kinds.get(rid, '?')}, {r['state']}{detail}"
                     + (f"; rejects: {rejects}" if rejects else ""))
    buf, mq = doc.get("buffer", {}), doc.get("mqtt", {})
    lanes = ", ".join(f"{k} {v}" for k, v in buf.get("depth_by_lane", {}).items())
    dropped = buf.get("dropped", {}).get("total", 0)
    lines.append(f"buffer    {buf.get('depth', 0)} events waiting ({lanes}); oldest unsent "
                 f"{_age(buf.get('oldest_unsent_age_s')) if buf.get('depth') else '-'}; "
                 f"last seq {buf.get('last_seq', 0)}; dropped {dropped}")
    # The buffer file's own faults (gateway/outbox.py): what happened, and what it left.
    for inc in buf.get("incidents", []):
        lines.append(f"buffer    {inc['reason'].upper()} at {inc['at']}: {inc['salvaged']} events "
                     f"saved, up to {inc['lost_max']} seqs lost"
                     + (f"; kept as {inc['moved_to']}" if inc.get("moved_to") else ""))
    if buf.get("awaiting_receipt") is not None:
        # Receipt mode: still in the buffer (counted in "waiting") until the backend says so.
        lines.append(f"buffer    {buf['awaiting_receipt']} awaiting the backend's receipt "
                     f"(sent, the broker has them; receipts {mq.get('receipts', 0)}, refused "
                     f"{mq.get('receipts_refused', 0)})")
    if buf.get("acks_not_recorded"):
        lines.append(f"buffer    {buf['acks_not_recorded']} acknowledged events not yet deleted "
                     "(the card is full or read-only; retried)")
    br, mq = doc.get("broker", {}), doc.get("mqtt", {})
    state = f"connected (MQTT {br.get('protocol')})" if br.get("connected") else "NOT CONNECTED"
    ack = br.get("last_ack")
    lines.append(f"broker    {br.get('address')} {state}; last ack "
                 + (f"{ack} ({_age(br.get('last_ack_age_s'))} ago)" if ack else "none yet")
                 + f"; sent {mq.get('sent', 0)}, acked {mq.get('acked', 0)}, "
                 f"connects {mq.get('connects', 0)}")
    sb = mq.get("standby")
    if sb:  # [broker] standby_host: the emergency lane's second connection
        lines.append(f"standby   {sb['address']} "
                     f"{'connected' if sb['connected'] else 'NOT CONNECTED'}; emergency events "
                     f"sent on it {sb['sent']}, deleted {sb['deleted']}; connects {sb['connects']}")
    ck = doc.get("clock") or {}
    sync = {True: "synchronised", False: "NOT synchronised", None: "sync unknown"}[
        ck.get("synchronized")]
    err = f", max error {ck['max_error_s']:g} s" if ck.get("max_error_s") is not None else ""
    lines.append(f"clock     {doc.get('time')}: {sync} (source {ck.get('source', '?')}{err})"
                 + (f"; GPS times rejected: {ck['gps_untrusted']}" if ck.get("gps_untrusted")
                    else ""))
    dk = doc.get("disk")
    if dk:
        lines.append(f"disk      {dk['path']}: {dk['free_mb']:.0f} MB free of "
                     f"{dk['total_mb']:.0f} MB ({dk['free_pct']:.0f} %)"
                     + (f"; the buffer keeps {buf['reserve_mb']:g} MB free"
                        if buf.get("reserve_mb") is not None else ""))
    ro = doc.get("roster")
    if ro:  # docs/privacy.md: version 0 is the config's [[tags]]
        lines.append(f"roster    version {ro['version']}"
                     + (" (the config's tags)" if ro["version"] == 0 else " (from the backend)")
                     + f": {ro['tags']} tags of {ro['children']} children; pseudonym term "
                     f"{ro['term'] or 'none'}; checksum {ro['checksum'][:16]}")
    counters = doc.get("counters", {})
    if counters:
        lines.append("counters  " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return lines


def main_status(cfg: Config, as_json: bool, out: TextIO, err: TextIO) -> int:
    path = control.socket_path(cfg.buffer.path)
    try:
        doc = control.query(path)
    except control.NotRunning as e:
        print(f"gatewayd status: {e}", file=err)
        return 1
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    else:
        for line in render(doc, cfg):
            print(line, file=out)
    hung = any(w != "ok" for w in doc.get("workers", {}).values())
    return 3 if hung else 0
