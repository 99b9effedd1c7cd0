"""``gatewayd decode uhf_chafon FILE`` on the shared Chafon captures (a hex dump of the
UHFReader288 answers), as a technician would run it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from captures import jsonl
from gateway import decode


def test_decode_the_288_captures(tmp_path: Path) -> None:
    rows = [r for r in jsonl("uhf", "frames.jsonl")
            if r["direction"] == "reader_to_host"
            and r["protocol"] in ("chafon", "chafon_uhfreader288")]
    dump = tmp_path / "capture.hex"
    dump.write_text("\n".join(r["frame_hex"] for r in rows) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert decode.main_decode("uhf_chafon", dump, out, err) == 0, err.getvalue()
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    tags = [[t["epc"] for t in d["tags"]] for d in got if d.get("frame") == "ChafonInventory"]
    assert tags == [[t["epc"].upper() for t in r["expected"]["tags"]] for r in rows
                    if r["valid"] and "tags" in r["expected"]]
    # The bad-CRC and the cut capture are rejected with their reason, nothing invented.
    assert [d["reason"] for d in got if not d["ok"]] == [
        "checksum" if "checksum" in r["note"] else "truncated" for r in rows if not r["valid"]]
    assert len(got) == len(rows)
