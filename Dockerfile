# sipguard in production: slim base, non-root, SIP and admin ports, health check on /healthz.
#   docker build -t sipguard .
#   docker run --rm -p 5060:5060/udp -p 9090:9090 -v $PWD/policies:/etc/sipguard:ro sipguard
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sipguard ./sipguard
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10060 --home-dir /nonexistent --shell /usr/sbin/nologin sipguard
COPY --from=build /install /usr/local
COPY policies/example.yaml /etc/sipguard/policy.yaml
USER sipguard
# SIP over UDP (5060 is above 1023: no privilege needed) and the admin listener.
EXPOSE 5060/udp 9090/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sipguard", "run", "--policy", "/etc/sipguard/policy.yaml"]
# The admin listener must be reachable from outside the container for Prometheus:
CMD ["--admin", "0.0.0.0:9090"]
