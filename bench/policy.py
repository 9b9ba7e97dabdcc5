"""The benchmark policy: 50 accounts, every rule enforcing, limits high enough not to trip.

The SIPp UAC calls from the source of the last account (the others only make the
lookup tables realistic); its caller ID (+3228807241) is in that account's block,
so caller-ID screening runs in full and passes.
"""

from __future__ import annotations

ACCOUNTS = 50
UAC_IP = "127.0.0.2"


def benchmark_policy(sip_port: int, admin_port: int, uas_port: int, *, listen_ip: str = "127.0.0.1",
                     probe_port: int = 5999, redis_url: str | None = None, link: str = "udp", cert: str = "",
                     key: str = "") -> str:
    """``redis_url``: share the channel counts through Redis (each worker process is a node of its own); ``link``:
    the calls' transport (tcp and tls listen beside udp, which the latency probe uses; tls on ``sip_port`` + 1)."""
    listen = [f"udp:{listen_ip}:{sip_port}"] + ([f"tcp:{listen_ip}:{sip_port}"] if link != "udp" else []) + (
        [f"tls:{listen_ip}:{sip_port + 1}"] if link == "tls" else [])
    uas, probe = ({"udp": f"sip:{ip}:{port}", "tcp": f"sip:{ip}:{port};transport=tcp", "tls": f"sips:{ip}:{port}"}[link]
                  for ip, port in (("127.0.0.3", uas_port), ("127.0.0.7", probe_port)))
    lines = [
        "service:",
        "  listen: [" + ", ".join(f'"{spec}"' for spec in listen) + "]",
        f'  admin: "127.0.0.1:{admin_port}"',
        f'  upstreams: {{uas: "{uas}", probe: "{probe}"}}',
        *([f'  tls: {{cert: "{cert}", key: "{key}", ca: "{cert}"}}'] if link == "tls" else []),
        "  dialog_timeout_s: 600",
        "  sip_timers: {t1_ms: 500, t2_ms: 4000, t4_ms: 5000, timer_c_s: 180}",
        *([f'  state: {{store: redis, url: "{redis_url}"}}'] if redis_url else []),
        # the trunk under test is one source: its new-request budget (default 300/s) out of the way of capacity
        "  edge: {trusted_requests_per_s: 1000000, trusted_burst: 2000000}",
        "  autodialer:",
        "    rate_per_second: {warning: 100000, critical: 200000}",
        "    rate_per_minute: {warning: 10000000, critical: 20000000}",
        "    sequential_run: {warning: 1000000, critical: 2000000}",
        "    distinct_destinations: {warning: 1000000, critical: 2000000}",
        "    short_share: {warning: 2, critical: 3}  # a share never reaches 2: benchmark calls are short",
        "    regularity_cv: {warning: -1, critical: -1}  # SIPp is machine-regular by design",
        "accounts:",
    ]
    for n in range(ACCOUNTS):
        last = n == ACCOUNTS - 1
        source = f"{UAC_IP}/32" if last else f"10.{n // 256}.{n % 256}.0/24"
        block = "+3228807240-+3228807249" if last else f"+3250{n:03d}0000-+3250{n:03d}9999"
        lines += [
            f"  acct{n:02d}:",
            "    kind: trunk",
            "    channels: 100000",
            f'    match: {{sources: ["{source}"]}}',
            "    upstream: uas",
            f'    numbers: [{{range: "{block}", site: main}}]',
            f'    sites: {{main: {{address: "Street {n}, 1000 Brussels", emergency_caller_id: "{block.split("-")[0]}"}}}}',
            "    rules: {channel_limit: enforce, caller_id: enforce, emergency: enforce, autodialer: enforce}",
        ]
    lines += [  # the latency probe (bench/probe.py): its own account, every rule on its calls too
        "  probe:",
        "    kind: trunk",
        "    channels: 100000",
        '    match: {sources: ["127.0.0.6/32"]}',
        "    upstream: probe",
        '    numbers: [{range: "+3228807350-+3228807359", site: main}]',
        '    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}',
        "    rules: {channel_limit: enforce, caller_id: enforce, emergency: enforce, autodialer: enforce}",
    ]
    return "\n".join(lines) + "\n"
