#!/usr/bin/env bash
# A local Ray head for this project with safe defaults.
#
#   platform/local/ray-head.sh start      # start the head (dashboard + Jobs API on 127.0.0.1, token auth)
#   eval "$(platform/local/ray-head.sh env)"   # set the client variables in this shell
#   platform/local/ray-head.sh status     # is it up?
#   platform/local/ray-head.sh stop       # stop it (`ray stop`: every Ray process of this user on this machine)
#
# Settings (environment): CACR_RAY_AUTH=token|disabled (default token), CACR_RAY_DIR (default ~/.cacr; holds
# the token file, mode 0600), CACR_DASHBOARD_PORT (8265), CACR_GCS_PORT (6379), CACR_NUM_CPUS (all),
# CACR_METRICS_PORT (8080), CACR_OBJECT_STORE_BYTES (default: Ray's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
ray_bin="${RAY_BIN:-$root/.venv/bin/ray}"
[[ -x "$ray_bin" ]] || ray_bin="$(command -v ray || true)"
[[ -n "$ray_bin" ]] || { echo "ray not found: run 'make setup' first (or set RAY_BIN)" >&2; exit 1; }

auth="${CACR_RAY_AUTH:-token}"
state_dir="${CACR_RAY_DIR:-$HOME/.cacr}"
token_file="$state_dir/ray-auth-token"
dash_port="${CACR_DASHBOARD_PORT:-8265}"
gcs_port="${CACR_GCS_PORT:-6379}"
metrics_port="${CACR_METRICS_PORT:-8080}"
address="http://127.0.0.1:$dash_port"

case "$auth" in token|disabled) ;; *) echo "CACR_RAY_AUTH must be token or disabled, not '$auth'" >&2; exit 2;; esac

client_env() {
  echo "export RAY_AUTH_MODE=$auth"
  [[ "$auth" == token ]] && echo "export RAY_AUTH_TOKEN_PATH=$token_file"
  echo "export RAY_API_SERVER_ADDRESS=$address"
}

dashboard_up() {  # the dashboard answers (401 when it wants the token)
  curl -s -o /dev/null -w '%{http_code}' "$address/api/version" 2> /dev/null | grep -qE '200|401'
}

make_token() {
  mkdir -p "$state_dir" && chmod 700 "$state_dir"
  if [[ ! -s "$token_file" ]]; then
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$token_file")
  fi
  chmod 600 "$token_file"
}

cmd="${1:-}"
case "$cmd" in
  start)
    export RAY_AUTH_MODE="$auth" RAY_USAGE_STATS_ENABLED=0
    # jobs run `python ...` with the head's PATH: put the project's venv first
    [[ -d "$root/.venv/bin" ]] && export PATH="$root/.venv/bin:$PATH"
    mkdir -p "$state_dir"
    if [[ "$auth" == token ]]; then make_token; export RAY_AUTH_TOKEN_PATH="$token_file"; fi
    args=(start --head --port "$gcs_port" --dashboard-host 127.0.0.1 --dashboard-port "$dash_port"
          --metrics-export-port "$metrics_port" --disable-usage-stats)
    [[ -n "${CACR_NUM_CPUS:-}" ]] && args+=(--num-cpus "$CACR_NUM_CPUS")
    [[ -n "${CACR_OBJECT_STORE_BYTES:-}" ]] && args+=(--object-store-memory "$CACR_OBJECT_STORE_BYTES")
    "$ray_bin" "${args[@]}" > "$state_dir/ray-start.log" 2>&1 || { cat "$state_dir/ray-start.log" >&2; exit 1; }
    # `ray start` returns before the dashboard answers: wait (up to 60 s) so a submission right after works
    if command -v curl > /dev/null; then for _ in $(seq 120); do dashboard_up && break; sleep 0.5; done; fi
    echo "Ray head is up: dashboard and Jobs API on $address (127.0.0.1 only), auth: $auth"
    echo "Submit a job from the project folder:"
    echo "  eval \"\$(platform/local/ray-head.sh env)\""
    echo "  ray job submit --address $address --working-dir . -- python pipelines/pretrain.py experiment=smoke"
    echo "Open the dashboard: $address$([[ "$auth" == token ]] && echo " (it asks for the token in $token_file)")"
    echo "Stop it: platform/local/ray-head.sh stop"
    ;;
  env) client_env ;;
  status)
    if dashboard_up; then
      echo "up: $address"
    else
      echo "down"; exit 1
    fi
    ;;
  stop)
    export RAY_AUTH_MODE="$auth"
    "$ray_bin" stop > /dev/null 2>&1 || true
    echo "Ray stopped"
    ;;
  *) echo "usage: $0 start|env|status|stop" >&2; exit 2 ;;
esac
