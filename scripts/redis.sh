#!/usr/bin/env bash
# scripts/redis.sh: the Redis the tests run against (Debian's redis-server),
# on 127.0.0.1:16379, daemonized, with no persistence.
#
# usage: scripts/redis.sh COMMAND [ARGS]
#   up          start it and wait until it answers PING; a no-op when it runs
#   down        stop it (SHUTDOWN NOSAVE, then signals) and clean up; a no-op
#               when it is stopped
#   status      say whether it runs (exit 0) or not (exit 1)
#   logs        the tail of its log
#   address     print its address (127.0.0.1:$REDIS_PORT)
#   cli ARGS    run redis-cli against it, e.g. scripts/redis.sh cli keys '*'
#
# environment:
#   IOTGW_CACHE      cache dir (default: <repo>/.cache, git-ignored)
#   REDIS_PORT       port (default 16379)
#   REDIS_INSTANCE   instance name (default: default); each instance has its
#                    own dir $CACHE/redis-run/NAME, so a second one can run
#                    beside the first with another name and port
#   REDIS_UP_TIMEOUT seconds `up` waits for PONG (default 30)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
CACHE=${IOTGW_CACHE:-$REPO_ROOT/.cache}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac

REDIS_HOST=127.0.0.1
REDIS_PORT=${REDIS_PORT:-16379}
REDIS_INSTANCE=${REDIS_INSTANCE:-default}
REDIS_UP_TIMEOUT=${REDIS_UP_TIMEOUT:-30}
RUN_ROOT=$CACHE/redis-run
RUN_DIR=$RUN_ROOT/$REDIS_INSTANCE
PID_FILE=$RUN_DIR/redis.pid
LOG_FILE=$RUN_DIR/redis.log

log() { printf 'redis.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	sed -n '/^# usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-2}"
}

have() { command -v "$1" >/dev/null 2>&1; }

lock() {
	mkdir -p "$RUN_ROOT"
	exec 9>"$RUN_ROOT/$REDIS_INSTANCE.lock"
	flock -w 120 9 || die "timed out waiting for lock $RUN_ROOT/$REDIS_INSTANCE.lock"
}

# running_pid: print the pid of this instance's redis-server if it is alive.
running_pid() {
	[[ -f $PID_FILE ]] || return 1
	local pid
	pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/cmdline ]]; then
		local cmdline
		cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
		# redis-server rewrites its title to "redis-server 127.0.0.1:PORT"
		[[ $cmdline == *redis-server*":$REDIS_PORT"* ]] || return 1
	fi
	printf '%s\n' "$pid"
}

port_open() {
	(exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT") 2>/dev/null
}

ping() {
	local reply
	reply=$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
	[[ $reply == PONG ]]
}

cmd_up() {
	have redis-server || die "redis-server not found (run scripts/deps.sh)"
	have redis-cli || die "redis-cli not found (run scripts/deps.sh)"
	lock
	local pid start=$SECONDS deadline
	deadline=$((SECONDS + REDIS_UP_TIMEOUT))
	if pid=$(running_pid); then
		while ((SECONDS < deadline)); do
			if ping; then
				log "already running: $REDIS_HOST:$REDIS_PORT (instance $REDIS_INSTANCE, pid $pid)"
				return 0
			fi
			sleep 0.2
		done
		die "redis $REDIS_INSTANCE (pid $pid) runs but does not answer PING; try: scripts/redis.sh down"
	fi
	port_open && die "$REDIS_HOST:$REDIS_PORT is already in use by another process (not instance $REDIS_INSTANCE of $RUN_ROOT); see: ss -ltnp 'sport = :$REDIS_PORT'"
	rm -rf "$RUN_DIR"
	mkdir -p "$RUN_DIR"
	# --daemonize: redis forks and writes the pid file itself; fd 9 (the lock)
	# is closed so the daemon does not hold it.
	if ! redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" \
		--daemonize yes --pidfile "$PID_FILE" --logfile "$LOG_FILE" \
		--dir "$RUN_DIR" --save '' --appendonly no \
		</dev/null 9>&-; then
		[[ -s $LOG_FILE ]] && tail -n 20 "$LOG_FILE" >&2
		die "redis-server failed to start"
	fi
	while ((SECONDS < deadline)); do
		if ping; then
			pid=$(running_pid) || pid='?'
			log "up: Redis at $REDIS_HOST:$REDIS_PORT (instance $REDIS_INSTANCE, pid $pid, $((SECONDS - start))s)"
			return 0
		fi
		sleep 0.1
	done
	[[ -s $LOG_FILE ]] && tail -n 20 "$LOG_FILE" >&2
	stop_redis
	die "redis did not answer PING on $REDIS_HOST:$REDIS_PORT within ${REDIS_UP_TIMEOUT}s"
}

wait_gone() {
	local pid=$1 tenths=$2 i
	for ((i = 0; i < tenths; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

stop_redis() {
	local pid
	pid=$(running_pid) || {
		rm -f "$PID_FILE"
		return 0
	}
	redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
	if ! wait_gone "$pid" 50; then
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_gone "$pid" 50; then
			log "redis (pid $pid) still running: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" 20 || true
		fi
	fi
	rm -f "$PID_FILE"
	log "stopped redis $REDIS_INSTANCE (pid $pid)"
}

cmd_down() {
	lock
	stop_redis
	# keep only the log, for post-mortems
	if [[ -d $RUN_DIR ]]; then
		find "$RUN_DIR" -mindepth 1 ! -name redis.log -exec rm -rf {} +
	fi
}

cmd_status() {
	local pid
	if pid=$(running_pid); then
		if ping; then
			echo "redis $REDIS_INSTANCE: running, pid $pid, address $REDIS_HOST:$REDIS_PORT"
		else
			echo "redis $REDIS_INSTANCE: running (pid $pid) but not answering PING"
		fi
		return 0
	fi
	echo "redis $REDIS_INSTANCE: not running"
	return 1
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
up | down | status | logs | address)
	[[ $# -eq 0 ]] || usage
	;;
esac
case $command in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
logs)
	[[ -f $LOG_FILE ]] || die "no log yet: $LOG_FILE"
	tail -n "${REDIS_LOG_LINES:-100}" "$LOG_FILE"
	;;
address) echo "$REDIS_HOST:$REDIS_PORT" ;;
cli) exec redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@" ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
