# Sourced by the tools/device_*.sh scripts on a lent GPU machine: the project importable without an
# install. The device image has torch, transformers and typer but not diffusers, importlib_metadata
# and lazy_importer; their wheels travel in .whl/ (name ".whl" in the run's carry).
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
: "${OUT:?OUT must name the folder that comes back}"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
fi
