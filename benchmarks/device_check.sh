#!/usr/bin/env bash
# The engine's GPU check in one run (under 8 minutes on one H200): ViT-B/16 engine vs plain timm in float16 and
# bfloat16 at batch 64 and 256 with 1, 16 and 64 tasks mixed, and a server saturation run (ViT-B/16 bfloat16, 16
# tasks, PNG and JPEG, device decoding on and off) in both shapes: one process, and cores - 2 front processes with
# the engine process (--workers).
# Writes docs/benchmarks/gpu.md and gpu.json (--quick: gpu_quick.* in a temporary folder) and copies them to $OUT
# when it is set.
#
#   benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   benchmarks/device_check.sh --quick    # a smoke test with a tiny ViT, on any machine
#
# The server part needs fastapi, fastapi-offline, uvicorn and pydantic-settings (orjson, httptools: optional).
# Where the Python that holds torch lacks them, put their wheels in .whl/ (or $ADAPTFORMER_WHEELS) first; they are
# installed with --no-index into a private folder, never over torch. From the repository root, on a machine with
# an index (for Python 3.12, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform manylinux1_x86_64 -d .whl \
#     fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic_core==2.50.5 \
#     pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 opentelemetry-api==1.45.2 fastapi-offline==1.7.7 orjson==3.13.0 httptools==0.9.0 \
#     pyzmq==27.3.0 setproctitle==1.3.8 prometheus-client==0.26.0
#
# Without the wheels (and without the packages) the server part is skipped with a message; the engine part runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${ADAPTFORMER_WHEELS:-.whl}
SITE=${TMPDIR:-/tmp}/adaptformer-device-site
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        echo "server packages installed from $WHEELS into $SITE"
    else
        echo "the wheels in $WHEELS do not install here (another Python?): the server part needs the packages as they are"
    fi
elif ! "$PY" -c "import fastapi, uvicorn, pydantic_settings" 2>/dev/null; then
    echo "no wheels in $WHEELS and no fastapi/uvicorn/pydantic-settings here: the server part will be skipped"
fi
export PYTHONPATH="$PWD/adapters:$PWD/server:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
status=0
timeout "${DEVICE_CHECK_TIMEOUT:-470}" "$PY" -m benchmarks.device_check "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp docs/benchmarks/gpu.md docs/benchmarks/gpu.json "${TMPDIR:-/tmp}"/adaptformer-device-check/gpu_quick.* \
        "$OUT"/ 2>/dev/null || true
fi
exit $status
