"""The ``[web]`` section of the backend config: where the page listens, who may log in.

```toml
[web]
listen = "127.0.0.1:8080"
sites = "sites.toml"            # relative to the config file
cookie_secure = false           # true behind TLS (the cookie is then sent over HTTPS only)

[[web.users]]
name = "ops"
role = "operator"               # or "viewer"
password_hash = "scrypt$32768$8$1$..."   # from `kidsafe-backend passwd`
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.web.auth import Role, User

KEYS = {"listen", "sites", "cookie_secure", "session_ttl_s", "poll_s", "refresh_s",
        "alert_window_s",
        "roll_call_window_s", "silent_s", "command_timeout_s", "users"}


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str
    port: int
    sites: Path
    users: dict[str, User]
    cookie_secure: bool = False
    session_ttl_s: float = 8 * 3600.0
    poll_s: float = 0.1             # the page reads the database at most this often...
    refresh_s: float = 5.0          # ...after each commit it is told of, and this often anyway
    alert_window_s: float = 3600.0  # an SOS or must-stay alert stays on the page this long
    roll_call_window_s: float = 300.0  # a roll-call with no report for this long is over
    silent_s: float = 90.0          # an online unit not heard from for this long is "silent"
    command_timeout_s: float = 10.0


def parse(web: dict[str, Any], base: Path) -> WebConfig:
    unknown = set(web) - KEYS
    if unknown:
        raise WebConfigError(f"[web]: unknown key(s) {', '.join(sorted(unknown))}")
    listen = str(web.get("listen", "127.0.0.1:8080"))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise WebConfigError(f"web.listen: expected HOST:PORT, got {listen!r}")
    users: dict[str, User] = {}
    for i, u in enumerate(web.get("users", [])):
        try:
            name, role, h = u["name"], Role(u["role"]), u["password_hash"]
        except (KeyError, ValueError, TypeError) as e:
            raise WebConfigError(f"web.users[{i}]: needs name, role (viewer|operator) and "
                                 f"password_hash ({e})") from e
        if not str(h).startswith("scrypt$"):
            raise WebConfigError(f"web.users[{i}].password_hash: not a scrypt hash (make one "
                                 "with `kidsafe-backend passwd`)")
        users[name] = User(name, role, h)
    sites = Path(web.get("sites", "sites.toml"))
    num = {k: float(web[k]) for k in ("session_ttl_s", "poll_s", "refresh_s", "alert_window_s",
                                       "roll_call_window_s", "silent_s", "command_timeout_s")
           if k in web}
    return WebConfig(host=host, port=int(port), sites=sites if sites.is_absolute()
                     else base / sites, users=users,
                     cookie_secure=bool(web.get("cookie_secure", False)), **num)
