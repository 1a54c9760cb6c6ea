# Sourced by the launch scripts: shared flag parsing.

# need_value SCRIPT FLAG [VALUE...]: exits 2 with one line unless FLAG is
# followed by a non-empty value.
need_value() {
  local script="$1" flag="$2"
  shift 2
  [[ $# -ge 1 && -n "$1" ]] || { echo "$script: $flag needs a value" >&2; exit 2; }
}
