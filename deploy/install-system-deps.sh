#!/usr/bin/env bash
# Installs what the integration and end-to-end tests talk to, from the package registries only:
# Prometheus + promtool + amtool and headless Chromium from Debian's packages, the Kafka broker jars
# from Maven Central. Idempotent: each step is skipped when what it installs is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# npm installs posthog-js for the browser test of the PostHog source (make js-deps).
command -v npm >/dev/null 2>&1 || need+=(npm)

if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  # The Debian prometheus packages start their daemons under systemd where it runs; the tests start
  # their own instances on free ports, so nothing here depends on those.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bash "$here/kafka/fetch-jars.sh"
