#!/usr/bin/env bash
# Docker smoke test: build the image, run it, wait for /readyz, upload an adapter, predict, stop (SIGTERM) and
# start the container, predict again, start a fresh container on the same store volume, predict again, clean up.
# Prints build time, image size, time to ready and the predictions, and writes them to docs/benchmarks/docker_smoke.md.
#
#   scripts/docker-smoke.sh
#
# Environment (all optional):
#   IMAGE              tag to build                          (adaptformer-serve:smoke)
#   VARIANT            cpu | cuda                            (cpu; cuda also passes --gpus all to docker run)
#   BASE_IMAGE         base of the cpu variant               (python:3.11-slim-bookworm when present or pullable,
#                                                             else local/debian-python:bookworm, built by
#                                                             scripts/docker-base-image.sh if missing)
#   TORCH_INDEX_URL    torch wheels index                    (Dockerfile default: CPU-only index; if that is
#                                                             unreachable, PIP_INDEX_URL, i.e. PyPI's CUDA build)
#   PIP_INDEX_URL      index for the rest                    (https://pypi.org/simple)
#   PIP_CA_FILE        CA bundle for pip in the build        (/etc/ssl/certs/ca-certificates.crt when present)
#   BUILD_NETWORK      docker build --network                (unset; "host" to reach a mirror on localhost)
#   NO_CACHE=1         build without the layer cache
#   SKIP_BUILD=1       use IMAGE as it is
#   KEEP_IMAGE=0       remove IMAGE at the end               (1: keep it)
#   REPORT             report file                           (docs/benchmarks/docker_smoke.md; "" for none)
#   READY_TIMEOUT      seconds to wait for /readyz           (300)
#   STOP_TIMEOUT       docker stop -t                        (90)
#   DOCKER             docker client                         (auto: one that can build with BuildKit)
set -euo pipefail

cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-adaptformer-serve:smoke}"
VARIANT="${VARIANT:-cpu}"
PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
KEEP_IMAGE="${KEEP_IMAGE:-1}"
REPORT="${REPORT-docs/benchmarks/docker_smoke.md}"
RUN_ID="$$"
NAME="adaptformer-smoke-$RUN_ID"
VOLUME="adaptformer-smoke-adapters-$RUN_ID"
# Random keys of 32 hex digits: the server, bound to 0.0.0.0 in the container, refuses keys under 16 characters.
ADMIN_KEY="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
PREDICT_KEY="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
TASK="smoke"
TMP="$(mktemp -d /tmp/adaptformer-smoke.XXXXXX)"
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
NOTES=()
FAILURES=()

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
note() { NOTES+=("$*"); log "note: $*"; }
fail() { FAILURES+=("$*"); log "FAIL: $*"; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- a docker client that builds with BuildKit (RUN --mount, --secret) ------------------------------------------
pick_docker() {
  if [[ -n "${DOCKER:-}" ]]; then
    export DOCKER_BUILDKIT=1
    return
  fi
  if docker buildx version >/dev/null 2>&1; then
    DOCKER=docker
    return
  fi
  # Without the buildx plugin, Docker >= 23 clients only have the legacy builder; a < 23 client (e.g. Debian's
  # docker.io 20.10 in /usr/bin) still has BuildKit built in behind DOCKER_BUILDKIT=1.
  local c v
  for c in docker /usr/bin/docker; do
    v="$("$c" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if [[ -n "$v" && "${v%%.*}" -lt 23 ]]; then
      DOCKER="$c"
      export DOCKER_BUILDKIT=1
      return
    fi
  done
  die "no docker client here can build with BuildKit: install the buildx plugin (or set DOCKER=...)"
}
pick_docker
D() { "$DOCKER" "$@"; }
D info >/dev/null 2>&1 || die "the Docker daemon is not reachable ($DOCKER info failed); start dockerd"

cleanup() {
  local rc=$?
  set +e
  D rm -f "$NAME" "$NAME-2" >/dev/null 2>&1
  D volume rm -f "$VOLUME" >/dev/null 2>&1
  if [[ "$KEEP_IMAGE" != 1 ]]; then D image rm -f "$IMAGE" >/dev/null 2>&1; fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- base image and torch index -----------------------------------------------------------------------------
BUILD_ARGS=(--build-arg "VARIANT=$VARIANT" --build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
if [[ -n "${PIP_EXTRA_INDEX_URL:-}" ]]; then BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL"); fi
if [[ "$VARIANT" == cpu && -z "${SKIP_BUILD:-}" ]]; then
  if [[ -z "${BASE_IMAGE:-}" ]]; then
    BASE_IMAGE=python:3.11-slim-bookworm
    if ! D image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! D pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
      note "$BASE_IMAGE is not local and cannot be pulled (no registry); using local/debian-python:bookworm"
      BASE_IMAGE=local/debian-python:bookworm
      if ! D image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "building $BASE_IMAGE with scripts/docker-base-image.sh"
        DOCKER="$DOCKER" IMAGE="$BASE_IMAGE" scripts/docker-base-image.sh
      fi
    fi
  fi
  BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  if [[ -z "${TORCH_INDEX_URL:-}" ]]; then
    if ! curl -fsS -o /dev/null --max-time 15 https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
      TORCH_INDEX_URL="$PIP_INDEX_URL"
      note "the CPU-only torch index (download.pytorch.org) is unreachable; torch comes from $PIP_INDEX_URL, whose" \
           "x86_64 build is the CUDA one (CUDA libraries included: a much larger image)"
    fi
  fi
fi
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi
PIP_CA_FILE="${PIP_CA_FILE-/etc/ssl/certs/ca-certificates.crt}"
if [[ -n "$PIP_CA_FILE" && -s "$PIP_CA_FILE" ]]; then BUILD_ARGS+=(--secret "id=pip_ca,src=$PIP_CA_FILE"); fi
if [[ -n "${BUILD_NETWORK:-}" ]]; then BUILD_ARGS+=(--network "$BUILD_NETWORK"); fi
if [[ -n "${NO_CACHE:-}" ]]; then BUILD_ARGS+=(--no-cache); fi

if [[ ! -f adapters/adaptformer/weights/embedded.safetensors ]]; then
  die "adapters/adaptformer/weights/embedded.safetensors is missing (python -m adaptformer.pretrain builds it)"
fi

# --- build ----------------------------------------------------------------------------------------------------
BUILD_S="(skipped)"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  log "building $IMAGE: $DOCKER build ${BUILD_ARGS[*]} ."
  t0="$(now)"
  if ! D build --progress=plain "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$TMP/build.log" 2>&1; then
    tail -40 "$TMP/build.log" >&2
    die "docker build failed"
  fi
  BUILD_S="$(since "$t0")"
  CACHED_STEPS="$(grep -c ' CACHED$' "$TMP/build.log" || true)"
  LOAD_AFTER_BUILD="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
  if [[ -n "${NO_CACHE:-}" ]]; then
    BUILD_S="$BUILD_S s (--no-cache: everything downloaded and built; load average after it $LOAD_AFTER_BUILD)"
  else
    BUILD_S="$BUILD_S s ($CACHED_STEPS steps from the layer cache; NO_CACHE=1 for a full build)"
  fi
  log "built in $BUILD_S"
fi
SIZE_BYTES="$(D image inspect -f '{{.Size}}' "$IMAGE")"
SIZE_H="$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.2f GB (%d MB)", b / 1e9, b / 1e6 }')"
log "image $IMAGE: $SIZE_H"
TORCH_DESC="$(D run --rm --entrypoint python3 "$IMAGE" -c \
  'import importlib.metadata as m; print("torch", m.version("torch"), "torchvision", m.version("torchvision"))')"
VENV_MB="$(D run --rm --entrypoint du "$IMAGE" -sm /opt/venv | cut -f1)"
NVIDIA_MB="$(D run --rm --entrypoint sh "$IMAGE" -c 'du -smc /opt/venv/lib/python3*/site-packages/nvidia /opt/venv/lib/python3*/site-packages/triton 2>/dev/null | tail -1 | cut -f1')"

# --- an adapter and an input image, made with the image itself (no Python packages needed on the host) ----------
D run --rm --entrypoint python3 "$IMAGE" -c '
import sys, pathlib
from adaptformer.embedded import export_fashion_task
p = export_fashion_task(pathlib.Path("/tmp/fashion.safetensors"))
sys.stdout.buffer.write(p.read_bytes())' >"$TMP/$TASK.safetensors"
D run --rm --entrypoint python3 "$IMAGE" -c '
import io, sys
from PIL import Image, ImageDraw
img = Image.new("L", (28, 28), 0)
d = ImageDraw.Draw(img)
d.rectangle([8, 3, 19, 8], fill=200)    # a trouser: waistband and two legs
d.rectangle([8, 8, 12, 25], fill=200)
d.rectangle([15, 8, 19, 25], fill=200)
buf = io.BytesIO(); img.convert("RGB").save(buf, "PNG"); sys.stdout.buffer.write(buf.getvalue())' >"$TMP/trouser.png"
log "adapter: $(wc -c <"$TMP/$TASK.safetensors") bytes (the embedded backbone's Fashion-MNIST head); input: a 28x28 PNG"

# --- run --------------------------------------------------------------------------------------------------------
GPU_ARGS=()
[[ "$VARIANT" == cuda ]] && GPU_ARGS=(--gpus all)
run_container() { # name
  D run -d --name "$1" "${GPU_ARGS[@]}" \
    -p 127.0.0.1::8000 \
    -v "$VOLUME:/data/adapters" \
    -e ADAPTFORMER_ADMIN_KEY="$ADMIN_KEY" \
    -e ADAPTFORMER_API_KEYS="$PREDICT_KEY" \
    --stop-timeout 60 \
    "$IMAGE" >/dev/null
}
url_of() { echo "http://$(D port "$1" 8000/tcp | head -1)"; }
wait_ready() { # name -> seconds
  local t0 url
  t0="$(now)"
  while :; do
    if [[ "$(D inspect -f '{{.State.Running}}' "$1")" != true ]]; then
      D logs --tail 50 "$1" >&2
      die "container $1 exited before it was ready"
    fi
    url="$(url_of "$1" 2>/dev/null || true)"
    if [[ -n "$url" && "$url" != "http://" ]] && curl -fsS --max-time 2 "$url/readyz" >"$TMP/readyz.json" 2>/dev/null; then
      since "$t0"
      return
    fi
    if awk -v a="$t0" -v b="$(now)" -v t="$READY_TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
      D logs --tail 50 "$1" >&2
      die "container $1 not ready after $READY_TIMEOUT s"
    fi
    sleep 0.25
  done
}
predict() { # name label -> writes $TMP/<label>.json, prints "version V: top-3 ..." (or the error, and fails)
  local code
  code="$(curl -sS -o "$TMP/$2.json" -w '%{http_code}' --max-time 60 \
    -H "Authorization: Bearer $PREDICT_KEY" -H 'Content-Type: image/png' \
    --data-binary "@$TMP/trouser.png" "$(url_of "$1")/predict?task=$TASK&top_k=3")"
  if [[ "$code" != 200 ]]; then
    echo "HTTP $code $(cat "$TMP/$2.json")"
    return 1
  fi
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
top = ", ".join("%s %.3f" % (p["label"], p["score"]) for p in r["predictions"][0])
print("version %s: %s (%.1f ms)" % (r["version"], top, r["latency_ms"]))' "$TMP/$2.json"
}

VOLUME_CREATED="$(D volume create "$VOLUME")"
log "starting $NAME (volume $VOLUME_CREATED)"
run_container "$NAME"
READY1="$(wait_ready "$NAME")"
log "ready in $READY1 s: $(cat "$TMP/readyz.json")"
URL="$(url_of "$NAME")"
READYZ1="$(cat "$TMP/readyz.json")"

# The container runs as a non-root user, with the server as PID 1.
USER_ID="$(D exec "$NAME" id -u)"
PID1="$(D exec "$NAME" sh -c 'tr "\0" " " </proc/1/cmdline')"
[[ "$USER_ID" != 0 ]] || fail "the container runs as root"
[[ "$PID1" == *adaptformer* ]] || fail "PID 1 is not the server: $PID1"
log "uid $USER_ID, PID 1: $PID1"

# Docker's HEALTHCHECK (on /readyz) turns healthy.
HEALTH=""
for _ in $(seq 1 40); do
  HEALTH="$(D inspect -f '{{.State.Health.Status}}' "$NAME")"
  [[ "$HEALTH" == healthy || "$HEALTH" == unhealthy ]] && break
  sleep 1
done
[[ "$HEALTH" == healthy ]] || fail "docker health status is '$HEALTH', expected healthy"
log "docker health: $HEALTH"

# Auth: no key -> 401; the predict key on the admin route -> 403.
NOAUTH="$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: image/png' --data-binary "@$TMP/trouser.png" \
  "$URL/predict?task=$TASK")"
[[ "$NOAUTH" == 401 ]] || fail "predict without a key: HTTP $NOAUTH, expected 401"
WRONGKEY="$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $PREDICT_KEY" \
  -F "file=@$TMP/$TASK.safetensors" -F "task=$TASK" "$URL/adapters")"
[[ "$WRONGKEY" == 403 ]] || fail "upload with the predict key: HTTP $WRONGKEY, expected 403"

# Upload.
UPLOAD_CODE="$(curl -sS -o "$TMP/upload.json" -w '%{http_code}' -H "Authorization: Bearer $ADMIN_KEY" \
  -F "file=@$TMP/$TASK.safetensors" -F "task=$TASK" "$URL/adapters")"
[[ "$UPLOAD_CODE" == 201 ]] || { fail "upload: HTTP $UPLOAD_CODE $(cat "$TMP/upload.json")"; exit 1; }
VERSION="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["adapter"]["version"])' "$TMP/upload.json")"
log "uploaded task $TASK, version $VERSION"

PRED1="$(predict "$NAME" pred1)" || fail "predict: $PRED1"
log "predict: $PRED1"

# A request in flight while the container is stopped must still be answered (graceful shutdown on SIGTERM).
python3 -c '
import sys
png = open(sys.argv[1], "rb").read()
b = b"smokeboundary"
body = b"".join(b"--" + b + b"\r\nContent-Disposition: form-data; name=\"image\"; filename=\"%d.png\"\r\nContent-Type: image/png\r\n\r\n" % i + png + b"\r\n" for i in range(64)) + b"--" + b + b"--\r\n"
open(sys.argv[2], "wb").write(body)' "$TMP/trouser.png" "$TMP/batch.body"
# The body (~16 KB) is sent at 4 KB/s, so the request is still arriving when SIGTERM comes.
curl -sS -o "$TMP/inflight.json" -w '%{http_code}' --max-time 60 --limit-rate 4k -H "Authorization: Bearer $PREDICT_KEY" \
  -H 'Content-Type: multipart/form-data; boundary=smokeboundary' --data-binary "@$TMP/batch.body" \
  "$URL/predict?task=$TASK&top_k=1" >"$TMP/inflight.code" 2>"$TMP/inflight.err" &
INFLIGHT_PID=$!
sleep 1

# Stop (SIGTERM to PID 1) and start again: same container, same store.
t_stop="$(now)"
D stop -t "${STOP_TIMEOUT:-90}" "$NAME" >/dev/null
STOP_S="$(since "$t_stop")"
# When uvicorn was done (its last log line), as opposed to when the process was gone (Python's teardown).
HTTP_DOWN_S="$(D logs -t "$NAME" 2>&1 | grep 'Finished server process' | tail -1 | python3 -c '
import datetime, sys
line = sys.stdin.read().split()
if not line:
    print("?")
else:
    ts = datetime.datetime.fromisoformat(line[0][:26].rstrip("Z")).replace(tzinfo=datetime.timezone.utc).timestamp()
    print("%.1f" % (ts - float(sys.argv[1])))' "$t_stop")"
EXIT_CODE="$(D inspect -f '{{.State.ExitCode}}' "$NAME")"
wait "$INFLIGHT_PID" || true
INFLIGHT="$(cat "$TMP/inflight.code" 2>/dev/null || true) $(head -c 200 "$TMP/inflight.err" 2>/dev/null || true)"
INFLIGHT="${INFLIGHT% }"
log "docker stop took $STOP_S s (uvicorn finished after $HTTP_DOWN_S s), exit code $EXIT_CODE; request in flight during stop: HTTP ${INFLIGHT}"
[[ "$INFLIGHT" == 200* ]] || fail "the request in flight during docker stop got '$INFLIGHT', expected 200"
[[ "$EXIT_CODE" == 0 ]] || fail "exit code $EXIT_CODE after SIGTERM (137 = killed after the stop timeout)"
D logs "$NAME" 2>&1 | grep -iE 'shutting down|shutdown|finished server process' | tail -3 | sed 's/^/    /' >&2 || true

D start "$NAME" >/dev/null
READY2="$(wait_ready "$NAME")"
log "restarted; ready in $READY2 s"
PRED2="$(predict "$NAME" pred2)" || fail "predict after restart: $PRED2"
log "predict after restart: $PRED2"

# A fresh container on the same volume: the store, not the container, keeps the adapter.
D rm -f "$NAME" >/dev/null
run_container "$NAME-2"
READY3="$(wait_ready "$NAME-2")"
log "fresh container on the same volume; ready in $READY3 s"
PRED3="$(predict "$NAME-2" pred3)" || fail "predict from the fresh container: $PRED3"
log "predict from the fresh container: $PRED3"
ADAPTERS="$(curl -fsS -H "Authorization: Bearer $PREDICT_KEY" "$(url_of "$NAME-2")/adapters" | python3 -c '
import json, sys
print(", ".join("%s (%s)" % (a["task"], a["version"]) for a in json.load(sys.stdin)["adapters"]))')"
log "adapters in the store: $ADAPTERS"

for p in PRED2 PRED3; do
  [[ "${!p}" == "$PRED1" || "${!p%(*}" == "${PRED1%(*}" ]] || fail "$p differs from the first prediction: ${!p} vs $PRED1"
done
[[ "$PRED1" == "version $VERSION:"* ]] || fail "the prediction is not from the uploaded version $VERSION"

# --- report -----------------------------------------------------------------------------------------------------
RESULT=PASS
((${#FAILURES[@]})) && RESULT=FAIL
SUMMARY="$(cat <<EOF
result:            $RESULT
image:             $IMAGE ($VARIANT; base ${BASE_IMAGE:-not known: SKIP_BUILD}; $TORCH_DESC)
build time:        $BUILD_S
image size:        $SIZE_H; /opt/venv $VENV_MB MB, of which nvidia-* + triton $NVIDIA_MB MB
time to ready:     $READY1 s (first start), $READY2 s (restart), $READY3 s (fresh container, same volume)
docker stop:       $STOP_S s to exit (uvicorn done after $HTTP_DOWN_S s, the rest is Python's teardown), exit code $EXIT_CODE; request in flight during the stop: HTTP $INFLIGHT
health:            $HEALTH; uid $USER_ID; PID 1: $PID1
upload:            task $TASK, version $VERSION (HTTP $UPLOAD_CODE); no key -> $NOAUTH, predict key on upload -> $WRONGKEY
predict:           $PRED1
after restart:     $PRED2
fresh container:   $PRED3
store:             $ADAPTERS
EOF
)"
echo
echo "$SUMMARY"
for n in "${NOTES[@]}"; do echo "note: $n"; done
for f in "${FAILURES[@]}"; do echo "FAIL: $f"; done

if [[ -n "$REPORT" ]]; then
  mkdir -p "$(dirname "$REPORT")"
  {
    echo "# Docker smoke test"
    echo
    echo "Written by \`scripts/docker-smoke.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs (load average $LOAD_AT_START"
    echo "at the start), Docker $(D version --format 'client {{.Client.Version}}, server {{.Server.Version}}' 2>/dev/null)."
    echo "Steps: build, run (named volume for the store), wait for /readyz, upload an adapter, predict, \`docker stop\`"
    echo "(SIGTERM) and \`docker start\`, predict, a fresh container on the same volume, predict, clean up."
    echo "The adapter is the embedded backbone's own Fashion-MNIST head (task \`$TASK\`); the input a drawn 28x28 trouser."
    echo
    echo '```'
    echo "$SUMMARY"
    echo '```'
    if ((${#NOTES[@]})); then
      echo
      for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
    if ((${#FAILURES[@]})); then
      echo
      for f in "${FAILURES[@]}"; do echo "- FAIL: $f"; done
    fi
    echo
    echo "readyz: \`$READYZ1\`"
  } >"$REPORT"
  log "wrote $REPORT"
fi
[[ "$RESULT" == PASS ]]
