# Sourced by the launch scripts: shared flag parsing.

# need_value SCRIPT FLAG [VALUE...]: exits 2 with one line unless FLAG is
# followed by a non-empty value.
need_value() {
  local script="$1" flag="$2"
  shift 2
  [[ $# -ge 1 && -n "$1" ]] || { echo "$script: $flag needs a value" >&2; exit 2; }
}

# need_positive_int SCRIPT FLAG VALUE [MAX]: exits 2 with one line unless
# VALUE is an integer from 1 (up to MAX). Checked here, not where it is used:
# `for ((i = 0; i < N; ...))` quietly runs nothing for 0 and reads "two" as
# an unset variable.
need_positive_int() {
  local script="$1" flag="$2" value="$3" max="${4:-}"
  if [[ ! "$value" =~ ^[1-9][0-9]{0,8}$ ]] || [[ -n "$max" && "$value" -gt "$max" ]]; then
    echo "$script: $flag needs a positive integer${max:+ up to $max}, got '$value'" >&2
    exit 2
  fi
}

# shell_words [ARG...]: each ARG shell-quoted after a space, and nothing at
# all for no ARG (`printf ' %q'` alone would print " ''", an empty argument).
shell_words() {
  (($# == 0)) || printf ' %q' "$@"
}
