#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need,
# then runs formatting and lint checks, every unit/integration/crash/fault
# test, and a bounded fuzzing run of each fuzz target. Fails loudly on the
# first problem.
#
#   ./scripts/test.sh              # everything
#   FUZZ_SECONDS=0 ./scripts/test.sh   # skip fuzzing (quick local loop)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

step() { printf '\n=== %s ===\n' "$*"; }

command -v cargo >/dev/null || { echo "error: cargo (a Rust toolchain) is required" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "no todo!/unimplemented!/dbg! on main"
if grep -rnE 'todo!\(|unimplemented!\(|dbg!\(' --include='*.rs' src tests benches perf fuzz/fuzz_targets; then
  echo "error: remove the macros above" >&2
  exit 1
fi

step "Python QuestDB client (PyPI questdb, with pandas and pyarrow for DataFrames over QWP), moto (S3 server) and psycopg for tests/clients.rs, tests/stores.rs and tests/sql.rs"
command -v python3 >/dev/null || { echo "error: python3 is required for the QuestDB Python client tests" >&2; exit 1; }
venv="$PWD/target/test-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'questdb>=6,<7' 'pandas>=2,<3' 'pyarrow>=15' 'moto[server]>=5,<6' 'psycopg[binary]>=3.1,<4'
"$venv/bin/python" -c 'import questdb, psycopg, pandas, pyarrow; print("questdb", questdb.__version__, "psycopg", psycopg.__version__, "pandas", pandas.__version__)'
export BASALT_TEST_PYTHON="$venv/bin/python"
export BASALT_TEST_MOTO="$venv/bin/moto_server"
[ -x "$BASALT_TEST_MOTO" ] || { echo "error: moto_server was not installed in $venv" >&2; exit 1; }

step "psql (postgresql-client) for tests/sql.rs"
if ! command -v psql >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
command -v psql >/dev/null || { echo "error: psql is required for tests/sql.rs (apt-get install postgresql-client)" >&2; exit 1; }
psql --version

step "openssl for the test CA of tests/security.rs (scripts/test-pki.sh)"
if ! command -v openssl >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
command -v openssl >/dev/null || { echo "error: openssl is required for tests/security.rs (apt-get install openssl)" >&2; exit 1; }
openssl version

step "Azurite (npm azurite) for the Azure Blob tests in tests/stores.rs"
command -v npm >/dev/null && command -v node >/dev/null \
  || { echo "error: node and npm are required for the Azurite tests (apt-get install nodejs npm)" >&2; exit 1; }
if [ ! -x target/test-node/node_modules/.bin/azurite-blob ]; then
  npm install --silent --no-audit --no-fund --prefix target/test-node 'azurite@3'
fi
export BASALT_TEST_AZURITE="$PWD/target/test-node/node_modules/.bin/azurite-blob"
[ -x "$BASALT_TEST_AZURITE" ] || { echo "error: azurite-blob was not installed under target/test-node" >&2; exit 1; }

step "cargo test (unit, storage on every I/O engine, SIGKILL crash, fault injection, server, QuestDB clients, SQL over HTTP and PostgreSQL wire)"
cargo test --locked 2>&1 | tee -a "$results"

step "criterion benches run once (test mode)"
cargo test --locked --bench storage 2>&1 | tee -a "$results"

if [ "$FUZZ_SECONDS" != "0" ]; then
  step "fuzzing: each target for ${FUZZ_SECONDS}s"
  if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
  fi
  # cargo-fuzz needs nightly flags (-Zsanitizer); the stable toolchain accepts
  # them with RUSTC_BOOTSTRAP=1.
  export RUSTC_BOOTSTRAP=1
  for target in wal_payload wal_scan ilp_parse segment_decode segment_apply metadata_decode sql_text qwp_decode auth_parse; do
    work="$(mktemp -d)"
    # New inputs go to a scratch corpus; the committed seeds are read only.
    (cd fuzz && cargo fuzz run "$target" "$work" "corpus/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) \
      || { echo "error: fuzz target $target failed (crash input under fuzz/artifacts/$target)" >&2; exit 1; }
    rm -rf "$work"
  done
fi

step "all checks passed"
# One summary line over every cargo test binary run above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
