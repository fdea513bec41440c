"""Mint a token for local use: ``python -m gateway.token alice [--role service|admin] [--serves 'grid-*']``.

The key, algorithm, audience and issuer come from the same settings as the
gateway's (``JWT_SECRET``, or ``JWT_PRIVATE_KEY`` with ``JWT_ALGORITHM``),
or, for a gateway in demo mode, from the key it keeps in ``.demo/jwt_secret``.
``make token USER=alice`` and ``trading-gateway token alice`` call this.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.config import DEMO_SECRET_FILE, ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user", help="the token's sub (user id)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    parser.add_argument("--role", default=None, help="'service' for platform services, 'admin' for the admin API")
    parser.add_argument("--bots", default=None, help="comma-separated bot ids the user owns")
    parser.add_argument("--serves", default=None, help="a service's bots: comma-separated ids, prefixes ending "
                        "in * or * (docs/protocol.md, Bot commands)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if not env.get("JWT_SECRET") and not env.get("JWT_PUBLIC_KEY") and DEMO_SECRET_FILE.exists():
        env["JWT_SECRET"] = DEMO_SECRET_FILE.read_text().strip()  # the key a demo-mode gateway kept
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"cannot mint a token: {exc}", file=sys.stderr)
        return 2
    if settings.demo_key_generated or settings.authenticator.signing_key is None:
        print("no key: set JWT_SECRET (or JWT_PRIVATE_KEY with RS256/ES256), or start the gateway in demo mode "
              "first (make run)", file=sys.stderr)
        return 2
    claims = {}
    if args.bots:
        claims["bots"] = [b for b in args.bots.split(",") if b]
    if args.serves:
        claims["serves"] = [b for b in args.serves.split(",") if b]
    print(settings.authenticator.mint(args.user, ttl=args.ttl, role=args.role, **claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
