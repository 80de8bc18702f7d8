#!/usr/bin/env bash
# Prometheus and Grafana for a Ray cluster, in docker, listening on this machine's 127.0.0.1 only.
# Run it on the Ray head (it reads Ray's files under /tmp/ray).
#
#   platform/monitoring/run-monitoring.sh start    # Prometheus http://127.0.0.1:9090, Grafana http://127.0.0.1:3000
#   platform/monitoring/run-monitoring.sh status
#   platform/monitoring/run-monitoring.sh stop     # removes the two containers (the data volumes stay)
#
# From another machine: ssh -L 3000:127.0.0.1:3000 -L 9090:127.0.0.1:9090 <head>.
# Grafana asks for a login: admin / admin the first time, then a new password.
# Settings (environment): CACR_RAY_TMP (Ray's temp folder, default /tmp/ray; mounted at the same
# path because Ray's session_latest link is absolute), CACR_PROMETHEUS_IMAGE, CACR_GRAFANA_IMAGE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ray_tmp="${CACR_RAY_TMP:-/tmp/ray}"
prometheus_image="${CACR_PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}"
grafana_image="${CACR_GRAFANA_IMAGE:-grafana/grafana:12.0.0}"
network=cacr-monitoring

start() {
  command -v docker > /dev/null || { echo "docker not found" >&2; exit 1; }
  [[ -d "$ray_tmp" ]] || { echo "$ray_tmp not found: start Ray on this machine first (or set CACR_RAY_TMP)" >&2; exit 1; }
  docker network inspect "$network" > /dev/null 2>&1 || docker network create "$network" > /dev/null
  docker rm -f cacr-prometheus cacr-grafana > /dev/null 2>&1 || true

  docker run -d --name cacr-prometheus --network "$network" \
    -p 127.0.0.1:9090:9090 \
    --add-host host.docker.internal:host-gateway \
    -v "$here/prometheus.yml:/etc/prometheus/prometheus.yml:ro" \
    -v "$ray_tmp:$ray_tmp:ro" \
    -v cacr-prometheus-data:/prometheus \
    "$prometheus_image" > /dev/null

  docker run -d --name cacr-grafana --network "$network" \
    -p 127.0.0.1:3000:3000 \
    -e GF_USERS_ALLOW_SIGN_UP=false \
    -v "$here/grafana/provisioning:/etc/grafana/provisioning:ro" \
    -v "$here/grafana/dashboards:/etc/grafana/dashboards/cacr:ro" \
    -v "$ray_tmp:$ray_tmp:ro" \
    -v cacr-grafana-data:/var/lib/grafana \
    "$grafana_image" > /dev/null

  echo "Prometheus: http://127.0.0.1:9090 (targets: http://127.0.0.1:9090/targets)"
  echo "Grafana:    http://127.0.0.1:3000 (folders Ray and CACR)"
}

case "${1:-}" in
  start) start ;;
  status) docker ps --filter name=cacr-prometheus --filter name=cacr-grafana --format '{{.Names}}\t{{.Status}}\t{{.Ports}}' ;;
  stop) docker rm -f cacr-prometheus cacr-grafana > /dev/null 2>&1 || true; echo "stopped" ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
