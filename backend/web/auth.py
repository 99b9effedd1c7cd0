"""Who may open the page and who may act: scrypt password hashes, sessions, roles.

Passwords are stored only as scrypt hashes (``hashlib.scrypt``, stdlib, memory-hard) in
the backend config; ``kidsafe-backend passwd`` makes them. A session is a random token in
an HttpOnly, SameSite=Strict cookie, held in memory (a restart logs everyone out). Every
action also carries the session's CSRF token in a header, which a page on another origin
cannot read or set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from enum import Enum

# scrypt cost: 2^15 x 8 x 1 takes ~60 ms and 32 MiB here, a brute force that many times as hard.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


class Role(Enum):
    VIEWER = "viewer"      # sees the page
    OPERATOR = "operator"  # also sends commands (alerts, locate)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), the format the config's users carry."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, want = stored.split("$")
        if scheme != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                            p=int(p), maxmem=_MAXMEM, dklen=len(base64.b64decode(want)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, base64.b64decode(want))


# Checked when the user is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = hash_password("not a password", n=2**10)


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    expires: float  # monotonic

    @property
    def may_act(self) -> bool:
        return self.role is Role.OPERATOR


class Sessions:
    """Logged-in sessions, in memory. Thread-safe: the app and its tests share it."""

    def __init__(self, users: dict[str, User], ttl_s: float = 8 * 3600) -> None:
        self.users = users
        self.ttl_s = ttl_s
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, name: str, password: str) -> Session | None:
        user = self.users.get(name)
        ok = verify_password(password, user.password_hash if user else _DUMMY)
        if user is None or not ok:
            return None
        s = Session(secrets.token_urlsafe(32), user.name, user.role, secrets.token_urlsafe(32),
                    time.monotonic() + self.ttl_s)
        with self._lock:
            now = time.monotonic()
            self._by_token = {t: v for t, v in self._by_token.items() if v.expires > now}
            self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            s = self._by_token.get(token)
            if s is not None and s.expires <= time.monotonic():
                del self._by_token[token]
                return None
            return s

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


def csrf_ok(session: Session, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(session.csrf.encode(), header.encode())
