#!/usr/bin/env bash
# Regenerates feature_pb2.py / example_pb2.py (and their .pyi stubs) from the .proto files here.
#
# The compiler's version fixes the oldest protobuf runtime the modules load with: the generated
# code refuses a runtime older than itself. The checked-in modules come from protoc 31.1 (Python
# gencode 6.31.1, the floor TensorFlow 2.21 also sets), for example through
#   pip install --target /tmp/protoc31 --no-deps grpcio-tools==1.74.0
#   PYTHONPATH=/tmp/protoc31 data_pipelines/proto/regenerate.sh
# grpcio-tools is needed only here, never at run time. A newer compiler works too, but then the
# protobuf bound in requirements.txt must rise to the version printed below.
#
# Uses `python -m grpc_tools.protoc` when importable ($PYTHON, default the repo's .venv), else
# `protoc` from PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

if "$python" -c "import grpc_tools.protoc" 2>/dev/null; then
  protoc=("$python" -m grpc_tools.protoc)
elif command -v protoc >/dev/null; then
  protoc=(protoc)
else
  echo "regenerate.sh: no protobuf compiler: install grpcio-tools (see the top of this script)" \
       "or put protoc on PATH" >&2
  exit 1
fi

echo "using $("${protoc[@]}" --version)"
"${protoc[@]}" --proto_path=. --python_out=. --pyi_out=. \
  data_pipelines/proto/feature.proto data_pipelines/proto/example.proto

gencode="$(sed -n 's/^ *\([0-9]*\),$/\1/p' data_pipelines/proto/feature_pb2.py | head -3 \
           | paste -sd.)"
echo "generated for protobuf >= ${gencode}; requirements.txt says:" \
     "$(grep '^protobuf' requirements.txt)"
