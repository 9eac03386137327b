#!/usr/bin/env bash
# scripts/kafka.sh: the Apache Kafka broker the tests run against.
#
# A single KRaft node (combined broker + controller) run straight from the
# jars on Maven Central with the machine's Java: no Kafka tarball, no Docker.
# It does what kafka-storage.sh and kafka-server-start.sh do:
#   java -cp 'libs/*' kafka.tools.StorageTool format --standalone -t ID -c FILE
#   java -cp 'libs/*' kafka.Kafka FILE
#
# usage: scripts/kafka.sh COMMAND [ARGS]
#   fetch        download the broker jars and their dependencies with Maven
#                (once: skipped when $CACHE/kafka-$KAFKA_VERSION/libs is complete)
#   up           start the broker and wait until it serves metadata; a no-op
#                when it is already running and healthy
#   down         stop the broker and delete its data (a no-op when stopped)
#   stop         stop the broker but keep its data; `KAFKA_KEEP_DATA=1 up`
#                then starts it again on the same data (broker-outage tests)
#   status       say whether it runs (exit 0) or not (exit 1)
#   logs [-f]    the tail of the broker's log (-f: follow it)
#   classpath    print the jars' classpath glob (fetching them first if needed),
#                e.g. java -cp "$(scripts/kafka.sh classpath)" test/javatools/Partition.java 3 k1
#   bootstrap    print the bootstrap address (127.0.0.1:$KAFKA_PORT)
#   listeners    print every client listener as "PROTOCOL ADDRESS" lines
#                (PLAINTEXT, and SASL_PLAINTEXT, SSL, SASL_SSL when enabled)
#   tls-dir      print the dir with the test CA and certificates (KAFKA_TLS=1):
#                ca.pem, client.crt, client.key (and server.pem)
#   topics ARGS  run kafka-topics (org.apache.kafka.tools.TopicCommand) against
#                this broker, e.g. scripts/kafka.sh topics --describe --topic t
#
# environment:
#   IOTGW_CACHE            cache dir (default: <repo>/.cache, git-ignored)
#   KAFKA_VERSION          Kafka version to fetch and run (default: the pinned one, 4.4.0)
#   KAFKA_INSTANCE         name of the broker instance (default: default); each
#                          instance has its own dir $CACHE/kafka-run/NAME, so a
#                          second broker (or, later, a SASL or 3-node setup)
#                          runs beside the first with another name and ports
#   KAFKA_PORT             PLAINTEXT listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
#   KAFKA_UP_TIMEOUT       seconds `up` waits for the broker (default 90)
#   KAFKA_HEAP_OPTS        JVM heap (default -Xms256m -Xmx512m)
#   KAFKA_JVM_OPTS         extra JVM options
#   KAFKA_KEEP_DATA=1      `up` reuses the instance's existing data dir
#   KAFKA_ADVERTISED_PORT  port the PLAINTEXT listener advertises (default
#                          KAFKA_PORT): point it at a TCP proxy and every
#                          client connection goes through the proxy, which
#                          can then simulate an outage or a hang
#   KAFKA_SASL=1           add a SASL_PLAINTEXT listener on KAFKA_SASL_PORT
#                          (default KAFKA_PORT+2) with PLAIN, SCRAM-SHA-256 and
#                          SCRAM-SHA-512 for user KAFKA_SASL_USER (default
#                          iotgw) / KAFKA_SASL_PASSWORD (default iotgw-secret);
#                          the SCRAM credentials are stored at format time
#                          (StorageTool --add-scram), PLAIN's in the JAAS config
#   KAFKA_TLS=1            add an SSL listener on KAFKA_SSL_PORT (default
#                          KAFKA_PORT+3) that requires a client certificate,
#                          with a CA and certificates made by openssl in
#                          `tls-dir`; with KAFKA_SASL=1 also a SASL_SSL listener
#                          on KAFKA_SASL_SSL_PORT (default KAFKA_PORT+4)
# A SASL or TLS instance needs its own KAFKA_INSTANCE and KAFKA_PORT, e.g.
#   KAFKA_INSTANCE=sasl KAFKA_PORT=19292 KAFKA_SASL=1 KAFKA_TLS=1 scripts/kafka.sh up
set -euo pipefail

# The pinned Kafka version: the newest 4.x that resolved from Maven Central and
# ran end to end here (Java 17). Change it here, nowhere else.
KAFKA_VERSION_DEFAULT=4.4.0

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
CACHE=${IOTGW_CACHE:-$REPO_ROOT/.cache}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac

KAFKA_VERSION=${KAFKA_VERSION:-$KAFKA_VERSION_DEFAULT}
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
LIBS=$KAFKA_HOME/libs
POM=$SCRIPT_DIR/kafka/pom.xml
SERVER_LOG4J=$SCRIPT_DIR/kafka/log4j2.properties
TOOLS_LOG4J=$SCRIPT_DIR/kafka/tools-log4j2.properties

KAFKA_INSTANCE=${KAFKA_INSTANCE:-default}
KAFKA_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_UP_TIMEOUT=${KAFKA_UP_TIMEOUT:-90}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_KEEP_DATA=${KAFKA_KEEP_DATA:-0}
KAFKA_ADVERTISED_PORT=${KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}
KAFKA_SASL=${KAFKA_SASL:-0}
KAFKA_TLS=${KAFKA_TLS:-0}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-$((KAFKA_PORT + 2))}
KAFKA_SSL_PORT=${KAFKA_SSL_PORT:-$((KAFKA_PORT + 3))}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-$((KAFKA_PORT + 4))}
KAFKA_SASL_USER=${KAFKA_SASL_USER:-iotgw}
KAFKA_SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-iotgw-secret}
NODE_ID=1

BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT
RUN_ROOT=$CACHE/kafka-run
RUN_DIR=$RUN_ROOT/$KAFKA_INSTANCE
DATA_DIR=$RUN_DIR/data
LOG_DIR=$RUN_DIR/logs
CONFIG=$RUN_DIR/server.properties
PID_FILE=$RUN_DIR/kafka.pid
TLS_DIR=$RUN_DIR/tls

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	sed -n '/^# usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-2}"
}

have() { command -v "$1" >/dev/null 2>&1; }

# lock FILE: serialise this script's instances on FILE (fd 9) so that
# concurrent `make kafka-up` runs do not race. Children must not inherit fd 9.
lock() {
	mkdir -p "$(dirname "$1")"
	exec 9>"$1"
	flock -w 300 9 || die "timed out waiting for lock $1"
}

# ---------------------------------------------------------------- fetch

fetch_stamp() {
	printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -c1-64)"
}

fetched() {
	[[ -f $KAFKA_HOME/.complete && $(cat "$KAFKA_HOME/.complete") == "$(fetch_stamp)" ]]
}

cmd_fetch() {
	fetched && return 0
	lock "$CACHE/kafka-$KAFKA_VERSION.lock"
	fetched && return 0
	have java || die "java not found (run scripts/deps.sh)"
	have mvn || die "mvn not found (run scripts/deps.sh)"
	local tmp=$KAFKA_HOME/libs.tmp out start=$SECONDS
	rm -rf "$tmp"
	mkdir -p "$KAFKA_HOME"
	log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
	if ! out=$(mvn -B -q -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory="$tmp" </dev/null 2>&1); then
		printf '%s\n' "$out" >&2
		die "maven could not fetch Kafka $KAFKA_VERSION"
	fi
	local jar
	for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" \
		"kafka-tools-$KAFKA_VERSION.jar"; do
		[[ -f $tmp/$jar ]] || die "maven finished but $jar is missing from $tmp"
	done
	compgen -G "$tmp/log4j-core-*.jar" >/dev/null || die "log4j-core is missing from $tmp"
	rm -rf "$LIBS"
	mv "$tmp" "$LIBS"
	fetch_stamp >"$KAFKA_HOME/.complete"
	log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - start))s"
}

cmd_classpath() {
	cmd_fetch
	printf '%s\n' "$LIBS/*"
}

# ---------------------------------------------------------------- process

# running_pid: print the broker's pid if this instance's broker is alive.
# Checks the command line too, so a recycled pid is not mistaken for it.
running_pid() {
	[[ -f $PID_FILE ]] || return 1
	local pid
	pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/cmdline ]]; then
		local cmdline
		cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
		[[ $cmdline == *"kafka.Kafka $CONFIG"* ]] || return 1
	fi
	printf '%s\n' "$pid"
}

port_open() {
	(exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# healthy: the broker answers a metadata request and lists itself.
healthy() {
	if have kcat; then
		local md
		md=$(kcat -b "$BOOTSTRAP" -L -m 3 2>/dev/null) || return 1
		[[ $md == *"broker $NODE_ID at "* ]]
	else
		port_open "$KAFKA_HOST" "$KAFKA_PORT" &&
			grep -q 'Kafka Server started' "$LOG_DIR/server.log" 2>/dev/null
	fi
}

show_log_tail() {
	local f
	for f in "$LOG_DIR/server.log" "$LOG_DIR/stdout.log"; do
		[[ -s $f ]] || continue
		log "---- last lines of $f ----"
		tail -n 40 "$f" >&2
	done
}

# new_cluster_id: a random 16-byte UUID in Kafka's base64url form (22 chars),
# like `StorageTool random-uuid` but without starting a JVM.
new_cluster_id() {
	local id
	while :; do
		id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
		[[ ${#id} -eq 22 && $id != -* ]] && break
	done
	printf '%s\n' "$id"
}

# client_listeners: "NAME PORT" lines for every client listener of this instance.
client_listeners() {
	echo "PLAINTEXT $KAFKA_PORT"
	[[ $KAFKA_SASL == 1 ]] && echo "SASL_PLAINTEXT $KAFKA_SASL_PORT"
	[[ $KAFKA_TLS == 1 ]] && echo "SSL $KAFKA_SSL_PORT"
	[[ $KAFKA_SASL == 1 && $KAFKA_TLS == 1 ]] && echo "SASL_SSL $KAFKA_SASL_SSL_PORT"
	return 0
}

write_config() {
	mkdir -p "$RUN_DIR"
	local listeners="" advertised="" protomap="CONTROLLER:PLAINTEXT" name port
	while read -r name port; do
		listeners+="$name://$KAFKA_HOST:$port,"
		if [[ $name == PLAINTEXT ]]; then
			advertised+="$name://$KAFKA_HOST:$KAFKA_ADVERTISED_PORT,"
		else
			advertised+="$name://$KAFKA_HOST:$port,"
		fi
		protomap+=",$name:$name"
	done < <(client_listeners)
	cat >"$CONFIG" <<EOF
# Generated by scripts/kafka.sh for instance "$KAFKA_INSTANCE"; rewritten on every up.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=${listeners}CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=${advertised%,}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protomap
log.dirs=$DATA_DIR

# Tests: topics appear on first use with 3 partitions (as the gateway's do).
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=1
delete.topic.enable=true

# One node: every internal topic has one replica; fewer partitions start faster.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small and modest: 2 shared cores, heap 512 MiB.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
EOF
	if [[ $KAFKA_SASL == 1 ]]; then
		local l
		echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" >>"$CONFIG"
		for l in sasl_plaintext sasl_ssl; do
			cat >>"$CONFIG" <<EOF
listener.name.$l.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.$l.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$l.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
		done
	fi
	if [[ $KAFKA_TLS == 1 ]]; then
		cat >>"$CONFIG" <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.endpoint.identification.algorithm=
listener.name.ssl.ssl.client.auth=required
EOF
	fi
}

# gen_certs: run in a subshell; writes the PEM files into $TLS_DIR.
gen_certs() {
	cd "$TLS_DIR" &&
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/CN=iotgw test CA" &&
		printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext &&
		printf 'extendedKeyUsage=clientAuth\n' >client.ext &&
		openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" &&
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 30 -extfile server.ext &&
		openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=iotgw-client" &&
		openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.crt -days 30 -extfile client.ext &&
		cat server.key server.crt >server.pem
}

# make_tls: a test CA, a server certificate for 127.0.0.1/localhost and a
# client certificate, all PEM (Kafka reads PEM key stores directly).
make_tls() {
	[[ $KAFKA_TLS == 1 ]] || return 0
	[[ $KAFKA_KEEP_DATA == 1 && -s $TLS_DIR/server.pem ]] && return 0
	have openssl || die "openssl not found (needed for KAFKA_TLS=1)"
	rm -rf "$TLS_DIR"
	mkdir -p "$TLS_DIR"
	local out
	if ! out=$(gen_certs 2>&1); then
		printf '%s\n' "$out" >&2
		die "openssl could not make the test certificates"
	fi
}

format_storage() {
	local id out
	id=$(new_cluster_id)
	local scram=()
	if [[ $KAFKA_SASL == 1 ]]; then
		scram=(--add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]"
			--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]")
	fi
	if ! out=$(java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
		kafka.tools.StorageTool format --standalone -t "$id" -c "$CONFIG" "${scram[@]}" </dev/null 2>&1); then
		printf '%s\n' "$out" >&2
		die "kafka.tools.StorageTool format failed"
	fi
}

start_broker() {
	mkdir -p "$LOG_DIR"
	# keep the previous run's logs for post-mortems, one generation
	rm -rf "$LOG_DIR.prev"
	if compgen -G "$LOG_DIR/*" >/dev/null; then
		mv "$LOG_DIR" "$LOG_DIR.prev"
		mkdir -p "$LOG_DIR"
	fi
	rm -f "$PID_FILE"
	local heap jvm
	read -r -a heap <<<"$KAFKA_HEAP_OPTS"
	read -r -a jvm <<<"$KAFKA_JVM_OPTS"
	# setsid: its own session, so a Ctrl-C in the caller's terminal does not hit
	# it; the inner shell records its pid and execs java (same pid); fd 9 (the
	# lock) is closed so the broker does not hold it.
	# shellcheck disable=SC2016 # $$ and $@ are for the inner shell
	setsid bash -c 'echo $$ >"$0" && exec "$@"' "$PID_FILE" \
		java "${heap[@]}" \
		-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
		-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
		-Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$SERVER_LOG4J" \
		"${jvm[@]}" \
		-cp "$LIBS/*" kafka.Kafka "$CONFIG" \
		</dev/null >>"$LOG_DIR/stdout.log" 2>&1 9>&- &
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s $PID_FILE ]] && return 0
		sleep 0.05
	done
	die "the broker did not start (no pid file)"
}

# wait_healthy SECONDS: wait for the broker to serve metadata; fail early if
# its process exits.
wait_healthy() {
	local deadline=$((SECONDS + $1))
	while ((SECONDS < deadline)); do
		healthy && return 0
		running_pid >/dev/null || return 1
		sleep 0.5
	done
	return 1
}

stop_broker() {
	local pid i
	pid=$(running_pid) || {
		rm -f "$PID_FILE"
		return 0
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "broker (pid $pid) still running after 20s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$PID_FILE"
	log "stopped broker $KAFKA_INSTANCE (pid $pid)"
}

# ---------------------------------------------------------------- commands

cmd_up() {
	cmd_fetch
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	local pid start=$SECONDS
	if pid=$(running_pid); then
		if wait_healthy "$KAFKA_UP_TIMEOUT"; then
			log "already running: $BOOTSTRAP (instance $KAFKA_INSTANCE, pid $pid)"
			return 0
		fi
		show_log_tail
		die "broker $KAFKA_INSTANCE (pid $pid) runs but does not serve $BOOTSTRAP; try: scripts/kafka.sh down"
	fi
	have java || die "java not found (run scripts/deps.sh)"
	local port
	for port in "$KAFKA_CONTROLLER_PORT" $(client_listeners | cut -d' ' -f2); do
		if port_open "$KAFKA_HOST" "$port"; then
			die "$KAFKA_HOST:$port is already in use by another process (not instance $KAFKA_INSTANCE of $RUN_ROOT); see: ss -ltnp 'sport = :$port'"
		fi
	done
	write_config
	make_tls
	if [[ $KAFKA_KEEP_DATA == 1 && -f $DATA_DIR/meta.properties ]]; then
		log "reusing data in $DATA_DIR"
	else
		rm -rf "$DATA_DIR"
		format_storage
	fi
	start_broker
	pid=$(cat "$PID_FILE")
	if ! wait_healthy "$KAFKA_UP_TIMEOUT"; then
		show_log_tail
		if running_pid >/dev/null; then
			stop_broker
			die "broker did not serve $BOOTSTRAP within ${KAFKA_UP_TIMEOUT}s"
		fi
		rm -f "$PID_FILE"
		die "broker exited during start-up (logs above, in $LOG_DIR)"
	fi
	log "up: Kafka $KAFKA_VERSION at $BOOTSTRAP (instance $KAFKA_INSTANCE, pid $pid, $((SECONDS - start))s)"
}

cmd_down() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	stop_broker
	rm -rf "$DATA_DIR" "$TLS_DIR"
}

cmd_stop() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	stop_broker
}

cmd_status() {
	local pid
	if pid=$(running_pid); then
		if healthy; then
			echo "kafka $KAFKA_INSTANCE: running, pid $pid, bootstrap $BOOTSTRAP, Kafka $KAFKA_VERSION, data $DATA_DIR"
		else
			echo "kafka $KAFKA_INSTANCE: running (pid $pid) but not serving $BOOTSTRAP yet"
		fi
		return 0
	fi
	echo "kafka $KAFKA_INSTANCE: not running"
	return 1
}

cmd_logs() {
	local f=$LOG_DIR/server.log
	[[ -f $f ]] || die "no log yet: $f"
	case ${1:-} in
	-f) exec tail -n 50 -F "$f" ;;
	'') tail -n "${KAFKA_LOG_LINES:-100}" "$f" ;;
	*) usage ;;
	esac
}

cmd_topics() {
	cmd_fetch
	exec java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
		org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
fetch | up | down | stop | status | classpath | bootstrap | listeners | tls-dir)
	[[ $# -eq 0 ]] || usage
	;;
esac
case $command in
fetch) cmd_fetch ;;
up) cmd_up ;;
down) cmd_down ;;
stop) cmd_stop ;;
status) cmd_status ;;
logs) cmd_logs "$@" ;;
classpath) cmd_classpath ;;
bootstrap) echo "$BOOTSTRAP" ;;
listeners) client_listeners | sed "s/ / $KAFKA_HOST:/" ;;
tls-dir) echo "$TLS_DIR" ;;
topics) cmd_topics "$@" ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
