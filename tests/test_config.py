"""`gatewayd check-config`: every error reported at once, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.rdm6300 import Rdm6300Options
from drivers.uhf_r2000 import UhfR2000Options
from gateway import config

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[unit]
id = "gate-01"
site = "school"

[broker]
host = "127.0.0.1"
port = 1883

[buffer]
path = "buf.db"

[[readers]]
id = "gate-a"
kind = "rdm6300"
role = "gate"
port = "/dev/ttyUSB0"

[[tags]]
id = "62e3086ced"
child = "c-1"
groups = ["g1"]
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


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
    r2 = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(f)],
                        capture_output=True, text=True, timeout=60)
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
    r = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("gatewayd ")
