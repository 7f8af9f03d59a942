#!/usr/bin/env bash
# Images captioned per minute: `janus batch understand` at batch sizes 1, 4
# and 8 against one `janus understand` process per image (the loop users
# write today), on the same images, question and answer length.
#
#   bash bench/bench_batch.sh JANUS_BIN MODEL_DIR IMAGE_DIR [TOKENS] [MODEL FLAGS...]
#
# MODEL_DIR: a model folder (e.g. the real-size 1B with random weights that
# `janus bench` caches, plus a tokenizer and processor configs, quantised
# with `janus quantize`). Random weights never end an answer early, so every
# row decodes TOKENS tokens (default 64). Prints one line per configuration:
# seconds and rows per minute. Model flags (e.g. --dtype bf16) go to every run;
# BATCHES="8" runs only those batch sizes.
set -euo pipefail
bin=$1 model=$2 images=$3 tokens=${4:-64}
shift $(($# < 4 ? $# : 4))
flags=("$@")
question="Describe this image in detail."
n=$(find "$images" -maxdepth 1 -type f | wc -l)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
report() { awk -v what="$1" -v s="$2" -v n="$n" 'BEGIN { printf "%-22s %7.1f s  %6.2f rows/min\n", what, s, n * 60 / s }'; }

start=$(date +%s.%N)
for img in "$images"/*; do
    "$bin" understand --model "$model" "${flags[@]}" --image "$img" --question "$question" \
        --max-new-tokens "$tokens" --json > /dev/null
done
report "one process per image" "$(echo "$(date +%s.%N) - $start" | bc)"

for batch in ${BATCHES:-1 4 8}; do
    rm -f "$out/r.jsonl"
    start=$(date +%s.%N)
    "$bin" batch understand --model "$model" "${flags[@]}" --images "$images" --question "$question" \
        --max-new-tokens "$tokens" --batch-size "$batch" --out "$out/r.jsonl" --quiet
    report "batch understand, $batch" "$(echo "$(date +%s.%N) - $start" | bc)"
done
