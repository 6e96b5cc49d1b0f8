#!/usr/bin/env bash
# Cross-checks `harness tokenize` against reference tokenizers from npm, exactly, on >= 1000
# generated strings (scripts, whitespace runs incl. U+0085/U+FEFF/U+00A0, digits, code, emoji
# ZWJ sequences, special-token names, the Alpaca prompts, the empty string, 25,000+ runs):
#   LLaMA 3: npm tiktoken (the WASM build of tiktoken's engine) over llama3-tokenizer-js 1.2.0's
#            vocabulary rewritten as Meta's tokenizer.model; plain and with --allow-special
#   LLaMA 2: npm llama-tokenizer-js 1.2.2, against a SentencePiece model built from its vocabulary
# plus decode round trips and the example ids of PLATFORM_NOTES.
#
# usage: crosscheck.sh HARNESS_BIN BUILD_DIR
# Works in BUILD_DIR/tokenizers; the npm install is kept there (reruns do not need the network).
# The vocabularies are Meta-licensed: they are built here, never committed.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 HARNESS_BIN BUILD_DIR" >&2
  exit 2
fi
harness=$(realpath "$1")
work=$(realpath -m "$2/tokenizers")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start_ms=$(date +%s%3N)

for tool in node npm; do
  if ! command -v "$tool" > /dev/null; then
    echo "crosscheck: $tool not found (scripts/install-deps.sh installs nodejs and npm)" >&2
    exit 1
  fi
done

# (a) the reference packages, pinned; installed once per build directory
packages=(tiktoken@1.0.22 llama3-tokenizer-js@1.2.0 llama-tokenizer-js@1.2.2)
mkdir -p "$work/npm"
installed() {
  local spec name version
  for spec in "${packages[@]}"; do
    name=${spec%@*}
    version=${spec##*@}
    [[ -f "$work/npm/node_modules/$name/package.json" ]] || return 1
    [[ $(node -p "require('$work/npm/node_modules/$name/package.json').version") == "$version" ]] || return 1
  done
}
if ! installed; then
  echo "crosscheck: npm install ${packages[*]} into $work/npm"
  npm install --prefix "$work/npm" --no-audit --no-fund --loglevel=error "${packages[@]}" > /dev/null
  installed || { echo "crosscheck: npm install did not give ${packages[*]}" >&2; exit 1; }
fi

# (b) the two tokenizer.model files, (c) the strings, (d) the reference ids
node "$here/crosscheck.mjs" prepare "$work"
llama3=$work/llama3.tokenizer.model
llama2=$work/llama2.tokenizer.model
strings=$work/strings.jsonl

failed=0
check() {  # LABEL EXPECTED GOT
  node "$here/crosscheck.mjs" compare "$1" "$2" "$3" "$strings" || failed=1
}
expect_ids() {  # LABEL EXPECTED_IDS harness-args...
  local label=$1 expected=$2 got
  shift 2
  got=$("$harness" tokenize "$@")
  if [[ "$got" == "$expected" ]]; then
    echo "$label: $got"
  else
    echo "$label: MISMATCH: expected $expected, got $got"
    failed=1
  fi
}

# (e) harness on the same strings
"$harness" tokenize --tokenizer "$llama3" --jsonl "$strings" > "$work/got.llama3.jsonl"
check "LLaMA 3 (tiktoken)" "$work/expected.llama3.jsonl" "$work/got.llama3.jsonl"
"$harness" tokenize --tokenizer "$llama3" --jsonl "$strings" --allow-special > "$work/got.llama3.special.jsonl"
check "LLaMA 3 --allow-special (tiktoken, allowed_special=all)" \
  "$work/expected.llama3.special.jsonl" "$work/got.llama3.special.jsonl"
"$harness" tokenize --tokenizer "$llama2" --jsonl "$strings" > "$work/got.llama2.jsonl"
check "LLaMA 2 (llama-tokenizer-js)" "$work/expected.llama2.jsonl" "$work/got.llama2.jsonl"

# decode: LLaMA 3 decode(encode(s)) == s; LLaMA 2 as the reference package decodes
"$harness" tokenize --tokenizer "$llama3" --decode --jsonl "$work/got.llama3.jsonl" > "$work/decoded.llama3.jsonl"
check "LLaMA 3 decode round trip" "$strings" "$work/decoded.llama3.jsonl"
"$harness" tokenize --tokenizer "$llama3" --decode --jsonl "$work/got.llama3.special.jsonl" > "$work/decoded.llama3.special.jsonl"
check "LLaMA 3 --allow-special decode round trip" "$strings" "$work/decoded.llama3.special.jsonl"
"$harness" tokenize --tokenizer "$llama2" --decode --jsonl "$work/got.llama2.jsonl" > "$work/decoded.llama2.jsonl"
check "LLaMA 2 decode (llama-tokenizer-js decode)" "$work/expected.llama2.decoded.jsonl" "$work/decoded.llama2.jsonl"

# The example ids of PLATFORM_NOTES (the real vocabularies are needed for these).
text="Below is an instruction that describes a task."
expect_ids "LLaMA 3 example" "39314 374 459 7754 430 16964 264 3465 13" --tokenizer "$llama3" --text "$text"
expect_ids "LLaMA 2 example (BOS)" "1 13866 338 385 15278 393 16612 263 3414 29889" \
  --tokenizer "$llama2" --text "$text" --bos
expect_ids "LLaMA 3 chat header" "[128000,128006,882,128007,271,13347,128009]" --tokenizer "$llama3" \
  --text $'<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>' --allow-special --bos --json

elapsed_ms=$(( $(date +%s%3N) - start_ms ))
elapsed=$((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))
if [[ $failed -ne 0 ]]; then
  echo "crosscheck: FAILED (${elapsed}s; files in $work)"
  exit 1
fi
echo "crosscheck: all exact (${elapsed}s)"
