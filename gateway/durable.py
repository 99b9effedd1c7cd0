"""Small files written so that a power cut leaves the old one or the whole new one."""

from __future__ import annotations

import os


def write_durably(path: str, data: bytes) -> None:
    """temp + fsync + rename + fsync of the folder; the file is owner-only (0600): the
    callers' files hold a seq mark, card numbers and pseudonym keys, or a private key."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
