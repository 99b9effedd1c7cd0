"""Configs that passed check-config and then broke the unit (issue 11, item 7).

Each case is an error naming the key (``gatewayd run`` exits 2 before starting
anything, without a traceback) or, where the unit still works, a warning
(``check-config`` prints it and exits 0).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest

from drivers import registry
from gateway import cli, config
from gateway.checker import Checker, bounds, seconds
from gateway.options import option_spec
from harness import GOOD_CONFIG, gatewayd

GOOD = GOOD_CONFIG

SECOND_READER = """
[[readers]]
id = "gate-b"
kind = "rdm6300"
role = "gate"
port = "{port}"
"""

# (name, edit of GOOD, key named, words in the message)
ERRORS: list[tuple[str, str, str, str]] = [
    ("window-inf", "[gate]\nrepeat_window_s = inf\n", "gate.repeat_window_s", "finite"),
    ("window-nan", "[gate]\nrepeat_window_s = nan\n", "gate.repeat_window_s", "finite"),
    ("window-1e9", "[gate]\nrepeat_window_s = 1e9\n", "gate.repeat_window_s", "at most 600"),
    ("keepalive", "keepalive_s = 99999999", "broker.keepalive_s", "65535"),
    ("reconnect-max", "reconnect_max_s = 1e12", "broker.reconnect_max_s", "3600"),
    ("max-mb-inf", "[buffer]max_mb = inf", "buffer.max_mb", "finite"),
    ("max-events", "[buffer]max_events = 9000000000000", "buffer.max_events",
     "between 1 and 1000000000"),
    ("reserve", "[buffer]reserve_mb = -1", "buffer.reserve_mb", "between 0 and 1000000"),
    ("health", "[health]\ninterval_s = -inf\n", "health.interval_s", "finite"),
    ("engine-number", "[engine]\nrssi_window_s = inf\n", "engine.rssi_window_s", "finite"),
    ("engine-gate-pair", "[engine]\ngate_pair_s = 1e9\n", "engine.gate_pair_s", "600"),
    ("driver-option", "[reader]reconnect_max_s = inf", "readers[0].reconnect_max_s", "finite"),
    ("driver-baud", "[reader]baud = 99999999999", "readers[0].baud", "at most 4000000"),
    ("tag-empty", '[tag]id = ""', "tags[0].id", "must not be empty"),
    ("tag-blank", '[tag]id = "   "', "tags[0].id", "must not be empty"),
    ("tag-control", '[tag]id = "62E3086CED\\n"', "tags[0].id", "control characters"),
    ("tag-control-mid", '[tag]id = "62E3\\u0007086CED"', "tags[0].id", "control characters"),
    ("two-on-one-port", SECOND_READER.format(port="/dev/ttyUSB0"), "readers[1].port",
     "also the port of reader 'gate-a'"),
    ("prefix-wildcards", 'topic_prefix = "kidsafe/+/#"', "broker.topic_prefix", "wildcards"),
    ("prefix-hash", 'topic_prefix = "kidsafe/#"', "broker.topic_prefix", "wildcards"),
    ("prefix-empty-level", 'topic_prefix = "kidsafe//v1"', "broker.topic_prefix",
     "empty levels"),
    ("prefix-leading-slash", 'topic_prefix = "/kidsafe/v1"', "broker.topic_prefix",
     "start with '/'"),
    ("prefix-dollar", 'topic_prefix = "$SYS/kidsafe"', "broker.topic_prefix", "'$'"),
    ("prefix-empty", 'topic_prefix = ""', "broker.topic_prefix", "empty"),
    ("host-control", 'host = "broker\\n.example"', "broker.host", "control characters"),
]


def _edit(edit: str) -> str:
    """GOOD with one edit: ``[reader]k = v`` / ``[tag]k = v`` / ``[buffer]k = v`` replace or
    add a key in that table, a line ``k = v`` goes into [broker], a table is appended."""
    for marker, anchor in (("[reader]", 'port = "/dev/ttyUSB0"\n'),
                           ("[tag]", 'child = "c-1"\n'), ("[buffer]", 'path = "buf.db"\n')):
        if edit.startswith(marker):
            line = edit[len(marker):]
            key = line.split("=")[0].strip()
            text = GOOD
            if marker == "[tag]" and key == "id":
                return text.replace('id = "62e3086ced"', line)
            return text.replace(anchor, f"{anchor}{line}\n")
    if edit.startswith("\n") or edit.startswith("["):
        return GOOD + "\n" + edit
    if edit.startswith("host ="):
        return GOOD.replace('host = "127.0.0.1"', edit)
    return GOOD.replace("port = 1883\n", f"port = 1883\n{edit}\n")


def _write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize(("name", "edit", "key", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_names_the_key(tmp_path: Path, name: str, edit: str, key: str, words: str) -> None:
    f = _write(tmp_path, _edit(edit))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    found = {e.key: e.message for e in ei.value.errors}
    assert key in found, found
    assert words in found[key], found[key]


def test_run_refuses_every_error_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    """One ``gatewayd run`` per case (each a fresh folder): exit 2, the key on stderr, no
    traceback, no buffer created."""
    for name, edit, key, _words in ERRORS:
        d = tmp_path / name
        d.mkdir()
        f = _write(d, _edit(edit))
        r = gatewayd("run", "--config", str(f))
        assert r.returncode == 2, (name, r.stderr)
        assert f": {key}: " in r.stderr, (name, r.stderr)
        assert "Traceback" not in r.stderr, (name, r.stderr)
        assert not (d / "buf.db").exists(), name


def test_secret_files_readable_by_everyone_are_refused_with_the_chmod(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    key = tmp_path / "unit.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    for f in (tmp_path / "ca.pem", tmp_path / "unit.pem"):
        f.write_text("cert\n")
        f.chmod(0o644)  # certificates are public
    pw.chmod(0o644)
    key.chmod(0o604)
    text = GOOD.replace("port = 1883\n", 'port = 1883\nusername = "u"\npassword_file = "pw"\n'
                        '[broker.tls]\nca_file = "ca.pem"\ncert_file = "unit.pem"\n'
                        'key_file = "unit.key"\n')
    f = _write(tmp_path, text)
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    found = {e.key: e.message for e in ei.value.errors}
    assert set(found) == {"broker.password_file", "broker.tls.key_file"}, found
    assert f"run: chmod 600 {pw}" in found["broker.password_file"]
    assert "mode 0644" in found["broker.password_file"]
    assert f"run: chmod 600 {key}" in found["broker.tls.key_file"]
    r = gatewayd("run", "--config", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "chmod 600" in r.stderr
    pw.chmod(0o600)
    key.chmod(0o640)  # group-readable (e.g. a kidsafe group) is fine
    assert config.load(f).broker.password == "s3cret"


def test_buffer_path_a_directory_or_not_writable(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    f = _write(tmp_path, GOOD.replace('path = "buf.db"', 'path = "state"'))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert [(e.key, "is a directory" in e.message) for e in ei.value.errors] == [
        ("buffer.path", True)]
    r = gatewayd("run", "--config", str(f))  # was a traceback and a restart loop
    assert r.returncode == 2 and "Traceback" not in r.stderr and "buffer.path" in r.stderr
    # Under a regular file: nothing can be created there.
    (tmp_path / "afile").write_text("")
    f = _write(tmp_path, GOOD.replace('path = "buf.db"', 'path = "afile/sub/buf.db"'))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert ["not a directory" in e.message for e in ei.value.errors] == [True]
    assert not (tmp_path / "afile").is_dir()
    # Missing folders are fine (the daemon creates them), and checking creates nothing.
    f = _write(tmp_path, GOOD.replace('path = "buf.db"', 'path = "new/deeper/buf.db"'))
    assert config.load(f).buffer.path == str(tmp_path / "new/deeper/buf.db")
    assert not (tmp_path / "new").exists()


def test_buffer_folder_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere, except on read-only file systems
        ro = Path("/proc/sys")
        if not ro.is_dir() or os.access(ro, os.W_OK):
            pytest.skip("no folder this user cannot write (root, and /proc/sys writable)")
    f = _write(tmp_path, GOOD.replace('path = "buf.db"', f'path = "{ro}/buf.db"'))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert ["not writable" in e.message for e in ei.value.errors] == [True]


def test_two_readers_on_one_port_through_a_link(tmp_path: Path) -> None:
    dev = tmp_path / "ttyUSB7"
    dev.write_text("")
    link = tmp_path / "usb-1a86_USB_Serial-if00-port0"
    link.symlink_to(dev)
    text = (GOOD.replace("/dev/ttyUSB0", str(dev))
            + SECOND_READER.format(port=str(link)))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(_write(tmp_path, text))
    assert [e.key for e in ei.value.errors] == ["readers[1].port"]
    ok = GOOD + SECOND_READER.format(port="/dev/ttyUSB1")
    assert len(config.load(_write(tmp_path, ok)).readers) == 2


WARNINGS: list[tuple[str, str, str, str]] = [
    ("tls-port", GOOD.replace("port = 1883", "port = 8883"), "broker.port", "[broker.tls]"),
    ("child-two-cards", GOOD + '[[tags]]\nid = "0A0B0C0D0E"\nchild = "c-1"\n',
     "tags[1].child", "also on tags[0]"),
    ("zone-reader-uncovered", GOOD + '[[readers]]\nid = "ble-1"\nkind = "ble"\nrole = "zone"\n'
     '[[zones]]\nid = "hall"\nreaders = []\n', "readers[1]", "no zone, no position"),
    ("zone-calibrated-before-the-fourth-pass",
     GOOD + '[[readers]]\nid = "ble-1"\nkind = "ble"\nrole = "zone"\n[[zones]]\nid = "yard"\n'
     'readers = ["ble-1"]\nradius_m = 20.0\nboundary_dbm = -90.0\nenter_dbm = -87.0\n'
     'exit_dbm = -94.5\ncalibration = { date = "2026-11-30", samples = 90 }\n',
     "zones[0].enter_dbm", "run `gatewayd calibrate` again"),
]


@pytest.mark.parametrize(("name", "text", "key", "words"), WARNINGS,
                         ids=[w[0] for w in WARNINGS])
def test_warnings_are_reported_and_exit_0(tmp_path: Path, name: str, text: str, key: str,
                                          words: str) -> None:
    if name == "zone-reader-uncovered":
        text = text.replace('readers = []\n', 'readers = ["gate-a"]\n')
    f = _write(tmp_path, text)
    cfg = config.load(f)
    found = {w.key: w.message for w in cfg.warnings}
    assert key in found and words in found[key], found
    r = gatewayd("check-config", str(f))
    assert r.returncode == 0, r.stderr
    assert "OK with 1 warning(s)" in r.stdout
    assert f"warning: {key}: " in r.stdout


def test_a_child_with_a_card_and_a_ble_tag_is_no_warning(tmp_path: Path) -> None:
    text = GOOD + '[[tags]]\nid = "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42"\n' \
                  'child = "c-1"\n'
    assert config.load(_write(tmp_path, text)).warnings == ()


def test_zone_reader_without_zone_is_fine_when_the_unit_has_a_position(tmp_path: Path) -> None:
    text = (GOOD.replace("[[readers]]", "[engine]\nposition = [37.5, 127.0]\n\n[[readers]]", 1)
            + '[[readers]]\nid = "ble-1"\nkind = "ble"\nrole = "zone"\n')
    assert config.load(_write(tmp_path, text)).warnings == ()


def test_errors_and_warnings_together_exit_2(tmp_path: Path) -> None:
    f = _write(tmp_path, GOOD.replace("port = 1883", "port = 8883\nkeepalive_s = 0"))
    r = gatewayd("check-config", str(f))
    assert r.returncode == 2
    assert "broker.keepalive_s" in r.stderr and "warning:" in r.stderr and "8883" in r.stderr


def test_check_config_summary_lists_zones_geofences_and_options(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    text = (GOOD + '[[readers]]\nid = "ble-1"\nkind = "ble"\nrole = "zone"\nsilence_s = 20\n'
            '[[zones]]\nid = "hall"\nenter_dbm = -70\nexit_dbm = -80\n'
            '[[geofences]]\nid = "school"\ncenter = [37.5, 127.0]\nradius_m = 200\n')
    assert cli.main(["check-config", str(_write(tmp_path, text))]) == 0
    out = capsys.readouterr().out
    assert "zone      hall: readers ble-1, enter -70 dBm / exit -80 dBm" in out
    assert "geofence  school: circle 37.500000, 127.000000 r 200 m" in out
    assert "silence_s = 20.0" in out and "baud = 9600" in out


def test_every_float_check_rejects_non_finite_numbers() -> None:
    c = Checker("f")
    tbl = {"a": float("inf"), "b": float("nan"), "c": float("-inf")}
    for k in tbl:
        assert c.get(tbl, k, "t", float, 1.0) == 1.0
    assert [e.key for e in c.errors] == ["t.a", "t.b", "t.c"]
    for check in (bounds(gt=0), bounds(ge=0), bounds(le=5), seconds()):
        assert check(float("inf")) and check(float("nan")) and check(float("-inf"))


def test_every_numeric_reader_option_has_an_upper_bound() -> None:
    for kind in registry.names():
        options = registry.driver(kind).Options
        for f in dataclasses.fields(options):
            spec, tp = option_spec(options, f.name)
            args = typing.get_args(tp)
            numeric = tp in (int, float) or (args and args[0] in (int, float))
            if numeric:  # some check refuses an absurd value (and inf: see bounds())
                assert any(check(10**18) for check in spec.checks), \
                    f"{kind}.{f.name} has no upper bound"


def test_an_option_without_limits_still_refuses_non_finite_numbers() -> None:
    from gateway.options import ReaderOptions, opt, parse_options

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Free(ReaderOptions):
        gain: float = opt(1.0, "no limits declared")
        gains: tuple[float, ...] = opt((1.0,), "no limits declared")

    c = Checker("f")
    assert parse_options(Free, {"gain": float("nan"), "gains": [1.0, float("inf")]}, c,
                         "r") is None
    assert {e.key: e.message for e in c.errors} == {"r.gain": "must be a finite number",
                                                    "r.gains": "must be a finite number"}


def test_check_config_warns_of_a_corrupt_buffer(tmp_path: Path) -> None:
    # Issue 11, item 1: check-config said OK on a buffer SD-card corruption had damaged.
    f = _write(tmp_path, GOOD)
    r = gatewayd("check-config", str(f))
    assert r.returncode == 0 and "buffer.path" not in r.stdout  # no buffer yet: nothing to say
    (tmp_path / "buf.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    r = gatewayd("check-config", str(f))
    assert r.returncode == 0, r.stderr  # the unit still starts: it salvages the file
    assert "warning: buffer.path:" in r.stdout and "salvage" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
