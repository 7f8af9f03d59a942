#!/usr/bin/env bash
# Builds the janus_rs wheel, installs it into a virtualenv and runs the pytest
# suite (python/tests) on the tiny fixture. Called by scripts/test-all after
# `cargo test`; runs alone too: `bash python/test.sh`.
#
# The virtualenv (maturin, numpy, Pillow, pytest, mypy for stubtest, the
# openai client, Ray Data and Selenium for the server, Ray and page tests)
# lives in the cargo target dir, so a second run reuses it and the compiled
# crates: `$JANUS_PY_VENV` overrides the place; on CI (CI set) it is made
# afresh. The wheel is a `dev` profile build, which reuses the dependencies
# `cargo test` compiled (the workspace optimises them at opt-level 3 in dev).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "test.sh: $python not found; cannot test the Python bindings" >&2
    exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${JANUS_PY_VENV:-$target_dir/py-venv}"
wheels="$target_dir/py-wheels"

if [ -n "${CI:-}" ] || [ ! -x "$venv/bin/python" ]; then
    echo "== python: virtualenv $venv"
    "$python" -m venv --clear "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.9.4,<2" "numpy>=1.21" "Pillow>=8" "pytest>=7" "mypy>=1.10" "openai>=1.40,<3" "ray[data]>=2.9" "selenium>=4.11"

echo "== python: maturin build (dev profile)"
rm -rf "$wheels"
start=$SECONDS
"$venv/bin/maturin" build --profile dev --locked --strip \
    --manifest-path python/Cargo.toml --interpreter "$vpy" --out "$wheels"
echo "== python: wheel built in $((SECONDS - start)) s"
"$vpy" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/janus_rs-*.whl

echo "== python: pytest"
# The `janus` binary `cargo test` built, for the server test (tests/test_server.py).
if [ -x "$target_dir/debug/janus" ]; then
    export JANUS_BIN="$target_dir/debug/janus"
fi
# From python/ so the rootdir is python/ and `import janus_rs` is the installed
# wheel; no cache files are left in the tree.
cd python
"$vpy" -m pytest -p no:cacheprovider -q tests "$@"
