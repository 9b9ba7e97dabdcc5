"""The command line: ``sipguard run``, ``check``, ``channels``.  The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import Settings
from .policy import PolicyError, load

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from .server import Server

    settings = Settings(
        policy_path=args.policy,
        listen=tuple(args.listen or ()),
        admin=args.admin,
        advertise=args.advertise,
        decision_log=args.decision_log,
        use_uvloop=not args.no_uvloop,
    )
    if settings.use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass

    if args.workers > 1:
        from .workers import run_workers

        try:
            return run_workers(settings, args.workers)
        except PolicyError as err:
            print(f"sipguard: the policy is not valid:\n{err}", file=sys.stderr)
            return 2

    async def main() -> None:
        server = Server(settings)
        await server.start()
        await server.serve_forever()

    try:
        asyncio.run(main())
    except PolicyError as err:
        print(f"sipguard: the policy is not valid:\n{err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"sipguard: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"sipguard: {err}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            policy = load(path)
        except PolicyError as err:
            for problem in err.problems:
                print(problem)
            status = 1
            continue
        except OSError as err:
            print(f"{path}: {err.strerror}")
            status = 1
            continue
        print(f"{path}: OK ({len(policy.accounts)} accounts)")
    return status


def _channels(args: argparse.Namespace) -> int:
    from .policy.channels import channel_limit

    try:
        policy = load(args.file)
    except PolicyError as err:
        for problem in err.problems:
            print(problem)
        return 1
    except OSError as err:
        print(f"{args.file}: {err.strerror}")
        return 1
    accounts = [a for a in policy.accounts if args.account in (None, a.name)]
    if not accounts:
        print(f"no account named {args.account!r} in {args.file}")
        return 1
    service = policy.service
    for account in accounts:
        limit = channel_limit(account, service.channel_bands, service.channel_rounding)
        print(f"{account.name} ({account.kind}): {limit.limit} channels, {limit.users} billable users")
        print(f"  how: {limit.explanation}")
        for entry in limit.entries:
            mark = f"{entry.users} user{'s' if entry.users != 1 else ''}"
            print(f"  {mark:>8}  {entry.name} [{entry.kind}]: {entry.reason}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipguard", description="SIP edge policy enforcer")
    parser.add_argument("--version", action="version", version=f"sipguard {__version__}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy on a policy")
    run.add_argument("--policy", required=True, help="policy file or folder")
    run.add_argument("--listen", action="append", help="udp:HOST:PORT (repeatable); overrides service.listen")
    run.add_argument("--admin", help="HOST:PORT of /metrics, /healthz and /reload; overrides service.admin")
    run.add_argument("--advertise", help="host[:port] for Via and Record-Route; overrides service.advertise")
    run.add_argument("--decision-log", help="append decision log lines to this file (default: stderr)")
    run.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio loop")
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes sharing the listen addresses (one per core); each also listens "
                          "on listen port + 1 + its index, and serves admin on admin port + 1 + its index")
    run.set_defaults(func=_run)
    check = sub.add_parser("check", help="validate policy files without starting")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_check)
    channels = sub.add_parser("channels", help="who counts as a user, and the channel limit per account")
    channels.add_argument("file")
    channels.add_argument("account", nargs="?")
    channels.set_defaults(func=_channels)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result
