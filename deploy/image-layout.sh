#!/usr/bin/env bash
# Reproduces the runtime layout of the Docker image on a machine without a Docker engine, and runs
# the sidecar from it the way the image does:
#   /app/package.json, /app/node_modules (npm ci --omit=dev), /app/dist  ->  <tmp>/app/...
#   ENTRYPOINT node /app/dist/cli.js                                     ->  node <tmp>/app/dist/cli.js
#   USER 65532:65532, read-only root file system, read-only cert dir     ->  uid 65532 (when run as
#                                                                             root), the app folder and
#                                                                             cert dir without write bits
# It asserts that the sidecar becomes ready, proxies a request (outbound forward proxy -> its own
# inbound mTLS listener -> a local app), writes no file anywhere, and exits 0 on SIGTERM.
# The last line of output is a JSON summary (read by test/deploy-image.test.ts).
#
# Usage: npm run build && deploy/image-layout.sh   (needs the npm registry, curl; as root also setpriv)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runtime_uid=65532
say() { printf 'image-layout: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ -f "$repo/dist/cli.js" ] || fail "no dist/cli.js: run 'npm run build' first"
command -v curl >/dev/null || fail "curl is needed"

work=$(mktemp -d "${TMPDIR:-/tmp}/mtls-sidecar-image.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true; done
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
app="$work/app"
certs="$work/certs"
logs="$work/logs"
mkdir -p "$app" "$logs"

# ---- the production-deps and runtime stages of the Dockerfile ----
cp "$repo/package.json" "$repo/package-lock.json" "$app/"
say "npm ci --omit=dev --ignore-scripts in $app"
(cd "$app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >"$logs/npm.log" 2>&1) \
  || { cat "$logs/npm.log" >&2; fail "npm ci --omit=dev failed"; }
cp -R "$repo/dist" "$app/dist"

# No devDependency may be in the layout (they are what `--omit=dev` is for).
dev_present=$(node -e '
  const fs = require("fs");
  const pkg = JSON.parse(fs.readFileSync(process.argv[1] + "/package.json", "utf8"));
  const found = Object.keys(pkg.devDependencies ?? {}).filter((name) => fs.existsSync(process.argv[1] + "/node_modules/" + name));
  process.stdout.write(found.join(","));
' "$app")
[ -z "$dev_present" ] || fail "devDependencies in the production layout: $dev_present"

# ---- certificates, made by the layout's own `certs` commands (node-forge is a production dependency) ----
node "$app/dist/cli.js" certs init --out "$work/ca" --days 2 >"$logs/certs.log" 2>&1 || { cat "$logs/certs.log" >&2; fail "certs init failed"; }
node "$app/dist/cli.js" certs issue --ca "$work/ca" --name image-layout --dns localhost --ip 127.0.0.1 \
  --spiffe spiffe://image.local/ns/test/sa/image-layout --days 1 --out "$certs" >>"$logs/certs.log" 2>&1 \
  || { cat "$logs/certs.log" >&2; fail "certs issue failed"; }

# ---- read-only, as in the image (and as a Kubernetes secret volume: root-owned, group-readable) ----
run_as=()
if [ "$(id -u)" = 0 ]; then
  # Root ignores permission bits, so run as the image's user; the files stay owned by root, which is
  # what makes them unwritable (an owner could give itself the write bit back).
  command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to run as uid $runtime_uid"
  chgrp -R "$runtime_uid" "$certs"
  chmod -R a-w,g+rX "$certs"
  run_as=(setpriv --reuid="$runtime_uid" --regid="$runtime_uid" --clear-groups --)
else
  runtime_uid=$(id -u)
  chmod -R a-w "$certs"
fi
chmod -R a-w,a+rX "$app"
for dir in "$app" "$app/dist" "$certs"; do
  if "${run_as[@]}" touch "$dir/.write-probe" 2>/dev/null; then fail "$dir is still writable by uid $runtime_uid"; fi
done
say "app folder and cert dir are read-only for uid $runtime_uid"

# ---- the local app: answers with the headers it received ----
node -e '
  const server = require("http").createServer((request, response) => {
    response.setHeader("content-type", "application/json");
    response.end(JSON.stringify({ url: request.url, headers: request.headers }));
  });
  server.listen(0, "127.0.0.1", () => console.log(server.address().port));
' >"$logs/app.log" 2>&1 &
pids+=($!)

wait_for() { # wait_for SECONDS COMMAND...: retries COMMAND every 0.1 s
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ "$SECONDS" -lt "$deadline" ] || return 1; sleep 0.1; done
}
wait_for 10 test -s "$logs/app.log" || fail "the app did not start"
app_port=$(head -n1 "$logs/app.log")

# Files the runtime user owns before the run; any new one is a write by the sidecar.
owned_files() { find /tmp /var/tmp /dev/shm "$work" -xdev -user "$runtime_uid" 2>/dev/null | sort; }
owned_before=$(owned_files)

# ---- the ENTRYPOINT, from the layout, as the runtime user, with nowhere writable ----
(cd / && exec env -i PATH="$PATH" HOME=/nonexistent TMPDIR="$app" NODE_ENV=production \
  "${run_as[@]}" node "$app/dist/cli.js" run --cert-dir "$certs" \
  --inbound 127.0.0.1:0 --outbound 127.0.0.1:0 --admin 127.0.0.1:0 --app "http://127.0.0.1:$app_port" \
  >"$logs/sidecar.log" 2>&1) &
sidecar_pid=$!
pids+=("$sidecar_pid")

wait_for 20 grep -q '"msg":"sidecar ready"' "$logs/sidecar.log" || { cat "$logs/sidecar.log" >&2; fail "the sidecar did not log \"sidecar ready\""; }
listener() { grep '"msg":"sidecar ready"' "$logs/sidecar.log" | node -e '
  let text = ""; process.stdin.on("data", (c) => (text += c)).on("end", () => process.stdout.write(JSON.parse(text).listeners[process.argv[1]]));
' "$1"; }
inbound=$(listener inbound)
outbound=$(listener outbound)
admin=$(listener admin)
say "ready: inbound $inbound, outbound $outbound, admin $admin"

readyz=$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")
[ "$readyz" = 200 ] || fail "/readyz answered $readyz"

# An app's HTTP_PROXY call to a TLS upstream (here the sidecar's own inbound listener): outbound
# verifies the upstream and presents the certificate, inbound verifies it and forwards to the app.
inbound_port=${inbound##*:}
status=$(curl -s -o "$logs/reply.json" -w '%{http_code}' --max-time 10 -x "http://$outbound" "http://localhost:$inbound_port/through-the-image-layout")
[ "$status" = 200 ] || { cat "$logs/reply.json" "$logs/sidecar.log" >&2; fail "proxied request answered $status"; }
xfcc_uri=$(node -e '
  const reply = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  process.stdout.write(/URI=([^;,]+)/.exec(reply.headers["x-forwarded-client-cert"] ?? "")?.[1] ?? "");
' "$logs/reply.json")
[ "$xfcc_uri" = spiffe://image.local/ns/test/sa/image-layout ] || fail "the app saw x-forwarded-client-cert URI '$xfcc_uri'"
say "proxied GET answered 200; the app saw the peer $xfcc_uri"

rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$sidecar_pid/status" 2>/dev/null || echo 0)

kill -TERM "$sidecar_pid"
set +e
wait "$sidecar_pid"
exit_code=$?
set -e
[ "$exit_code" = 0 ] || { cat "$logs/sidecar.log" >&2; fail "the sidecar exited $exit_code on SIGTERM"; }

owned_after=$(owned_files)
written=$(comm -13 <(printf '%s\n' "$owned_before") <(printf '%s\n' "$owned_after") | sed '/^$/d')
[ -z "$written" ] || fail "the sidecar wrote files: $written"
say "exit 0 on SIGTERM; no file written by uid $runtime_uid"

printf '{"ready":true,"readyz":%s,"status":%s,"xfccUri":"%s","exitCode":%s,"runtimeUid":%s,"filesWritten":0,"devDependenciesPresent":[],"rssMiB":%s}\n' \
  "$readyz" "$status" "$xfcc_uri" "$exit_code" "$runtime_uid" "$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')"
