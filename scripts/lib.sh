# Shared by scripts/run, scripts/test and scripts/bench: installing prerequisites and starting
# local secantusd-rs and redis-server. Source it; do not run it.

SECANTUS_VERSION="0.5.3-beta.196"
export PATH="$HOME/.cargo/bin:$PATH"
# Build output lives outside the clone so fresh clones on the same machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confab/target}"

say() { printf '%s\n' "$*" >&2; }

# Installs redis-server and cmake (apt) and secantusd-rs (cargo) when missing; silent otherwise.
ensure_prerequisites() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt..."
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! secantusd-rs --version 2>/dev/null | grep -q "$SECANTUS_VERSION"; then
    say "building SecantusDB $SECANTUS_VERSION (secantusd-rs), once per machine; this takes about 12 minutes..."
    cargo install secantus-mdb --version "=$SECANTUS_VERSION" --ignore-rust-version --locked </dev/null
  fi
}

# Installs the Yjs test client's npm packages from its lockfile when they are missing or stale.
ensure_test_client() {
  local dir=tests/yjs
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "installing the Yjs test client's npm packages..."
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error </dev/null >/dev/null
  fi
}

# A TCP port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_mongo DATA_DIR PORT LOG -> prints the port it listens on (PORT 0 picks one).
start_mongo() {
  local dir=$1 port=$2 log=$3 pid
  mkdir -p "$dir"
  secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir" --cache-size "${CONFAB_MONGO_CACHE:-1G}" \
    --log-level WARNING >"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir.pid"
  for _ in $(seq 1 300); do
    local bound
    bound=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
    if [ -n "$bound" ]; then echo "$bound"; return 0; fi
    kill -0 "$pid" 2>/dev/null || { say "secantusd-rs failed to start:"; cat "$log" >&2; return 1; }
    sleep 0.1
  done
  say "secantusd-rs did not report its port in 30 s"; return 1
}

# start_redis DATA_DIR PORT LOG PERSIST(yes|no)
start_redis() {
  local dir=$1 port=$2 log=$3 persist=$4 pid
  mkdir -p "$dir"
  local save=(--save "")
  [ "$persist" = yes ] && save=(--save "60 1" --appendonly yes)
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" "${save[@]}" --daemonize no \
    --logfile "$log" >/dev/null 2>&1 &
  pid=$!
  echo "$pid" >"$dir.pid"
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { say "redis-server failed to start:"; cat "$log" >&2; return 1; }
    sleep 0.1
  done
  say "redis-server did not answer in 10 s"; return 1
}

# stop_pidfile FILE: stops the process recorded in FILE, waiting for a clean exit.
stop_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
