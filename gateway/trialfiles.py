"""The files of a config trial (the I/O around :mod:`gateway.trial`).

Beside the config file ``<config>`` (``/etc/kidsafe/gateway.toml``):

- ``<config>.trial``: the marker of a running or just decided trial (JSON, with the
  previous config's whole text, the deadline and where the reply goes);
- ``<config>.previous``: the config before the last change that was kept;
- ``<config>.rejected``: the last config that was rolled back (for the technician).

Every write is a temp file in the same folder, fsync, rename, fsync of the folder:
after a power cut each file is either the old or the new one, never half of one.
The order makes every crash recoverable: the marker (holding the old text) is on
disk before the new config is renamed into place, and a decision is recorded in
the marker before the marker is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from gateway import config as configmod
from gateway import trial as tr

log = logging.getLogger("gateway.config")


def marker_path(config: str | Path) -> Path:
    return Path(f"{config}.trial")


def previous_path(config: str | Path) -> Path:
    return Path(f"{config}.previous")


def rejected_path(config: str | Path) -> Path:
    return Path(f"{config}.rejected")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path, data: bytes, mode: int | None) -> Path:
    """``data`` in a synced temp file in ``path``'s folder (renamed by the caller)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    tmp = _temp_beside(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return None


def versions(config: str | Path) -> tuple[str, str | None]:
    """(active version, previous version or None), from the files as they are now."""
    active = tr.version_of(Path(config).read_bytes())
    try:
        previous: str | None = tr.version_of(previous_path(config).read_bytes())
    except FileNotFoundError:
        previous = None
    return active, previous


# -- the marker ---------------------------------------------------------------------------

def read_marker(config: str | Path) -> tr.Trial | None:
    """The marker beside ``config``, or None. One that cannot be read is moved aside
    (logged): it was not written by this module, or not completely."""
    path = marker_path(config)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return tr.from_json(raw)
    except tr.MarkerError as e:
        aside = Path(f"{path}.bad")
        log.error("config trial marker %s unusable (%s); moved to %s, no trial is running",
                  path, e, aside)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return None


def write_marker(config: str | Path, trial: tr.Trial) -> None:
    write_atomic(marker_path(config), tr.to_json(trial), 0o600)


def remove_marker(config: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker_path(config))
        _fsync_dir(marker_path(config).parent)


# -- validating a candidate -----------------------------------------------------------------

class Candidate:
    """A pushed config written beside the active one and validated by the loader
    ``gatewayd check-config`` uses (relative paths resolve from the same folder)."""

    def __init__(self, config: str | Path, text: str) -> None:
        self.config = Path(config)
        self.data = text.encode("utf-8")
        self.version = tr.version_of(self.data)
        self.path: Path | None = _temp_beside(self.config, self.data, _mode(self.config))

    def check(self, running: configmod.Config, kid: str = "") -> tuple[list[str], list[str]]:
        """(errors, warnings) as check-config words them, naming the config file; plus
        what a pushed config may not change on a running unit. ``kid``: the key that
        signed the push, which the new config must still trust (a key change lists both
        keys first), or no command could ever reach the unit again."""
        assert self.path is not None
        tmp, real = str(self.path), str(self.config)
        try:
            new = configmod.load(self.path)
        except configmod.ConfigInvalid as e:
            return ([str(x).replace(tmp, real) for x in e.errors],
                    [str(x).replace(tmp, real) for x in e.warnings])
        errors = []
        if new.unit.id != running.unit.id:
            errors.append(f"{real}: unit.id: must stay {running.unit.id!r} (a pushed config "
                          "cannot turn this unit into another)")
        if new.buffer.path != running.buffer.path:
            errors.append(f"{real}: buffer.path: must stay {running.buffer.path!r} (the "
                          "buffer is kept across a config change; move it on the unit)")
        if kid and kid not in new.commands.keyring.keys:
            errors.append(f"{real}: commands.public_keys: must still hold the key that signed "
                          f"this push (kid {kid}), or the unit could not be commanded again")
        return errors, [str(x).replace(tmp, real) for x in new.warnings]

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None


# -- the steps of a trial ---------------------------------------------------------------------

def begin(candidate: Candidate, trial: tr.Trial) -> None:
    """Record the trial (with the old text), then rename the candidate into place."""
    assert candidate.path is not None
    write_marker(candidate.config, trial)
    try:
        os.replace(candidate.path, candidate.config)
    except OSError:
        remove_marker(candidate.config)  # nothing changed: no trial either
        raise
    candidate.path = None
    _fsync_dir(candidate.config.parent)


def roll_back(config: str | Path, trial: tr.Trial) -> None:
    """Put the previous text back (the tried one kept as ``.rejected``) and record the
    outcome in the marker: the reply goes out once the unit is connected again."""
    assert trial.outcome is not None
    path = Path(config)
    mode = _mode(path)
    with contextlib.suppress(OSError):
        tried = path.read_bytes()
        if tr.version_of(tried) == trial.version:
            write_atomic(rejected_path(path), tried, mode)
    write_atomic(path, trial.previous_text.encode("utf-8"), mode)
    write_marker(path, trial)


def keep(config: str | Path, trial: tr.Trial) -> None:
    """Record that the trial's config is kept; the old one becomes ``.previous``."""
    assert trial.outcome is not None
    write_marker(config, trial)
    write_atomic(previous_path(config), trial.previous_text.encode("utf-8"),
                 _mode(Path(config)))


def at_start(config: str | Path, now: float) -> tr.Decision | None:
    """Before the config is loaded: a trial found beside it continues, rolls back (its
    deadline passed while the unit was down) or has a reply to send. The files are put
    right here; the caller loads the config afterwards."""
    trial = read_marker(config)
    if trial is None:
        return None
    try:
        active = tr.version_of(Path(config).read_bytes())
    except OSError:
        active = ""  # no config file: put the previous one back
    decision = tr.at_start(trial, active, now)
    match decision:
        case tr.RollBack(t):
            log.warning("config trial %s: deadline passed while the unit was down; rolling "
                        "back to %s", t.request, t.previous[:12])
            roll_back(config, t)
            return tr.Report(t)
        case tr.Report(t) if trial.outcome is None:
            assert t.outcome is not None
            log.warning("config trial %s: %s", t.request, t.outcome.reason)
            if active == "":
                write_atomic(Path(config), t.previous_text.encode("utf-8"))
            write_marker(config, t)
    return decision


def fail_to_load(config: str | Path, trial: tr.Trial, errors: list[str]) -> tr.Trial:
    """The config on trial does not load at start (a file it names went away since it
    was checked): roll back at once rather than exit on a config nobody confirmed."""
    t = trial.decided(tr.ROLLED_BACK, "the config on trial did not load at start ("
                      + "; ".join(errors)[:300] + "); rolled back")
    roll_back(config, t)
    return t
