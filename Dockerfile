# syntax=docker/dockerfile:1
#
# mtls-sidecar image: built with the full Node image, run on distroless Node 22 as a non-root user.
# Nothing at run time needs a shell or a writable file system (see deploy/README.md, "Image").
#
# Pins: the build stages use an exact Node release tag. The runtime base is pinned by its tag only,
# because distroless publishes no version tags for its Node images and this Dockerfile was written
# on a machine that cannot reach gcr.io to resolve a digest. For reproducible builds, resolve it once
#   docker buildx imagetools inspect gcr.io/distroless/nodejs22-debian12:nonroot
# and append "@sha256:<digest>" to the runtime FROM line (test/deploy-image.test.ts accepts either).

# ---- build: the TypeScript toolchain (devDependencies) compiles src/ into dist/ ----
FROM node:22.21.1-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build \
 && mkdir -p /image/etc/sidecar/certs

# ---- production-deps: a separate, clean install without devDependencies ----
# A fresh `npm ci --omit=dev` rather than `npm prune` in the build stage: nothing the build
# installed can leak into the image, and install scripts are not run.
FROM node:22.21.1-bookworm-slim AS production-deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# ---- runtime: distroless Node 22, uid/gid 65532 ("nonroot"), no shell ----
FROM gcr.io/distroless/nodejs22-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="mtls-sidecar" \
      org.opencontainers.image.description="Service-mesh sidecar: verified mutual TLS in and out of a local app, with certificate rotation from a mounted directory" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/nodejs22-debian12:nonroot"
ENV NODE_ENV=production
WORKDIR /app
# package.json is needed at run time: its "type": "module" makes Node load dist/*.js as ES modules.
COPY --from=production-deps /src/package.json ./package.json
COPY --from=production-deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The default --cert-dir, owned by the runtime user so that a named Docker volume mounted here
# starts out writable by `certs issue` (deploy/compose). Kubernetes mounts a secret over it.
COPY --from=build --chown=65532:65532 /image/etc/sidecar /etc/sidecar
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# 8443: inbound mTLS listener; 15000: admin (health, readiness, metrics). The outbound proxy
# (15001) listens on loopback inside the pod and is not exposed.
EXPOSE 8443 15000
ENTRYPOINT ["/nodejs/bin/node", "/app/dist/cli.js"]
CMD ["run"]
