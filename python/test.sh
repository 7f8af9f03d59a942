#!/usr/bin/env bash
# Builds the portable janus_rs wheel, installs it into a virtualenv and runs
# the Python tests (python/tests) and the ComfyUI node pack's (nodes/tests)
# against it, with no cargo on the PATH: what a user gets from the wheel,
# not from a checkout. Called by scripts/test-all after `cargo test`; runs
# alone too: `bash python/test.sh`. Extra arguments go to pytest.
#
# Two virtualenvs in the cargo target dir, reused by a second run and made
# afresh on CI (CI set), each with pinned tools:
# - the build one: maturin, ziglang, auditwheel (scripts/build-wheel makes a
#   manylinux2014 wheel of the `dev` profile, faster to compile) and
#   check-jsonschema (scripts/check-release);
# - the test one: the wheel and numpy, Pillow, pytest, mypy (stubtest), the
#   openai client, Ray Data and Selenium (server, Ray and page tests).
# `$JANUS_PY_VENV` overrides the test one's place.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "test.sh: $python not found; cannot test the Python bindings" >&2
    exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
build_venv="$target_dir/py-build-venv"
venv="${JANUS_PY_VENV:-$target_dir/py-venv}"
wheels="$target_dir/py-wheels"
pip=(-m pip install --quiet --disable-pip-version-check)

for v in "$build_venv" "$venv"; do
    if [ -n "${CI:-}" ] || [ ! -x "$v/bin/python" ]; then
        echo "== python: virtualenv $v"
        "$python" -m venv --clear "$v"
    fi
done
"$build_venv/bin/python" "${pip[@]}" \
    "maturin==1.16.0" "ziglang==0.17.1" "auditwheel==6.8.2" "check-jsonschema==0.39.0"
vpy="$venv/bin/python"
"$vpy" "${pip[@]}" "numpy==2.4.6" "Pillow==13.0.0" "pytest==9.2.0" "mypy==2.4.1" \
    "openai==2.54.0" "ray[data]==2.60.0" "selenium==4.51.0"

echo "== python: manylinux wheel (dev profile)"
start=$SECONDS
PYTHON="$build_venv/bin/python" bash scripts/build-wheel --profile dev --out "$wheels"
echo "== python: wheel built in $((SECONDS - start)) s"
"$vpy" "${pip[@]}" --force-reinstall --no-deps "$wheels"/janus_rs-*.whl

# No Rust toolchain from here on: the tests run the installed wheel (and the
# `janus` binary `cargo test` built, for the server tests).
no_cargo_path=""
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    if [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ]; then
        no_cargo_path="${no_cargo_path:+$no_cargo_path:}$d"
    fi
done
if PATH="$no_cargo_path" command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is still on the PATH without the Rust toolchain's folders" >&2
    exit 1
fi
if [ -x "$target_dir/debug/janus" ]; then
    export JANUS_BIN="$target_dir/debug/janus"
fi

echo "== python: pytest (python/tests, nodes/tests; no cargo on the PATH)"
# From python/ so the rootdir is python/ and `import janus_rs` is the installed
# wheel; no cache files are left in the tree.
(cd python && PATH="$no_cargo_path" "$vpy" -m pytest -p no:cacheprovider -q tests "$@")
PATH="$no_cargo_path" "$vpy" -m pytest -p no:cacheprovider -q nodes/tests
