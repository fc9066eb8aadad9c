#!/usr/bin/env bash
# Write the compose stack's secret files (docker-compose.yml `secrets:`), once:
#   id_key                 CONCORD_ID_KEY_FILE: keys every resource id. NEVER regenerate or rotate it
#                          (docs/operations.md): ids published to the HIE and held by clients would change.
#   token_secret           CONCORD_TOKEN_SECRET_FILE: signs the API's access tokens and paging links.
#   audit_signing_key.pem  CONCORD_AUDIT_SIGNING_KEY_FILE: the log's Ed25519 key (PKCS#8 PEM); its public
#                          half (printed) goes to the IG board for `concord audit verify --public-key`.
#
# Usage: deploy/make-secrets.sh [DIR]   (default deploy/secrets; set DEPLOY_SECRETS_DIR to the same DIR)
# An existing file is never overwritten. Needs openssl only (concord need not be installed here).
#
# The directory is 0700 (nobody else on this host can reach the files); the files are 0444 because
# compose bind-mounts them unchanged and the containers run as uid 10001, not as you. Back the
# directory up with the deployment's other secrets: losing the id key loses every resource id.
set -euo pipefail

dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 0700 "$dir"

make() {  # make FILE COMMAND...: run COMMAND into FILE unless FILE exists
    local path="$dir/$1"
    shift
    if [ -e "$path" ]; then
        echo "kept     $path"
        return
    fi
    (umask 077 && "$@" >"$path.tmp")
    chmod 0444 "$path.tmp"
    mv "$path.tmp" "$path"
    echo "created  $path"
}

make id_key openssl rand -hex 32
make token_secret openssl rand -hex 32
make audit_signing_key.pem openssl genpkey -algorithm ed25519
echo "the log's public key (give it to the IG board; also: docker compose run --rm api audit public-key):"
openssl pkey -in "$dir/audit_signing_key.pem" -pubout
