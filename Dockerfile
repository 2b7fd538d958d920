# syntax=docker/dockerfile:1
# Build stage: full Node image with the TypeScript toolchain.
FROM node:22-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime: distroless Node 22, non-root, no shell.
FROM gcr.io/distroless/nodejs22-debian12:nonroot
LABEL org.opencontainers.image.title="mtls-sidecar" \
      org.opencontainers.image.description="Service-mesh sidecar: verified mutual TLS in and out of a local app, with certificate rotation" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
USER nonroot
EXPOSE 8443 15000
ENTRYPOINT ["/nodejs/bin/node", "/app/dist/cli.js"]
CMD ["run"]
