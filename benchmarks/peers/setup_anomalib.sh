#!/usr/bin/env bash
# Create the separate virtual environment for the peer methods (anomalib), pinned.
# It sees this machine's torch/torchvision/openvino (system site packages: the on-disk torch wheels),
# and installs anomalib and its own dependencies from the package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-peers}
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet "anomalib==2.7.0"
"$VENV/bin/python" -c "import anomalib, torch; print('anomalib', anomalib.__version__, 'torch', torch.__version__)"
