"""`gatewayd check-config`: every error reported at once, exit 2, nothing started."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers import registry
from drivers.rdm6300 import Rdm6300Options
from drivers.uhf_r2000 import UhfR2000Options
from gateway import config
from gateway.checker import Checker
from gateway.options import ReaderOptions, opt, option_docs, parse_options, toml_default
from harness import GOOD_CONFIG, gatewayd

REPO = Path(__file__).resolve().parents[1]

GOOD = GOOD_CONFIG + 'groups = ["g1"]\n'


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return gatewayd("check-config", str(path))


def test_good_config_summary(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(GOOD)
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert "gate-01 at school" in r.stdout
    assert "gate-a: rdm6300, role gate on /dev/ttyUSB0" in r.stdout
    cfg = config.load(f)
    assert cfg.tags[0].id == "62E3086CED"  # hex ids are case-insensitive
    assert cfg.buffer.path == str(tmp_path / "buf.db")  # relative to the config file


def test_three_errors_reported_together(tmp_path: Path) -> None:
    bad = (GOOD.replace("port = 1883", 'port = "1883"')  # wrong type
           .replace('site = "school"\n', "")  # missing key
           .replace('kind = "rdm6300"', 'kind = "rdm9999"'))  # unknown reader kind
    f = tmp_path / "bad.toml"
    f.write_text(bad)
    marker = tmp_path / "buf.db"
    r = check(f)
    assert r.returncode == 2
    err = r.stderr
    assert "3 error(s)" in err
    assert f"{f}: broker.port: expected integer, got string '1883'" in err
    assert f"{f}: unit.site: missing key" in err
    assert f"{f}: readers[0].kind: unknown reader kind 'rdm9999'" in err
    assert not marker.exists()  # nothing was started or created
    # `run` refuses the same file the same way, before starting anything.
    r2 = gatewayd("run", "--config", str(f))
    assert r2.returncode == 2 and "readers[0].kind" in r2.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "key", "msg"),
    [
        ("this is = = not toml", "-", "not valid TOML"),
        (GOOD.replace("[[readers]]", "[[readers]]\nbaud = true"), "readers[0].baud",
         "expected integer, got boolean"),
        (GOOD.replace('port = "/dev/ttyUSB0"', ""), "readers[0].port", "missing key"),
        (GOOD.replace('role = "gate"', 'role = "door"'), "readers[0].role", "must be one of"),
        (GOOD + '\n[[tags]]\nid = "62E3086CED"\nchild = "c-2"\n', "tags[1].id", "enrolled twice"),
        (GOOD.replace("[broker]", '[broker]\npassword_file = "nope.txt"'),
         "broker.password_file", "cannot read"),
        (GOOD.replace("[broker]", '[broker.tls]\nca_file = "ca.pem"\n[broker]'),
         "broker.tls.ca_file", "file not found"),
        (GOOD.replace("[unit]", "[unit]\ncolour = 1"), "unit.colour", "unknown key"),
        (GOOD.replace('child = "c-1"', 'child = "Jane Doe"'), "tags[0].child", "must be 1-64"),
    ],
)
def test_each_error_names_file_key_and_expectation(tmp_path: Path, text: str, key: str,
                                                   msg: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert any(e.key == key and msg in e.message and e.file == str(f) for e in ei.value.errors), \
        ei.value.errors


def test_baud_defaults_to_the_drivers_own(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD + '\n[[readers]]\nid = "uhf"\nkind = "uhf_r2000"\nport = "/dev/ttyUSB1"\n')
    cfg = config.load(f)
    assert [type(r.options) for r in cfg.readers] == [Rdm6300Options, UhfR2000Options]
    assert [r.options.baud for r in cfg.readers] == [9600, 115200]


def test_missing_file(tmp_path: Path) -> None:
    r = check(tmp_path / "absent.toml")
    assert r.returncode == 2 and "file not found" in r.stderr


def test_password_from_file_is_not_printed(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)  # a world-readable secret is refused
    f = tmp_path / "c.toml"
    f.write_text(GOOD.replace("[broker]", '[broker]\nusername = "u"\npassword_file = "pw"'))
    cfg = config.load(f)
    assert cfg.broker.password == "s3cret"
    assert "s3cret" not in repr(cfg.broker)
    r = check(f)
    assert r.returncode == 0 and "s3cret" not in r.stdout + r.stderr


@pytest.mark.parametrize("name", ["example.toml", "demo.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    r = check(REPO / "config" / name)
    assert r.returncode == 0, r.stderr


def test_version() -> None:
    r = gatewayd("--version")
    assert r.returncode == 0 and r.stdout.startswith("gatewayd ")


# --- reader options: declared once, unknown keys refused, docs and example kept in step ---

UHF_GATE = GOOD.replace('kind = "rdm6300"', 'kind = "uhf_r2000"').replace(
    'port = "/dev/ttyUSB0"', 'port = "/dev/ttyUSB0"\nantennas = [1, 2]')


@pytest.mark.parametrize(
    ("base", "line", "key", "near"),
    [
        (UHF_GATE, 'antenna_role = { "1" = "outer", "2" = "inner" }', "antenna_role",
         "antenna_roles"),
        (GOOD, "baudrate = 9600", "baudrate", "baud"),
        (GOOD, "reconect_max_s = 10", "reconect_max_s", "reconnect_max_s"),
        (UHF_GATE, "silence = 5", "silence", "silence_s"),
    ],
)
def test_unknown_reader_keys_are_errors_with_did_you_mean(tmp_path: Path, base: str, line: str,
                                                          key: str, near: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(base.replace('role = "gate"', f'role = "gate"\n{line}'))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert [(e.key, e.message) for e in ei.value.errors] == [
        (f"readers[0].{key}", f"unknown key; did you mean {near!r}?")]


def test_check_config_refuses_antenna_role_on_a_uhf_gate(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(UHF_GATE.replace('role = "gate"',
                                  'role = "gate"\nantenna_role = { "1" = "outer", "2" = "inner" }'))
    r = check(f)
    assert r.returncode == 2
    assert (f"{f}: readers[0].antenna_role: unknown key; did you mean 'antenna_roles'?"
            in r.stderr)
    # The right key passes and gives the gate its direction.
    roles = 'antenna_roles = { "1" = "outer", "2" = "inner" }'
    f.write_text(UHF_GATE.replace('role = "gate"', f'role = "gate"\n{roles}'))
    assert check(f).returncode == 0
    assert config.load(f).engine.antenna_roles == {"gate-a": {1: "outer", 2: "inner"}}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("reconnect_max_s = 0", "must be greater than 0 and at most 3600"),
        ("reconnect_max_s = -1.5", "must be greater than 0 and at most 3600"),
        ("reconnect_max_s = 3601", "must be greater than 0 and at most 3600"),
        ('reconnect_max_s = "10"', "expected number, got string '10'"),
        ("baud = 0", "must be greater than 0 and at most 4000000"),
        ('port = ""', "must not be empty"),
    ],
)
def test_declared_limits_are_checked(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "c.toml"
    key = line.split(" =")[0]
    text = GOOD.replace('port = "/dev/ttyUSB0"\n', "") if key == "port" else GOOD
    f.write_text(text.replace('role = "gate"', f'role = "gate"\n{line}'))
    with pytest.raises(config.ConfigInvalid) as ei:
        config.load(f)
    assert [(e.key, e.message) for e in ei.value.errors] == [(f"readers[0].{key}", message)]


def test_options_arrive_typed(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(UHF_GATE.replace('role = "gate"', 'role = "gate"\nsilence_s = 2\nrepeat = 3'))
    opts = config.load(f).readers[0].options
    assert isinstance(opts, UhfR2000Options)
    assert opts.antennas == (1, 2) and opts.repeat == 3
    assert opts.silence_s == 2.0 and isinstance(opts.silence_s, float)  # TOML 2 is a float here
    assert opts.where() == "/dev/ttyUSB0"


def test_every_kind_declares_documented_options() -> None:
    for kind in registry.names():
        docs = option_docs(registry.driver(kind).Options)
        assert docs, kind
        for d in docs:
            assert d.doc and "\n" not in d.doc, (kind, d.name)  # one line each


def option_table(kind: str) -> list[str]:
    """The docs table rows for a kind, as docs/operations.md writes them."""
    rows = ["| option | type | default | what it does |", "|---|---|---|---|"]
    for d in option_docs(registry.driver(kind).Options):
        shown = toml_default(d)
        default = "required" if d.required else f"`{shown}`" if shown else "none"
        rows.append(f"| `{d.name}` | {d.type} | {default} | {d.doc} |")
    return rows


def test_docs_list_every_option_of_every_kind_with_its_default() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Reader options\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[str]] = {}
    for part in section.split("\n### `")[1:]:
        kind, _, body = part.partition("`")
        tables[kind] = [ln for ln in body.splitlines() if ln.startswith("|")]
    assert sorted(tables) == sorted(registry.names())
    for kind in registry.names():
        expected = option_table(kind)
        assert tables[kind] == expected, "docs/operations.md, ### `{}` should read:\n{}".format(
            kind, "\n".join(expected))


def example_reader_tables() -> list[dict[str, Any]]:
    """Every [[readers]] table of config/example.toml, the commented ones un-commented."""
    lines = (REPO / "config" / "example.toml").read_text(encoding="utf-8").splitlines()
    tables: list[dict[str, Any]] = []
    block: list[str] | None = None
    for ln in [*lines, ""]:
        body = ln[2:] if ln.startswith("# ") else ln
        if body.strip() == "[[readers]]":
            block = []
        elif block is not None and re.match(r"^[a-z_]+ = ", body):
            block.append(body)
        elif block is not None:
            tables.append(tomllib.loads("\n".join(block)))
            block = None
    return tables


def test_example_reader_tables_use_only_declared_keys() -> None:
    tables = example_reader_tables()
    assert {t["kind"] for t in tables} >= {"rdm6300", "uhf_r2000", "ble", "gps_nmea", "gpsd"}
    for table in tables:
        config.reader_config(table, file="config/example.toml")  # raises on any bad key or value


@dataclass(frozen=True, slots=True, kw_only=True)
class _Every(ReaderOptions):
    """One option of each supported type (no driver needs them all yet)."""

    name: str = opt(doc="required string")
    flag: bool = opt(False, "a boolean")
    ratio: float = opt(0.5, "a float", ge=0, le=1)
    mode: str = opt("fast", "a choice", choices=("fast", "slow"))
    label: str | None = opt(None, "an optional string")
    ports: tuple[int, ...] = opt((1,), "an array of integers", ge=1, le=4)
    names: dict[str, str] = opt({}, "a table of strings")


def test_parse_options_types_defaults_and_limits() -> None:
    c = Checker("f")
    got = parse_options(_Every, {"name": "n", "flag": True, "ratio": 1, "label": "x",
                                 "ports": [1, 4], "names": {"1": "a"}}, c, "r")
    assert c.errors == []
    assert got == _Every(name="n", flag=True, ratio=1.0, label="x", ports=(1, 4),
                         names={"1": "a"})
    assert parse_options(_Every, {"name": "n"}, c, "r") == _Every(name="n")
    bad = {"flag": 1, "ratio": 2, "mode": "medium", "label": 3, "ports": [1, 5],
           "names": {"1": 2}}
    assert parse_options(_Every, bad, c, "r") is None
    assert {e.key: e.message for e in c.errors} == {
        "r.name": "missing key (expected string: required string)",
        "r.flag": "expected boolean, got integer 1",
        "r.ratio": "must be between 0 and 1",
        "r.mode": "must be one of 'fast', 'slow'",
        "r.label": "expected string, got integer 3",
        "r.ports": "must be between 1 and 4",
        "r.names": "expected a table of strings, got integer 2 at '1'",
    }
    docs = {d.name: d for d in option_docs(_Every)}
    assert docs["name"].required and not docs["flag"].required
    assert [toml_default(docs[k]) for k in ("flag", "ratio", "mode", "label", "ports", "names")] \
        == ["false", "0.5", '"fast"', "", "[1]", "{}"]


def _standby_raw(**broker: Any) -> dict[str, Any]:
    return {"unit": {"id": "u1", "site": "s"}, "buffer": {"path": "/tmp/kidsafe-x.db"},
            "broker": {"host": "n1.example", "port": 8883, **broker}}


def test_standby_defaults_and_checks() -> None:
    """[broker] standby_*: off unless standby_host; port defaults to the main's, client id
    to <client_id>-standby; the main's own address, an equal client id, or a standby key
    without standby_host are errors; a username warns (use_username_as_clientid)."""
    b = config.parse(_standby_raw()).broker
    assert b.standby_host is None
    b = config.parse(_standby_raw(standby_host="n2.example")).broker
    assert (b.standby_host, b.standby_port, b.standby_client_id) == ("n2.example", 8883,
                                                                     "u1-standby")
    for bad, key in (({"standby_host": "n1.example"}, "broker.standby_host"),
                     ({"standby_port": 1884}, "broker.standby_port"),
                     ({"standby_host": "n2.example", "standby_client_id": "u1"},
                      "broker.standby_client_id"),
                     ({"standby_host": "n2.example", "standby_port": 0},
                      "broker.standby_port")):
        with pytest.raises(config.ConfigInvalid) as ei:
            config.parse(_standby_raw(**bad))
        assert key in str(ei.value), (bad, str(ei.value))
    cfg = config.parse(_standby_raw(standby_host="n2.example", username="u1"))
    assert any(w.key == "broker.standby_host" for w in cfg.warnings)
