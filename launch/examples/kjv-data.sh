#!/usr/bin/env bash
# kjv-data.sh - the data of the KJV language-model example (launch/examples/kjv-gpt.sh): the
# King James Bible from Debian's bible-kjv (4.4 MB of English, 31102 verses) as byte tokens
# (vocab 256), its last tenth held out for validation.
#
#   launch/examples/kjv-data.sh DDTRAIN [DIR]      DDTRAIN: the ddtrain binary; DIR: data
# Installs bible-kjv when missing (launch/install-deps.sh kjv), prints the whole Bible with
# `bible -f 'Gen1:1-Rev22:21'` (one verse a line), drops each verse's reference ("Ge1:1 ") so
# the text reads as prose, and converts it with `ddtrain convert text --val-fraction 0.1` into
# DIR/kjv-train.h5 and DIR/kjv-val.h5. The validation text is the tail (Acts 22 to the end of
# Revelation): text the model never trains on, as nanoGPT's prepare.py splits its text. Done
# once: kept when both files exist.
set -euo pipefail
ddtrain=${1:?usage: kjv-data.sh DDTRAIN [DIR]}
dir=${2:-data}
if [[ -f $dir/kjv-train.h5 && -f $dir/kjv-val.h5 ]]; then
  echo "kjv-data.sh: $dir/kjv-train.h5 and $dir/kjv-val.h5 are there"
  exit 0
fi
"$(dirname "$0")/../install-deps.sh" kjv
mkdir -p "$dir"
bible -f 'Gen1:1-Rev22:21' | sed 's/^[^ ]* //' >"$dir/kjv.txt.tmp-$$"
mv "$dir/kjv.txt.tmp-$$" "$dir/kjv.txt"
"$ddtrain" convert text "$dir/kjv.txt" -o "$dir/kjv.h5" --val-fraction 0.1
