#!/bin/sh
# Deletes rotated logs older than $MUSTER_PARAM_MAX_AGE_DAYS days.
# On a sandboxed agent (`muster-agent run --root DIR`, as in the quickstart)
# MUSTER_ROOT is DIR, so only the sandbox's logs are touched.
set -eu
days="${MUSTER_PARAM_MAX_AGE_DAYS:-14}"
logs="${MUSTER_ROOT:-}/var/log"
if [ ! -d "$logs" ]; then
    echo "no $logs: nothing to clean"
    exit 0
fi
find "$logs" -type f \( -name '*.gz' -o -name '*.[0-9]' \) -mtime +"$days" -print -delete
