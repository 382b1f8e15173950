#!/bin/bash
# Two real bitbayd regtest nodes on loopback that fork and reorganise, with a pegx following
# node A (issue #14, best effort on the real node). Needs the kit in ../shared/bitbayd.
#   A is made by run_regtest.sh, stopped, copied to B; both restart with P2P on 127.0.0.1 (A
#   28960, B 28970; connect=0, so neither dials anyone by itself). `addnode A onetry` on B joins
#   them; restarting B splits them (the node has no disconnectnode; onetry is not persisted).
#   Round 1: split, A mines 2 (with a wallet payment), B mines 4, join: A reorganises 2 deep
#   (the payment returns to A's mempool). Round 2: A mines 4, B mines 6: 4 deep, past pegx's
#   final depth 3: pegx logs it at ERROR and `pegx status` shows the alarm first.
# Usage: scripts/regtest_fork.sh WORKDIR   (WORKDIR is wiped)
set -euo pipefail
KIT=$(cd "$(dirname "$0")/../../shared/bitbayd" 2>/dev/null && pwd || echo /work/shared/bitbayd)
PEGX=${PEGX:-$(dirname "$0")/../.venv/bin/pegx}
W=$1; rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
BN=$("$KIT/build.sh" | tail -n 1)
BURN=B4T5ciTCkWauSqVAcVKy88ofjcSasUkSYU
UA=http://bayrpc:regtestpass@127.0.0.1:28961; UB=http://bayrpc:regtestpass@127.0.0.1:28971
rpc() { python3 "$KIT/rpc.py" "$@"; }
stopnode() { local p; p=$(cat "$W/$1/bitbayd.pid"); kill "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; }
startnode() {
  "$BN" -datadir="$W/$1" -conf="$W/$1/bitbay.conf" </dev/null >>"$W/$1/stdout.log" 2>&1 &
  echo $! > "$W/$1/bitbayd.pid"; rpc --wait 60 "$2" getblockcount >/dev/null
}
RPCPORT=28961 "$KIT/run_regtest.sh" "$W/A" >/dev/null
stopnode A; cp -a "$W/A" "$W/B"
sed -i 's/^listen=0/listen=1/' "$W/A/bitbay.conf"
sed -i 's/^rpcport=.*/rpcport=28971/; s/^port=.*/port=28970/; s/^listen=0/listen=1/' "$W/B/bitbay.conf"
startnode A "$UA"; startnode B "$UB"
rpc "$UB" addnode 127.0.0.1:28960 onetry >/dev/null
PEGX_FINAL_DEPTH=3 "$PEGX" serve --datadir "$W/px" --port 28990 --chain bitbayd --node-url "$UA" \
  --autostart >"$W/pegx.log" 2>&1 &
PX=$!
trap 'kill $PX 2>/dev/null || true; sleep 2; stopnode A || true; stopnode B || true' EXIT
sleep 8
round() {  # round A_BLOCKS B_BLOCKS
  stopnode B; startnode B "$UB"
  rpc "$UA" sendtoaddress "$(rpc "$UA" getnewaddress)" 1000 >/dev/null
  rpc "$UA" generate "$1" "" "$BURN" >/dev/null; sleep 3
  rpc "$UB" generate "$2" "" "$BURN" >/dev/null
  rpc "$UB" addnode 127.0.0.1:28960 onetry >/dev/null; sleep 6
  echo "A at $(rpc "$UA" getblockcount), B at $(rpc "$UB" getblockcount), A mempool $(rpc "$UA" getrawmempool)"
}
round 2 4
round 4 6
grep "chain reorganisation" "$W/pegx.log"
"$PEGX" status --url http://127.0.0.1:28990 | head -1
