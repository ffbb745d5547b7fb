#!/usr/bin/env bash
# Generates the Python message classes and gRPC stubs from the service's proto into ./intentd/
# (git-ignored: regenerate after every proto change, never edit by hand).
#
#   ./generate.sh             uses `python3` from PATH (activate your venv first)
#   PYTHON=.venv/bin/python ./generate.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m grpc_tools.protoc -I ../../proto --python_out=. --grpc_python_out=. intentd/v1/intentd.proto
# Python 3 treats intentd/ and intentd/v1/ as namespace packages, so no __init__.py is needed.
echo "generated $(pwd)/intentd/v1/intentd_pb2.py and intentd_pb2_grpc.py"
