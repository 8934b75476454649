#!/bin/sh
# What a host has, as key=value lines (deploy.hosts.probe parses them). Read-only but for the warm-ahead below.
#
#   sh probe.sh REMOTE_DIR NATIVE_MARKER [WARM_NATIVE WARM_COMPOSE]
#
# REMOTE_DIR: the run's folder (it may not exist yet); NATIVE_MARKER: the file under it that marks
# a native deploy. POSIX sh, so it runs on any host; every probe tolerates a missing tool.
# WARM_NATIVE, WARM_COMPOSE: a deploy's warm-ahead command for a training that runs there natively
# or in Compose (either may be empty); the one for what REMOTE_DIR holds is started first, in the
# background and detached, so torch imports while the deploy reads the host and plans. The only
# thing this script starts; the warm-ahead command itself refuses what a reload would refuse.
REMOTE_DIR=$1
NATIVE_MARKER=$2
WARM_NATIVE=${3:-}
WARM_COMPOSE=${4:-}
if [ -d "$REMOTE_DIR" ]; then
  if [ -f "$REMOTE_DIR/$NATIVE_MARKER" ]; then warm=$WARM_NATIVE; else warm=$WARM_COMPOSE; fi
  [ -z "$warm" ] || sh -c "$warm" </dev/null >/dev/null 2>&1 &
fi
export LC_ALL=C
kv() { printf '%s=%s\n' "$1" "$2"; }
kv os "$( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || uname -s)"
kv kernel "$(uname -r)"
kv arch "$(uname -m)"
kv uid "$(id -u)"
kv cpus "$(nproc 2>/dev/null)"
kv mem_kb "$(awk '/MemTotal/ {print $2}' /proc/meminfo 2>/dev/null)"
kv shm_kb "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu,memory.used \
    --format=csv,noheader,nounits 2>/dev/null | while IFS= read -r line; do kv gpu "$line"; done
fi
if command -v docker >/dev/null 2>&1; then
  kv docker_client 1
  kv docker "$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
  kv compose_v2 "$(docker compose version --short 2>/dev/null)"
  kv runtimes "$(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null)"
fi
if command -v docker-compose >/dev/null 2>&1; then
  # Python's Compose 1.x (a script) tells its version from its package in a few milliseconds; running it takes
  # half a second of CPU. A binary (Compose v2, or a bundled 1.x) is asked.
  compose_v1=
  interpreter=$(head -n 1 "$(command -v docker-compose)" 2>/dev/null | sed -n 's/^#![[:space:]]*\([^[:space:]]*python[^[:space:]]*\).*/\1/p')
  if [ -n "$interpreter" ]; then
    compose_v1=$("$interpreter" -c 'import compose; print(compose.__version__)' 2>/dev/null)
  fi
  [ -n "$compose_v1" ] || compose_v1=$(docker-compose version --short 2>/dev/null)
  kv compose_v1 "$compose_v1"
fi
kv python3 "$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
for tool in zstd gzip curl rsync tar apt-get sudo; do
  command -v "$tool" >/dev/null 2>&1 && kv tool "$tool"
done
d="$REMOTE_DIR"
while [ -n "$d" ] && [ ! -d "$d" ]; do d=$(dirname "$d"); done
kv disk_dir "$d"
kv disk_free_kb "$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')"
kv remote_dir_exists "$([ -d "$REMOTE_DIR" ] && echo 1 || echo 0)"
kv native "$([ -f "$REMOTE_DIR/$NATIVE_MARKER" ] && echo 1 || echo 0)"
