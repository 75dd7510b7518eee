#!/usr/bin/env bash
# Smoke test and debugging guide: is every server up, healthy and answering an authenticated call?
#
#   BITWARE_API_KEY=bwk_... scripts/smoke.sh
#
# Addresses default to the ports `bitware up` uses; override with KAM_ADDRESS,
# ORCHESTRATOR_ADDRESS and GRANULATOR_ADDRESS. Each step prints the grpcurl command it runs, ready
# to paste, so a failing call can be repeated by hand. Exits non-zero if any call failed.
set -euo pipefail

KAM_ADDRESS="${KAM_ADDRESS:-127.0.0.1:50051}"
ORCHESTRATOR_ADDRESS="${ORCHESTRATOR_ADDRESS:-127.0.0.1:50052}"
GRANULATOR_ADDRESS="${GRANULATOR_ADDRESS:-127.0.0.1:50053}"
: "${BITWARE_API_KEY:?set BITWARE_API_KEY to a client API key (see README: Debugging with grpcurl)}"

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$repo/.venv/bin/grpcurl" ]; then
    GRPCURL="$repo/.venv/bin/grpcurl"
else
    GRPCURL=grpcurl
fi

failures=0

# Prints the command (the key as $BITWARE_API_KEY, never its value), runs it, counts failures.
run() {
    local arg
    printf '\n+ grpcurl' >&2
    for arg in "$@"; do
        case "$arg" in
            "x-api-key: $BITWARE_API_KEY") printf ' "x-api-key: $BITWARE_API_KEY"' >&2 ;;
            *[[:space:]{}\"]*) printf " '%s'" "$arg" >&2 ;;
            *) printf ' %s' "$arg" >&2 ;;
        esac
    done
    printf '\n' >&2
    "$GRPCURL" "$@" || failures=$((failures + 1))
}

# Reflection: the services each server offers. Needs no credential.
for address in "$KAM_ADDRESS" "$ORCHESTRATOR_ADDRESS" "$GRANULATOR_ADDRESS"; do
    run -plaintext "$address" list
done

# Health of the whole server (empty service name). Needs no credential.
for address in "$KAM_ADDRESS" "$ORCHESTRATOR_ADDRESS" "$GRANULATOR_ADDRESS"; do
    run -plaintext -d '{}' "$address" grpc.health.v1.Health/Check
done

# One authenticated call per server, as a client program.
auth=(-H "x-api-key: $BITWARE_API_KEY")
run -plaintext "${auth[@]}" -d '{}' "$KAM_ADDRESS" \
    bitware.kam.v1.TemplateService/ListMasterTemplates
run -plaintext "${auth[@]}" -d '{}' "$ORCHESTRATOR_ADDRESS" \
    bitware.orchestrator.v1.OrchestratorService/GetQueue
run -plaintext "${auth[@]}" -d '{}' "$GRANULATOR_ADDRESS" \
    bitware.granulator.v1.GranulatorService/ListTemplates

if [ "$failures" -gt 0 ]; then
    echo "smoke test FAILED: $failures call(s) failed" >&2
    exit 1
fi
echo "smoke test passed" >&2
