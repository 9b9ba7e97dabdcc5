"""The command line: ``sipguard run``, ``check``, ``channels``, ``status``.  The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import json
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


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``), for a log shipper."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _log_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """--log-level and --log-format, before or after the command (a subcommand's own copy does not reset them)."""
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS,
                        default="INFO" if default else argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=("text", "json"), default="text" if default else argparse.SUPPRESS,
                        help="log lines on stderr as text or as JSON objects")


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)


def _status(args: argparse.Namespace) -> int:
    """The live state from a running sipguard's admin address: accounts, calls, bans."""
    import urllib.error
    import urllib.request

    admin = args.admin
    if admin is None:
        try:
            admin = load(args.policy).service.admin if args.policy else "127.0.0.1:9090"
        except (PolicyError, OSError) as err:
            print(f"sipguard status: {err}", file=sys.stderr)
            return 2
    base = f"http://{admin}"
    query = f"?account={args.account}" if args.account else ""
    try:
        answers = {}
        for what in ("accounts", "calls", "bans"):
            with urllib.request.urlopen(f"{base}/{what}{query if what == 'calls' else ''}", timeout=5) as resp:
                answers[what] = json.loads(resp.read())[what]
    except (OSError, urllib.error.URLError, ValueError) as err:
        print(f"sipguard status: no answer from {base} ({err})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answers, indent=1))
        return 0
    accounts = [a for a in answers["accounts"] if args.account in (None, a["account"])]
    print(f"{'account':<24} {'kind':<8} {'active':>6} {'limit':>6} {'held here':>9}")
    for a in accounts:
        print(f"{a['account']:<24} {a['kind']:<8} {a['active']:>6} {a['limit']:>6} {a['held_here']:>9}")
    print(f"\n{len(answers['calls'])} calls up")
    for c in answers["calls"]:
        worker = "" if c.get("worker") is None else f" worker {c['worker']}"
        print(f"  {c['call_id']}  {c['account']}  {c['direction']}  {c['state']}  {c['caller']} -> {c['callee']}{worker}")
    print(f"\n{len(answers['bans'])} sources banned")
    for b in answers["bans"]:
        print(f"  {b['source']}  {b['reason']}  {b['remaining_s']} s left, {b['dropped']} packets dropped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipguard", description="SIP edge policy enforcer")
    parser.add_argument("--version", action="version", version=f"sipguard {__version__}")
    _log_options(parser, default=True)
    common = argparse.ArgumentParser(add_help=False)
    _log_options(common, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy on a policy", parents=[common])
    run.add_argument("--policy", required=True, help="policy file or folder")
    run.add_argument("--listen", action="append", help="udp:HOST:PORT (repeatable); overrides service.listen")
    run.add_argument("--admin", help="HOST:PORT of /metrics, /healthz and /reload; overrides service.admin")
    run.add_argument("--advertise", help="host[:port] for Via and Record-Route; overrides service.advertise")
    run.add_argument("--decision-log", help="append decision log lines to this file (default: stdout); SIGUSR1 "
                                            "opens it again (logrotate)")
    run.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio loop")
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes sharing the listen addresses (one per core); each also listens "
                          "on listen port + 1 + its index, and serves admin on admin port + 1 + its index")
    run.set_defaults(func=_run)
    check = sub.add_parser("check", help="validate policy files without starting", parents=[common])
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_check)
    channels = sub.add_parser("channels", help="who counts as a user, and the channel limit per account",
                              parents=[common])
    channels.add_argument("file")
    channels.add_argument("account", nargs="?")
    channels.set_defaults(func=_channels)
    status = sub.add_parser("status", help="what a running sipguard holds: accounts, calls up, bans", parents=[common])
    status.add_argument("--admin", help="HOST:PORT of the admin listener (default: the policy's service.admin)")
    status.add_argument("--policy", help="policy file to read service.admin from")
    status.add_argument("--account", help="only this account")
    status.add_argument("--json", action="store_true", help="the answers as JSON")
    status.set_defaults(func=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    result: int = args.func(args)
    return result
