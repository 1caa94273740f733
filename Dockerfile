# keepalive-proxy: multi-stage build on the current Node LTS.
# Config is read from /etc/keepalive-proxy/keepalive-proxy.yaml (mount yours there).

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
# --ignore-scripts: the build below runs tsc itself; koffi ships its prebuilt binaries in the package.
# npm ci only: the lockfile lists every platform's optional binaries, and an image built from
# anything but the locked tree must fail the build, not fall back to an unlocked install.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npx tsc -p tsconfig.json && npm prune --omit=dev --ignore-scripts

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY config /etc/keepalive-proxy
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd: 1000:1000 is the
# node image's own `node` user and group.
USER 1000:1000
# The admin listener binds 127.0.0.1:9901 by default; the healthcheck runs inside the
# container's network namespace, so loopback reaches it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "--max-semi-space-size=4", "/app/dist/main.js"]
CMD ["--config", "/etc/keepalive-proxy/keepalive-proxy.yaml"]
