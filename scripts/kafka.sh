#!/usr/bin/env bash
# scripts/kafka.sh: the Apache Kafka broker the tests run against.
#
# A single KRaft node (combined broker + controller) run straight from the
# jars on Maven Central with the machine's Java: no Kafka tarball, no Docker.
# It does what kafka-storage.sh and kafka-server-start.sh do:
#   java -cp 'libs/*' kafka.tools.StorageTool format --standalone -t ID -c FILE
#   java -cp 'libs/*' kafka.Kafka FILE
# With KAFKA_NODES=3 it runs a three-node cluster instead (broker-failure
# tests): every node formatted with the same cluster id and a static quorum
# (controller.quorum.voters, so no --standalone), then started together.
#
# usage: scripts/kafka.sh COMMAND [ARGS]
#   fetch        download the broker jars and their dependencies with Maven
#                (once: skipped when $CACHE/kafka-$KAFKA_VERSION/libs is complete)
#   up           start the broker and wait until it serves metadata; a no-op
#                when it is already running and healthy (a cluster: every
#                node, and the first lists them all)
#   down         stop the broker and delete its data (a no-op when stopped)
#   stop         stop the broker but keep its data; `KAFKA_KEEP_DATA=1 up`
#                then starts it again on the same data (broker-outage tests)
#   status       say whether it runs (exit 0) or not (exit 1); a cluster: one
#                line per node, exit 0 only when every node runs
#   logs [-f] [N]
#                the tail of the broker's log (-f: follow it; N: node N's, default 1)
#   kill-node N  SIGKILL node N (1..KAFKA_NODES), keep its data: a broker crash
#   stop-node N  stop node N with SIGTERM (controlled shutdown), keep its data
#   start-node N start node N again on its data and wait until it serves
#                metadata (after kill-node or stop-node)
#   classpath    print the jars' classpath glob (fetching them first if needed),
#                e.g. java -cp "$(scripts/kafka.sh classpath)" test/javatools/Partition.java 3 k1
#   bootstrap    print the bootstrap address (127.0.0.1:$KAFKA_PORT); a
#                cluster's is every node's, comma-separated
#   listeners    print every client listener as "PROTOCOL ADDRESS" lines
#                (PLAINTEXT, and SASL_PLAINTEXT, SSL, SASL_SSL when enabled;
#                a cluster: "PLAINTEXT ADDR1,ADDR2,...")
#   tls-dir      print the dir with the test CA and certificates (KAFKA_TLS=1):
#                ca.pem, client.crt, client.key (and server.pem)
#   topics ARGS  run kafka-topics (org.apache.kafka.tools.TopicCommand) against
#                this broker (cluster), e.g. scripts/kafka.sh topics --describe --topic t
#   quorum [ARGS]
#                describe the KRaft quorum (org.apache.kafka.tools.MetadataQuorumCommand
#                describe, default --status): "LeaderId:" is the active controller
#
# environment:
#   IOTGW_CACHE            cache dir (default: <repo>/.cache, git-ignored)
#   KAFKA_VERSION          Kafka version to fetch and run (default: the pinned one, 4.4.0)
#   KAFKA_INSTANCE         name of the broker instance (default: default); each
#                          instance has its own dir $CACHE/kafka-run/NAME, so a
#                          second broker (or a SASL or 3-node setup) runs
#                          beside the first with another name and ports
#   KAFKA_PORT             PLAINTEXT listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
#   KAFKA_UP_TIMEOUT       seconds `up` waits for the broker (default 90)
#   KAFKA_HEAP_OPTS        JVM heap, per node (default -Xms256m -Xmx512m; a
#                          cluster: -Xms128m -Xmx384m)
#   KAFKA_JVM_OPTS         extra JVM options
#   KAFKA_KEEP_DATA=1      `up` reuses the instance's existing data dir
#   KAFKA_DATA_ROOT        keep the nodes' data (the Kafka log) in
#                          KAFKA_DATA_ROOT/NAME[/nodeI]/data instead of the
#                          run dir, e.g. on a tmpfs: `make bench` does, so that
#                          a broker that in a deployment runs on other hosts
#                          does not share the gateway's disk (its segment
#                          flushes and writeback would stall the gateway's
#                          fsyncs); `down` removes it as usual
#   KAFKA_NODES            KRaft nodes (default 1). N>1 runs a cluster of N
#                          combined broker + controller nodes, node.id 1..N,
#                          each with its own dir $CACHE/kafka-run/NAME/nodeI
#                          (data, logs, kafka.pid, server.properties); node I
#                          listens on KAFKA_PORT+10*(I-1) (PLAINTEXT) and
#                          KAFKA_CONTROLLER_PORT+10*(I-1) (controller). Topics,
#                          internal ones included, get min(N,3) replicas and
#                          min.insync.replicas one less (3 nodes: 3 and 2).
#                          SASL, TLS and KAFKA_ADVERTISED_PORT are single-node only.
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
# and so does a cluster, e.g. (nodes on 19492, 19502, 19512)
#   KAFKA_INSTANCE=cluster KAFKA_PORT=19492 KAFKA_NODES=3 scripts/kafka.sh up
#   KAFKA_INSTANCE=cluster KAFKA_PORT=19492 KAFKA_NODES=3 scripts/kafka.sh kill-node 2
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
KAFKA_NODES=${KAFKA_NODES:-1}
if [[ $KAFKA_NODES == 1 ]]; then
	KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
else
	# several JVMs share the 2 cores and the tests' memory
	KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}
fi
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_KEEP_DATA=${KAFKA_KEEP_DATA:-0}
KAFKA_DATA_ROOT=${KAFKA_DATA_ROOT:-}
KAFKA_ADVERTISED_PORT=${KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}
KAFKA_SASL=${KAFKA_SASL:-0}
KAFKA_TLS=${KAFKA_TLS:-0}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-$((KAFKA_PORT + 2))}
KAFKA_SSL_PORT=${KAFKA_SSL_PORT:-$((KAFKA_PORT + 3))}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-$((KAFKA_PORT + 4))}
KAFKA_SASL_USER=${KAFKA_SASL_USER:-iotgw}
KAFKA_SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-iotgw-secret}
# A cluster's node I has the ports of node 1 plus NODE_PORT_STEP*(I-1).
NODE_PORT_STEP=10

RUN_ROOT=$CACHE/kafka-run
RUN_DIR=$RUN_ROOT/$KAFKA_INSTANCE
# An instance started with KAFKA_DATA_ROOT keeps it until down, so that
# status, stop and down find its data without the variable.
if [[ -z $KAFKA_DATA_ROOT && -s $RUN_DIR/data-root ]]; then
	KAFKA_DATA_ROOT=$(<"$RUN_DIR/data-root")
fi
TLS_DIR=$RUN_DIR/tls
# The per-node variables (NODE_ID, NODE_PORT, NODE_CONTROLLER_PORT,
# NODE_ADDR, NODE_LABEL, ADVERTISED_PORT, DATA_DIR, LOG_DIR, CONFIG,
# PID_FILE) are set by select_node; BOOTSTRAP, REPLICAS and MIN_ISR by
# check_env, before any command runs.

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	sed -n '/^# usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-2}"
}

have() { command -v "$1" >/dev/null 2>&1; }

# check_env: validate the cluster settings and derive what depends on them.
check_env() {
	[[ $KAFKA_NODES =~ ^[1-9]$ ]] || die "KAFKA_NODES=$KAFKA_NODES: want a number of nodes from 1 to 9"
	if ((KAFKA_NODES > 1)); then
		[[ $KAFKA_SASL == 1 || $KAFKA_TLS == 1 ]] && die "KAFKA_SASL and KAFKA_TLS are for single-node instances (KAFKA_NODES=1)"
		[[ $KAFKA_ADVERTISED_PORT == "$KAFKA_PORT" ]] || die "KAFKA_ADVERTISED_PORT is for single-node instances (KAFKA_NODES=1)"
	fi
	REPLICAS=$((KAFKA_NODES < 3 ? KAFKA_NODES : 3))
	MIN_ISR=$((REPLICAS > 1 ? REPLICAS - 1 : 1))
	local i addrs=()
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		addrs+=("$NODE_ADDR")
	done
	BOOTSTRAP=$(
		IFS=,
		echo "${addrs[*]}"
	)
	select_node 1
}

# select_node I: point the per-node variables at node I. A single-node
# instance keeps its files directly in its run dir, as it always has; a
# cluster's node I has the subdir nodeI.
select_node() {
	NODE_ID=$1
	NODE_PORT=$((KAFKA_PORT + NODE_PORT_STEP * (NODE_ID - 1)))
	NODE_CONTROLLER_PORT=$((KAFKA_CONTROLLER_PORT + NODE_PORT_STEP * (NODE_ID - 1)))
	NODE_ADDR=$KAFKA_HOST:$NODE_PORT
	if ((KAFKA_NODES == 1)); then
		NODE_DIR=$RUN_DIR
		NODE_LABEL=$KAFKA_INSTANCE
		ADVERTISED_PORT=$KAFKA_ADVERTISED_PORT
	else
		NODE_DIR=$RUN_DIR/node$NODE_ID
		NODE_LABEL="$KAFKA_INSTANCE node $NODE_ID"
		ADVERTISED_PORT=$NODE_PORT
	fi
	DATA_DIR=$NODE_DIR/data
	if [[ -n $KAFKA_DATA_ROOT ]]; then
		DATA_DIR=$KAFKA_DATA_ROOT/${NODE_DIR#"$RUN_ROOT"/}/data
	fi
	LOG_DIR=$NODE_DIR/logs
	CONFIG=$NODE_DIR/server.properties
	PID_FILE=$NODE_DIR/kafka.pid
}

# node_arg N: select node N of a command's argument, or fail with usage.
node_arg() {
	if ! [[ ${1:-} =~ ^[1-9]$ ]] || (($1 > KAFKA_NODES)); then
		die "want a node number from 1 to $KAFKA_NODES (got '${1:-}')"
	fi
	select_node "$1"
}

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

# healthy: the selected node answers a metadata request and lists itself.
healthy() {
	if have kcat; then
		local md
		md=$(kcat -b "$NODE_ADDR" -L -m 3 2>/dev/null) || return 1
		[[ $md == *"broker $NODE_ID at "* ]]
	else
		port_open "$KAFKA_HOST" "$NODE_PORT" &&
			grep -q 'Kafka Server started' "$LOG_DIR/server.log" 2>/dev/null
	fi
}

# cluster_healthy: every node is healthy and node 1's metadata lists every
# broker (each has registered with the controller quorum).
cluster_healthy() {
	local i md
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		healthy || return 1
	done
	select_node 1
	have kcat || return 0
	md=$(kcat -b "$NODE_ADDR" -L -m 3 2>/dev/null) || return 1
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		[[ $md == *"broker $i at "* ]] || return 1
	done
}

show_log_tail() {
	local f
	for f in "$LOG_DIR/server.log" "$LOG_DIR/stdout.log"; do
		[[ -s $f ]] || continue
		log "---- last lines of $f ----"
		tail -n 40 "$f" >&2
	done
}

show_cluster_log_tails() {
	local i
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		show_log_tail
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
	echo "PLAINTEXT $NODE_PORT"
	[[ $KAFKA_SASL == 1 ]] && echo "SASL_PLAINTEXT $KAFKA_SASL_PORT"
	[[ $KAFKA_TLS == 1 ]] && echo "SSL $KAFKA_SSL_PORT"
	[[ $KAFKA_SASL == 1 && $KAFKA_TLS == 1 ]] && echo "SASL_SSL $KAFKA_SASL_SSL_PORT"
	return 0
}

# quorum_voters: the static KRaft quorum of a cluster, "1@host:port,2@...".
quorum_voters() {
	local i voters=()
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		voters+=("$i@$KAFKA_HOST:$((KAFKA_CONTROLLER_PORT + NODE_PORT_STEP * (i - 1)))")
	done
	(
		IFS=,
		echo "${voters[*]}"
	)
}

# write_config: the selected node's server.properties.
write_config() {
	mkdir -p "$NODE_DIR"
	local listeners="" advertised="" protomap="CONTROLLER:PLAINTEXT" name port
	while read -r name port; do
		listeners+="$name://$KAFKA_HOST:$port,"
		if [[ $name == PLAINTEXT ]]; then
			advertised+="$name://$KAFKA_HOST:$ADVERTISED_PORT,"
		else
			advertised+="$name://$KAFKA_HOST:$port,"
		fi
		protomap+=",$name:$name"
	done < <(client_listeners)
	local quorum="controller.quorum.bootstrap.servers=$KAFKA_HOST:$NODE_CONTROLLER_PORT"
	local replicas="One node: every internal topic has one replica"
	local heap="heap 512 MiB"
	if ((KAFKA_NODES > 1)); then
		quorum="controller.quorum.voters=$(quorum_voters)"
		replicas="$KAFKA_NODES nodes: every topic, internal ones too, has $REPLICAS replicas"
		heap="$KAFKA_NODES nodes of heap 384 MiB"
	fi
	cat >"$CONFIG" <<EOF
# Generated by scripts/kafka.sh for instance "$KAFKA_INSTANCE"; rewritten on every up.
process.roles=broker,controller
node.id=$NODE_ID
$quorum
listeners=${listeners}CONTROLLER://$KAFKA_HOST:$NODE_CONTROLLER_PORT
advertised.listeners=${advertised%,}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protomap
log.dirs=$DATA_DIR

# Tests: topics appear on first use with 3 partitions (as the gateway's do).
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=$REPLICAS
delete.topic.enable=true

# $replicas; fewer partitions start faster.
offsets.topic.replication.factor=$REPLICAS
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$REPLICAS
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=$REPLICAS
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0

# Small and modest: 2 shared cores, $heap.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
EOF
	if ((KAFKA_NODES > 1)); then
		cat >>"$CONFIG" <<EOF

# A write with acks=all needs $MIN_ISR in-sync replicas, so one node may be
# down without refusing writes or losing acknowledged ones.
min.insync.replicas=$MIN_ISR
EOF
	fi
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

# format_storage [ID]: prepare the selected node's data dir for cluster ID
# (default: a new one). A single node is its own quorum (--standalone); a
# cluster's quorum is the static controller.quorum.voters of its config.
format_storage() {
	local id=${1:-} out
	[[ -n $id ]] || id=$(new_cluster_id)
	local quorum=(--standalone)
	((KAFKA_NODES == 1)) || quorum=()
	local scram=()
	if [[ $KAFKA_SASL == 1 ]]; then
		scram=(--add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]"
			--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]")
	fi
	if ! out=$(java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
		kafka.tools.StorageTool format "${quorum[@]}" -t "$id" -c "$CONFIG" "${scram[@]}" </dev/null 2>&1); then
		printf '%s\n' "$out" >&2
		die "kafka.tools.StorageTool format failed for $NODE_LABEL"
	fi
}

# format_cluster: format every node with one new cluster id, in parallel
# (each format is a JVM start).
format_cluster() {
	local id i pids=() failed=0
	id=$(new_cluster_id)
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		rm -rf "$DATA_DIR"
		format_storage "$id" 9>&- &
		pids+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || failed=1
	done
	((failed == 0)) || die "could not format the cluster's nodes (errors above)"
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
	log "stopped broker $NODE_LABEL (pid $pid)"
}

# stop_cluster: stop every node at once: one by one, the last nodes would
# each wait for a controller quorum that is already gone.
stop_cluster() {
	local i pids=()
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		(
			select_node "$i"
			stop_broker
		) 9>&- &
		pids+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || true
	done
}

# wait_cluster SECONDS: wait until cluster_healthy; fail early if a node's
# process exits.
wait_cluster() {
	local deadline=$((SECONDS + $1)) i
	while ((SECONDS < deadline)); do
		cluster_healthy && return 0
		for ((i = 1; i <= KAFKA_NODES; i++)); do
			select_node "$i"
			running_pid >/dev/null || return 1
		done
		sleep 0.5
	done
	return 1
}

# ---------------------------------------------------------------- commands

cmd_up() {
	cmd_fetch
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	if ((KAFKA_NODES > 1)); then
		cluster_up
		return
	fi
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
	remember_data_root
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

cluster_up() {
	local i pid start=$SECONDS running=() stopped=() pids=()
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		if running_pid >/dev/null; then running+=("$i"); else stopped+=("$i"); fi
	done
	if ((${#stopped[@]} == 0)); then
		if wait_cluster "$KAFKA_UP_TIMEOUT"; then
			log "already running: $BOOTSTRAP (instance $KAFKA_INSTANCE, $KAFKA_NODES nodes)"
			return 0
		fi
		show_cluster_log_tails
		die "cluster $KAFKA_INSTANCE runs but does not serve $BOOTSTRAP; try: scripts/kafka.sh down"
	fi
	if ((${#running[@]} > 0)); then
		die "cluster $KAFKA_INSTANCE runs only in part (nodes ${running[*]}; stopped: ${stopped[*]}); start the others with scripts/kafka.sh start-node N, or run down first"
	fi
	have java || die "java not found (run scripts/deps.sh)"
	local port reuse=$KAFKA_KEEP_DATA
	remember_data_root
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		for port in "$NODE_CONTROLLER_PORT" "$NODE_PORT"; do
			if port_open "$KAFKA_HOST" "$port"; then
				die "$KAFKA_HOST:$port is already in use by another process (not node $i of instance $KAFKA_INSTANCE of $RUN_ROOT); see: ss -ltnp 'sport = :$port'"
			fi
		done
		write_config
		[[ -f $DATA_DIR/meta.properties ]] || reuse=0
	done
	if [[ $reuse == 1 ]]; then
		log "reusing data in $RUN_DIR/node*/data"
	else
		format_cluster
	fi
	# All at once: a node serves nothing until a majority of the quorum runs.
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		start_broker
		pids+=("$(cat "$PID_FILE")")
	done
	if ! wait_cluster "$KAFKA_UP_TIMEOUT"; then
		show_cluster_log_tails
		stop_cluster
		die "cluster $KAFKA_INSTANCE did not serve $BOOTSTRAP within ${KAFKA_UP_TIMEOUT}s, or a node exited (logs above, in $RUN_DIR/node*/logs)"
	fi
	log "up: Kafka $KAFKA_VERSION, $KAFKA_NODES nodes at $BOOTSTRAP (instance $KAFKA_INSTANCE, pids ${pids[*]}, $((SECONDS - start))s)"
}

# remember_data_root records KAFKA_DATA_ROOT (or its absence) for the
# instance's later commands.
remember_data_root() {
	mkdir -p "$RUN_DIR"
	if [[ -n $KAFKA_DATA_ROOT ]]; then
		echo "$KAFKA_DATA_ROOT" >"$RUN_DIR/data-root"
	else
		rm -f "$RUN_DIR/data-root"
	fi
}

cmd_down() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	if ((KAFKA_NODES > 1)); then
		stop_cluster
		local i
		for ((i = 1; i <= KAFKA_NODES; i++)); do
			select_node "$i"
			rm -rf "$DATA_DIR"
		done
	else
		stop_broker
		rm -rf "$DATA_DIR" "$TLS_DIR"
	fi
	if [[ -n $KAFKA_DATA_ROOT ]]; then
		# the dirs above the data, once empty
		rmdir "$KAFKA_DATA_ROOT/$KAFKA_INSTANCE"/node* "$KAFKA_DATA_ROOT/$KAFKA_INSTANCE" "$KAFKA_DATA_ROOT" 2>/dev/null || true
	fi
	rm -f "$RUN_DIR/data-root"
}

cmd_stop() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	if ((KAFKA_NODES > 1)); then
		stop_cluster
		return 0
	fi
	stop_broker
}

# cmd_kill_node N: a broker crash: SIGKILL, no controlled shutdown, data kept.
cmd_kill_node() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	node_arg "$@"
	local pid i
	if ! pid=$(running_pid); then
		log "$NODE_LABEL is not running"
		return 0
	fi
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && die "$NODE_LABEL (pid $pid) still exists 5s after SIGKILL"
	rm -f "$PID_FILE"
	log "killed broker $NODE_LABEL (pid $pid, $NODE_ADDR) with SIGKILL; its data is kept"
}

cmd_stop_node() {
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	node_arg "$@"
	stop_broker
}

# cmd_start_node N: start node N again on its data and wait until it serves
# metadata and lists itself (it has rejoined the cluster).
cmd_start_node() {
	cmd_fetch
	lock "$RUN_ROOT/$KAFKA_INSTANCE.lock"
	node_arg "$@"
	local pid port start=$SECONDS
	if pid=$(running_pid); then
		wait_healthy "$KAFKA_UP_TIMEOUT" || die "$NODE_LABEL (pid $pid) runs but does not serve $NODE_ADDR"
		log "already running: $NODE_LABEL at $NODE_ADDR (pid $pid)"
		return 0
	fi
	[[ -f $DATA_DIR/meta.properties ]] || die "$NODE_LABEL has no data in $DATA_DIR: start the instance with up first"
	have java || die "java not found (run scripts/deps.sh)"
	for port in "$NODE_CONTROLLER_PORT" $(client_listeners | cut -d' ' -f2); do
		if port_open "$KAFKA_HOST" "$port"; then
			die "$KAFKA_HOST:$port is already in use by another process; see: ss -ltnp 'sport = :$port'"
		fi
	done
	write_config
	start_broker
	pid=$(cat "$PID_FILE")
	if ! wait_healthy "$KAFKA_UP_TIMEOUT"; then
		show_log_tail
		running_pid >/dev/null && stop_broker
		rm -f "$PID_FILE"
		die "$NODE_LABEL did not serve $NODE_ADDR within ${KAFKA_UP_TIMEOUT}s, or exited (logs above, in $LOG_DIR)"
	fi
	log "started $NODE_LABEL at $NODE_ADDR on its data (pid $pid, $((SECONDS - start))s)"
}

cluster_status() {
	local i pid up=0
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		select_node "$i"
		if pid=$(running_pid); then
			up=$((up + 1))
			if healthy; then
				echo "kafka $NODE_LABEL: running, pid $pid, $NODE_ADDR, data $DATA_DIR"
			else
				echo "kafka $NODE_LABEL: running (pid $pid) but not serving $NODE_ADDR yet"
			fi
		else
			echo "kafka $NODE_LABEL: not running"
		fi
	done
	echo "kafka $KAFKA_INSTANCE: $up of $KAFKA_NODES nodes running, bootstrap $BOOTSTRAP, Kafka $KAFKA_VERSION"
	((up == KAFKA_NODES))
}

cmd_status() {
	if ((KAFKA_NODES > 1)); then
		cluster_status
		return
	fi
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
	local follow=0 arg
	for arg in "$@"; do
		case $arg in
		-f) follow=1 ;;
		[1-9]) node_arg "$arg" ;;
		*) usage ;;
		esac
	done
	local f=$LOG_DIR/server.log
	[[ -f $f ]] || die "no log yet: $f"
	if ((follow)); then
		exec tail -n 50 -F "$f"
	fi
	tail -n "${KAFKA_LOG_LINES:-100}" "$f"
}

cmd_topics() {
	cmd_fetch
	exec java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
		org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

cmd_quorum() {
	cmd_fetch
	[[ $# -gt 0 ]] || set -- --status
	exec java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
		org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$BOOTSTRAP" describe "$@"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
fetch | up | down | stop | status | classpath | bootstrap | listeners | tls-dir)
	[[ $# -eq 0 ]] || usage
	;;
kill-node | stop-node | start-node)
	[[ $# -eq 1 ]] || usage
	;;
esac
check_env
case $command in
fetch) cmd_fetch ;;
up) cmd_up ;;
down) cmd_down ;;
stop) cmd_stop ;;
status) cmd_status ;;
logs) cmd_logs "$@" ;;
kill-node) cmd_kill_node "$@" ;;
stop-node) cmd_stop_node "$@" ;;
start-node) cmd_start_node "$@" ;;
classpath) cmd_classpath ;;
bootstrap) echo "$BOOTSTRAP" ;;
listeners)
	if ((KAFKA_NODES > 1)); then
		echo "PLAINTEXT $BOOTSTRAP"
	else
		client_listeners | sed "s/ / $KAFKA_HOST:/"
	fi
	;;
tls-dir) echo "$TLS_DIR" ;;
topics) cmd_topics "$@" ;;
quorum) cmd_quorum "$@" ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
