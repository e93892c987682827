# Shared by scripts/test and scripts/demo.

# find_python MAJOR MINOR: print a Python interpreter >= MAJOR.MINOR found on this machine.
find_python() {
  local want="$1.$2" candidate
  for candidate in "${PYTHON:-}" python3.14 python3.13 python3.12 python3.11 python3 \
    "$HOME"/.pyenv/versions/3.1[1-9]*/bin/python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$want'.split('.'))))" \
        2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# ensure_venv EXTRA [DIR [PYTHON [EXTRA_REQUIREMENT]]]: create DIR (default .venv) and install
# the project with the given extra, again only when pyproject.toml changed since then.
ensure_venv() {
  local extra="$1" dir="${2:-.venv}" python="${3:-}" extra_req="${4:-}"
  if [ -z "$python" ] && ! python=$(find_python 3 11); then
    echo "pgbinding needs Python 3.11 or newer; none found on PATH (set PYTHON=...)" >&2
    exit 1
  fi
  if [ ! -x "$dir/bin/python" ]; then
    echo "== creating $dir with $python"
    "$python" -m venv "$dir"
  fi
  local stamp="$dir/.pgbinding-installed-$extra"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing pgbinding[$extra] ${extra_req:+and $extra_req }into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    local reqs=(-e ".[$extra]")
    [ -z "$extra_req" ] || reqs+=("$extra_req")
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
    touch "$stamp"
  fi
}
