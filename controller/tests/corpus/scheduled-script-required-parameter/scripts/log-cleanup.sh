#!/bin/sh
find /var/log -name "*.gz" -mtime "+$MUSTER_PARAM_MAX_AGE_DAYS" -delete
