"""``kidsafe-backend passwd``: a scrypt hash for a ``[[web.users]]`` entry.

The password is read twice from the terminal (or once from standard input when it is
not one, for scripts) and never echoed, logged or written anywhere; the entry to paste
into the backend config is printed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence

from backend.web.auth import Role, hash_password

MIN_CHARS = 10


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kidsafe-backend passwd", description=__doc__)
    p.add_argument("name", help="the user's login name")
    p.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value,
                   help="viewer (sees the page) or operator (also sends commands); "
                        "default %(default)s")
    args = p.parse_args(argv)
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {args.name}: ")
        if pw != getpass.getpass("again: "):
            print("kidsafe-backend passwd: the two passwords differ", file=sys.stderr)
            return 2
    else:
        pw = sys.stdin.readline().rstrip("\n")
    if len(pw) < MIN_CHARS:
        print(f"kidsafe-backend passwd: at least {MIN_CHARS} characters", file=sys.stderr)
        return 2
    print("[[web.users]]")  # a JSON string is a valid TOML basic string
    for key, value in (("name", args.name), ("role", args.role),
                       ("password_hash", hash_password(pw))):
        print(f"{key} = {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
