#!/bin/sh
# Deletes rotated logs older than $MUSTER_PARAM_MAX_AGE_DAYS days.
set -eu
days="${MUSTER_PARAM_MAX_AGE_DAYS:-14}"
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' \) -mtime +"$days" -print -delete
