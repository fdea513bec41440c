"""Mint a token for local use: ``python -m gateway.token alice [--ttl 3600] [--role service]``.

The key comes from ``JWT_SECRET`` (or ``JWT_PRIVATE_KEY`` with
``JWT_ALGORITHM``), or, for a gateway in demo mode, from the key it keeps in
``.demo/jwt_secret``. ``make token USER=alice`` calls this.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config import DEMO_SECRET_FILE
from protocol.auth import mint_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user", help="the token's sub (user id)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    parser.add_argument("--role", default=None, help="'service' for platform services")
    parser.add_argument("--bots", default=None, help="comma-separated bot ids the user owns")
    args = parser.parse_args(argv)
    algorithm = os.environ.get("JWT_ALGORITHM", "HS256").upper()
    if algorithm == "HS256":
        key = os.environ.get("JWT_SECRET")
        if not key and DEMO_SECRET_FILE.exists():
            key = DEMO_SECRET_FILE.read_text().strip()
    else:
        path = os.environ.get("JWT_PRIVATE_KEY", "")
        key = Path(path).read_text() if path and Path(path).is_file() else path
    if not key:
        print("no key: set JWT_SECRET, or start the gateway in demo mode first (make run)", file=sys.stderr)
        return 2
    claims = {}
    if args.bots:
        claims["bots"] = [b for b in args.bots.split(",") if b]
    print(mint_token(key, args.user, algorithm=algorithm, ttl=args.ttl, role=args.role,
                     audience=os.environ.get("JWT_AUDIENCE") or None, issuer=os.environ.get("JWT_ISSUER") or None,
                     **claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
