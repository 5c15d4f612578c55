#!/usr/bin/env bash
# A complete batch workflow with the plain CLI: generate the seed data set (once),
# cluster it (where `auto` puts a job this size: in the command's process) into a dated
# output, keep the run idempotent.
#
#   workflows/seed-demo.sh [DATA_DIR]
#
# Schedule it with cron, for example every night at 02:00:
#   0 2 * * * /path/to/meanshift-pipeline/workflows/seed-demo.sh /srv/meanshift >> /var/log/meanshift.log 2>&1
set -euo pipefail

data_dir=${1:-./meanshift-data}
input="$data_dir/seed.zarr"
output="$data_dir/clusters-$(date -u +%Y-%m-%d).zarr"
mkdir -p "$data_dir"

if [ ! -e "$input" ]; then
  meanshift generate --clusters 6 --per-cluster 250 --spread 5 --seed 0 --output "$input"
fi

# A finished output for today is kept; a partial or failed one is redone.
if meanshift status "$output" >/dev/null; then
  echo "already complete: $output"
  exit 0
fi
meanshift run --input "$input" --output "$output" --overwrite \
  --bandwidth 2.5 --kernel gaussian --blurring --quiet
echo "complete: $output"
