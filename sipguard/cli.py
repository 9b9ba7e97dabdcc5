"""The command line: ``sipguard run``, ``check``, ``channels``, ``status``.  The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys

from . import __version__
from .config import Settings
from .sip.message import ip_literal
from .policy import Policy, PolicyError, load
from .policy.channels import ChannelLimit, channel_limit

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
        except OSError as err:  # the address or the admin port taken
            print(f"sipguard: {err.strerror or err}", file=sys.stderr)
            return 1

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
        policy = _load_for(path)
        if policy is None:
            status = 1
        else:
            for line in asyncio.run(_unresolved(policy)):
                print(f"{path}: warning: {line}")
            print(f"{path}: OK ({len(policy.accounts)} accounts)")
    return status


async def _unresolved(policy: Policy) -> list[str]:
    """The next hops given by name that resolve to nothing now: a warning, not an error (DNS may come up later;
    until it does, calls to them get 503)."""
    from .dns import DnsError, Resolver, split_server, system_resolvers

    service = policy.service
    hops = [(f"service.upstreams.{name}", peer) for name, peer in service.upstreams.items()]
    hops += [(f"accounts.{a.name}.deliver_to", a.deliver_to) for a in policy.accounts if a.deliver_to is not None]
    named = [(key, peer) for key, peer in hops if ip_literal(peer.host) is None]
    if not named:
        return []
    servers = [split_server(s) for s in service.dns.servers] or system_resolvers()
    transports = tuple(sorted({spec.split(":", 1)[0] for spec in service.listen}))
    resolver = Resolver(servers, transports, min(service.dns.timeout_ms / 1000, 1.0))
    out = []
    for key, peer in named:
        try:
            found = await resolver.targets(peer.host, peer.port or None, peer.transport or None, peer.transport == "tls")
            if not found:
                out.append(f"{key}: {peer.host} has no NAPTR, SRV or address records now (calls to it get 503 "
                           "until it has)")
        except DnsError as err:
            out.append(f"{key}: {peer.host} could not be resolved now ({err}); calls to it get 503 until it can")
    return out


def _load_for(path: str) -> Policy | None:
    """A policy for a command that reads it (its problems printed, one per line), or None."""
    try:
        return load(path)
    except PolicyError as err:
        for problem in err.problems:
            print(problem)
    except OSError as err:
        print(f"{path}: {err.strerror}")
    return None


def _limits(policy: Policy) -> dict[str, ChannelLimit]:
    service = policy.service
    return {a.name: channel_limit(a, service.channel_bands, service.channel_rounding) for a in policy.accounts}


def _channels(args: argparse.Namespace) -> int:
    if args.compare:
        old, new = args.compare
        return _compare(old, new, args.format)
    if args.file is None:
        print("sipguard channels: a policy file (or --compare OLD NEW)", file=sys.stderr)
        return 2
    policy = _load_for(args.file)
    if policy is None:
        return 1
    limits = {name: lim for name, lim in _limits(policy).items() if args.account in (None, name)}
    if not limits:
        print(f"no account named {args.account!r} in {args.file}")
        return 1
    kinds = {a.name: a.kind for a in policy.accounts}
    if args.format == "text":
        for name, limit in limits.items():
            print(f"{name} ({kinds[name]}): {limit.limit} channels, {limit.users} billable users")
            print(f"  how: {limit.explanation}")
            for entry in limit.entries:
                mark = f"{entry.users} user{'s' if entry.users != 1 else ''}"
                print(f"  {mark:>8}  {entry.name} [{entry.kind}]: {entry.reason}")
            print()
        return 0
    rows = [{"account": name, "kind": kinds[name], "billable_users": limit.users, "channels": limit.limit,
             "users_by_kind": _by_kind(limit), "computation": limit.explanation} for name, limit in limits.items()]
    if args.format == "json":
        print(json.dumps({"policy": args.file, "accounts": rows}, indent=1, ensure_ascii=False))
    else:
        kinds_seen = sorted({k for row in rows for k in row["users_by_kind"]})  # type: ignore[attr-defined]
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["account", "kind", "billable_users", "channels", *(f"users_{k}" for k in kinds_seen),
                      "computation"])
        for row in rows:
            by_kind: dict[str, int] = row["users_by_kind"]  # type: ignore[assignment]
            out.writerow([row["account"], row["kind"], row["billable_users"], row["channels"],
                          *(by_kind.get(k, 0) for k in kinds_seen), row["computation"]])
    return 0


def _by_kind(limit: ChannelLimit) -> dict[str, int]:
    """Billable users per kind of entry (person, shared_room, door_phone...)."""
    out: dict[str, int] = {}
    for entry in limit.entries:
        out[entry.kind] = out.get(entry.kind, 0) + entry.users
    return out


MAX_QUARTERLY_REDUCTION = 0.10  # terms BT4a: users may be reduced by at most 10% per quarter (README, "Billing")


def _compare(old_path: str, new_path: str, fmt: str) -> int:
    """Per account the change in billable users from OLD to NEW; a reduction over 10% is flagged (terms BT4a)
    and makes the exit status 1."""
    old, new = _load_for(old_path), _load_for(new_path)
    if old is None or new is None:
        return 2
    before, after = _limits(old), _limits(new)
    rows = []
    for name in sorted(before.keys() | after.keys()):
        b = before[name].users if name in before else None
        a = after[name].users if name in after else None
        change = None if b is None or a is None or b == 0 else (a - b) / b
        flagged = change is not None and change < -MAX_QUARTERLY_REDUCTION - 1e-9
        rows.append({"account": name, "users_before": b, "users_after": a,
                     "channels_before": before[name].limit if name in before else None,
                     "channels_after": after[name].limit if name in after else None,
                     "change": None if change is None else round(change, 4),
                     "status": "added" if b is None else "removed" if a is None else
                     "reduction over 10%" if flagged else "ok"})
    if fmt == "json":
        print(json.dumps({"old": old_path, "new": new_path, "accounts": rows}, indent=1))
    elif fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(list(rows[0]) if rows else ["account"])
        for row in rows:
            out.writerow(["" if v is None else v for v in row.values()])
    else:
        for row in rows:
            shown = "" if row["change"] is None else f" ({row['change']:+.1%})"
            mark = "  <-- " + str(row["status"]) if row["status"] == "reduction over 10%" else \
                f"  ({row['status']})" if row["status"] in ("added", "removed") else ""
            print(f"{row['account']}: {row['users_before'] if row['users_before'] is not None else '-'} -> "
                  f"{row['users_after'] if row['users_after'] is not None else '-'} billable users{shown}{mark}")
    return 1 if any(r["status"] == "reduction over 10%" for r in rows) else 0


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
    channels = sub.add_parser("channels", help="who counts as a user, and the channel limit per account; "
                              "exports for billing; --compare two policies", parents=[common])
    channels.add_argument("file", nargs="?")
    channels.add_argument("account", nargs="?")
    channels.add_argument("--format", choices=("text", "json", "csv"), default="text")
    channels.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                          help="per account the change in billable users; a reduction over 10%% is flagged "
                               "(terms BT4a) and the exit status is 1")
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
