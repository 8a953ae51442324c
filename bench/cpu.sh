#!/usr/bin/env bash
# The CPU every benchmark section records: the model name and the family and model
# numbers, since a VM may report only "AMD EPYC", which tells a Zen 4 (family 25) from
# a Zen 5 (family 26) no more than it tells the cache sizes.
set -euo pipefail
name=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
family=$(grep -m1 "cpu family" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 -E "^model[[:space:]]*:" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
echo "$name (family $family, model $model)"
