# sipguard in production: the compiled core, non-root, two workers, SIP and admin ports, a health check that
# answers for every worker (docs/service.md).
#   docker build -t sipguard .
#   docker run --rm --network host -v $PWD/policies/example.yaml:/etc/sipguard/policy.yaml:ro sipguard
FROM python:3.11-slim-bookworm AS build
# gcc and the headers: setup.py compiles the SIP core with mypyc (docs/compiled.md)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sipguard ./sipguard
RUN pip install --no-cache-dir --prefix=/install . \
 && python -c "import sys; sys.path.insert(0, '/install/lib/python3.11/site-packages'); \
import sipguard._compiled as c; sys.exit(0 if c.native_core() else 'the compiled core was not built')"

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10060 --home-dir /nonexistent --shell /usr/sbin/nologin sipguard
COPY --from=build /install /usr/local
COPY policies/example.yaml /etc/sipguard/policy.yaml
USER sipguard
# SIP over UDP on 5060 (above 1023: no privilege needed) and worker i's own port 5061 + i; the admin
# listener on 9090 (/healthz, /accounts, /calls, /bans for the machine) and worker i's on 9091 + i (/metrics)
EXPOSE 5060-5062/udp 5060-5062/tcp 9090-9092/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sipguard", "run", "--policy", "/etc/sipguard/policy.yaml"]
# The admin listener must be reachable from outside the container for Prometheus:
CMD ["--admin", "0.0.0.0:9090", "--workers", "2"]
