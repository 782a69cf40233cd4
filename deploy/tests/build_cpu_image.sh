#!/usr/bin/env bash
# Builds the CPU image with no container-registry pull and checks that the squeezed inside it
# starts and answers health:
#   1. a Debian 12 base image made here: debootstrap (minbase, Debian's packages) straight into a
#      buildah scratch container, trimmed like debian:12-slim, committed as
#      localhost/squeeze-debian:12-slim (reused on later runs unless --rebuild-base);
#   2. deploy/docker/Dockerfile.cpu built by buildah with BASE_IMAGE set to that base and
#      --pull=never, tagged localhost/squeeze:cpu;
#   3. the image checked: non-root user, entrypoint, health check, volumes, no compiler or -dev
#      package in the final stage, size;
#   4. squeezed started in the image (buildah run, host network, as uid 10001) on a free loopback
#      port, the image's own HEALTHCHECK command run in a second container until it says SERVING,
#      then SIGTERM and a clean exit.
# Prints the seconds each step took. Needs root, buildah and debootstrap (installed from Debian's
# packages when missing and running as root), and an OCI runtime (runc).
#
#   deploy/tests/build_cpu_image.sh [--context DIR] [--workdir DIR] [--rebuild-base] [--keep]
#
#   --context DIR   build context (default: the repository root)
#   --workdir DIR   buildah storage and scratch (default: build-image/ in the repository)
#   --rebuild-base  make the Debian base again even when the storage has one
#   --keep          keep the built images (default: keep; --clean removes them after the check)
#   --clean         remove the images and the storage afterwards
# Environment: SQZ_DEBIAN_MIRROR (default http://deb.debian.org/debian), SQZ_IMAGE_JOBS (make -j).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONTEXT=$REPO
WORKDIR=$REPO/build-image
REBUILD_BASE=0
CLEAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --context) CONTEXT=$(cd "$2" && pwd); shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --keep) CLEAN=0; shift ;;
    --clean) CLEAN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_cpu_image: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

MIRROR=${SQZ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
JOBS=${SQZ_IMAGE_JOBS:-$(nproc)}
BASE=localhost/squeeze-debian:12-slim
IMAGE=localhost/squeeze:cpu
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
BUILDAH=(buildah --root "$WORKDIR/storage" --runroot "$WORKDIR/run" --storage-driver overlay)

log() { echo "build_cpu_image: $*"; }
fail() { echo "build_cpu_image: FAILED: $*" >&2; exit 1; }
declare -A SECONDS_OF
timed() {  # timed NAME COMMAND...: runs the command, remembers how long it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  SECONDS_OF[$name]=$((SECONDS - start))
  log "step '$name' took ${SECONDS_OF[$name]} s"
}

# ---- 0. tools ----------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, buildah with overlay storage)"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# buildah needs an OCI runtime for RUN steps; Debian only recommends one.
command -v runc >/dev/null || command -v crun >/dev/null || missing+=(runc)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null; }
fi
log "$(buildah --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"

CONTAINERS=()
RUN_PID=
cleanup() {
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then kill -KILL "$RUN_PID" || true; fi
  for c in "${CONTAINERS[@]}"; do "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true; done
  if [ "$CLEAN" = 1 ]; then
    "${BUILDAH[@]}" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$WORKDIR"
  fi
}
trap cleanup EXIT

# ---- 1. the Debian 12 base, made locally -------------------------------------------------------
make_base() {
  local ctr mnt
  ctr=$("${BUILDAH[@]}" from scratch)
  CONTAINERS+=("$ctr")
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  # Like debian:12-slim: no documentation, manuals or locales beyond the default.
  mkdir -p "$mnt/etc/dpkg/dpkg.cfg.d"
  cat > "$mnt/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  debootstrap --variant=minbase --arch=amd64 bookworm "$mnt" "$MIRROR" > "$WORKDIR/debootstrap.log" 2>&1 \
    || { tail -20 "$WORKDIR/debootstrap.log" >&2; fail "debootstrap (log: $WORKDIR/debootstrap.log)"; }
  rm -f "$mnt/etc/apt/sources.list"
  cat > "$mnt/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # What debian:12-slim leaves out of the image: package lists, caches, logs, and the files the
  # dpkg excludes above name (debootstrap's first stage unpacks without dpkg, so without them).
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb \
    "$mnt"/var/log/* "$mnt"/tmp/* "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* \
    "$mnt"/usr/share/lintian/*
  find "$mnt/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$mnt/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="Debian 12 minbase made by debootstrap" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
  CONTAINERS=()
}
if [ "$REBUILD_BASE" = 1 ] || ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  timed base make_base
else
  log "reusing $BASE (--rebuild-base to make it again)"
  SECONDS_OF[base]=0
fi
log "base: $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$BASE")"

# ---- 2. the CPU image --------------------------------------------------------------------------
build_image() {
  # Docker format: OCI image configs have no HEALTHCHECK and no SHELL.
  "${BUILDAH[@]}" bud --format docker --pull=never --network host --layers=false \
    --build-arg BASE_IMAGE="$BASE" --build-arg BUILD_JOBS="$JOBS" \
    -f "$REPO/deploy/docker/Dockerfile.cpu" -t "$IMAGE" "$CONTEXT" > "$WORKDIR/build.log" 2>&1 \
    || { tail -40 "$WORKDIR/build.log" >&2; fail "buildah bud (log: $WORKDIR/build.log)"; }
}
timed image build_image
log "image: $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE")"

# ---- 3. what the image says about itself -------------------------------------------------------
check_image() {
  local config
  config=$("${BUILDAH[@]}" inspect --type image --format \
    '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}|{{.OCIv1.Config.Volumes}}|{{.OCIv1.Config.ExposedPorts}}' "$IMAGE")
  log "config: $config"
  [[ "$config" == 10001:10001\|* ]] || fail "image user is not 10001:10001: $config"
  [[ "$config" == *"[squeezed]|[--config /etc/squeeze/squeezed.yaml]"* ]] || fail "entrypoint/cmd: $config"
  [[ "$config" == *"/var/lib/squeeze"* ]] || fail "/var/lib/squeeze is not a volume: $config"
  [[ "$config" == *"50051/tcp"* ]] || fail "port 50051 is not exposed: $config"
  local health
  health=$("${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.Healthcheck.Test}}' "$IMAGE")
  log "healthcheck: $health"
  [[ "$health" == *squeeze-health-probe* ]] || fail "no HEALTHCHECK with squeeze-health-probe: $health"
  local ctr
  ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
  CONTAINERS+=("$ctr")
  local inside
  inside=$("${BUILDAH[@]}" run --network host "$ctr" -- sh -c \
    'id -un; command -v g++ cc cmake || true; dpkg-query -W -f="\${Package}\n" | grep -E -- "-dev$" || true; squeezed --version; squeezed --check-config /etc/squeeze/squeezed.yaml >/dev/null && echo config-ok')
  log "inside: $(echo "$inside" | tr '\n' ' ')"
  [ "$(echo "$inside" | head -n1)" = squeeze ] || fail "the image does not run as user squeeze"
  ! echo "$inside" | grep -qE '(/g\+\+|/cc|/cmake|-dev)$' || fail "compiler or -dev package in the final image"
  echo "$inside" | grep -q '^squeezed ' || fail "squeezed --version did not run in the image"
  echo "$inside" | grep -q '^config-ok$' || fail "deploy/config/squeezed.yaml does not pass --check-config"
}
timed inspect check_image

# ---- 4. squeezed in the image answers health ---------------------------------------------------
# descendant_named PID NAME: the first process named NAME below PID (breadth first).
descendant_named() {
  local queue=("$1") next=() p c
  while [ ${#queue[@]} -gt 0 ]; do
    next=()
    for p in "${queue[@]}"; do
      for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
        if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = "$2" ]; then echo "$c"; return 0; fi
        next+=("$c")
      done
    done
    queue=("${next[@]}")
  done
  return 0
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
serve_and_probe() {
  local port ctr probe_ctr model_args=() volumes=() ok=0 out
  port=$(free_port)
  ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
  probe_ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
  CONTAINERS+=("$ctr" "$probe_ctr")
  # A real model when the shared test assets are there (today squeezed starts without one).
  local shared=${SQZ_SHARED_DIR:-$REPO/../shared}/models/stories260K
  if [ -d "$shared" ]; then
    volumes=(-v "$shared:/models/stories260K:ro")
    model_args=(--model /models/stories260K)
  fi
  mkdir -p "$WORKDIR/data"
  chown 10001:10001 "$WORKDIR/data"
  "${BUILDAH[@]}" run --network host --user 10001:10001 "${volumes[@]}" \
    -v "$WORKDIR/data:/var/lib/squeeze" "$ctr" -- \
    squeezed --config /etc/squeeze/squeezed.yaml --listen "127.0.0.1:$port" \
    --set server.metrics_address= --set server.drain_timeout_s=2 "${model_args[@]}" \
    > "$WORKDIR/squeezed.log" 2>&1 &
  RUN_PID=$!
  for _ in $(seq 1 120); do
    if out=$("${BUILDAH[@]}" run --network host --user 10001:10001 "$probe_ctr" -- \
        squeeze-health-probe --addr "127.0.0.1:$port" --timeout 2 2>&1); then
      ok=1
      break
    fi
    kill -0 "$RUN_PID" 2>/dev/null || break
    sleep 0.5
  done
  log "probe: $out"
  [ "$ok" = 1 ] || { cat "$WORKDIR/squeezed.log" >&2; fail "squeezed in the image did not answer SERVING"; }
  # buildah run does not forward signals: send SIGTERM to squeezed itself, found among the
  # descendants of this buildah run (runc puts it in its own PID namespace, visible from here).
  local pid
  pid=$(descendant_named "$RUN_PID" squeezed)
  [ -n "$pid" ] || fail "cannot find the squeezed process under buildah run (pid $RUN_PID)"
  kill -TERM "$pid"
  local rc=0
  wait "$RUN_PID" || rc=$?
  RUN_PID=
  grep -q "stopped cleanly" "$WORKDIR/squeezed.log" || { cat "$WORKDIR/squeezed.log" >&2; fail "squeezed did not stop cleanly on SIGTERM (exit $rc)"; }
  log "squeezed in the image answered SERVING on 127.0.0.1:$port and stopped cleanly (exit $rc)"
}
timed serve serve_and_probe

total=$((SECONDS_OF[base] + SECONDS_OF[image] + SECONDS_OF[inspect] + SECONDS_OF[serve]))
log "PASSED in ${total} s (base ${SECONDS_OF[base]} s, image ${SECONDS_OF[image]} s, inspect ${SECONDS_OF[inspect]} s, serve ${SECONDS_OF[serve]} s; $JOBS build jobs)"
