#!/usr/bin/env bash
# scripts/deps.sh: install what the tests need and is missing, then fetch the
# Kafka jars (scripts/kafka.sh fetch).
#
# usage: scripts/deps.sh [-v]
#   -v   say what is already there, too
#
# Debian packages: redis-server (+ redis-tools), mosquitto-clients, mosquitto
# (the broker, for benchmarks), kcat, libcoap3-bin (coap-client; linked as
# /usr/local/bin/coap-client when only coap-client-{openssl,gnutls,notls}
# exist), and default-jdk-headless / maven when java / mvn are absent.
# Fast and silent when everything is present: apt-get runs only when a command
# is missing. Non-interactive (CI=true, no stdin); needs root or sudo.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

verbose=0
case ${1:-} in
'') ;;
-v) verbose=1 ;;
*)
	sed -n '/^# usage:/,/^# Debian/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
[[ $# -le 1 ]] || { echo "usage: scripts/deps.sh [-v]" >&2; exit 2; }

log() { printf 'deps.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# have CMD: on PATH, or in an sbin dir that a non-root PATH may lack.
have() {
	command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /usr/local/sbin/$1 ]]
}

coap_variants=(coap-client-openssl coap-client-gnutls coap-client-notls)
have_coap_client_variant() {
	local c
	for c in "${coap_variants[@]}"; do
		have "$c" && return 0
	done
	return 1
}

# command -> Debian package that provides it
missing=()
need() {
	if have "$1"; then
		if ((verbose)); then log "ok: $1"; fi
		return 0
	fi
	missing+=("$2")
}
need redis-server redis-server
need redis-cli redis-tools
need mosquitto_pub mosquitto-clients
need mosquitto_sub mosquitto-clients
need mosquitto mosquitto
need kcat kcat
if have coap-client || have_coap_client_variant; then
	if ((verbose)); then log "ok: coap-client"; fi
else
	missing+=(libcoap3-bin)
fi
need java default-jdk-headless
need javac default-jdk-headless
need mvn maven
need flock util-linux
need setsid util-linux

if ((${#missing[@]})); then
	mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
	sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install ${pkgs[*]} by hand"
		sudo=(sudo -n)
	fi
	have apt-get || die "no apt-get: install ${pkgs[*]} by hand"
	log "installing ${pkgs[*]}"
	# Packages such as redis-server and mosquitto start their system service
	# on install when they can; the tests run their own instances on their own
	# ports, so keep the services down for the install (what Docker images do).
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		trap '"${sudo[@]}" rm -f "$policy"' EXIT
	fi
	apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
	out=$(mktemp)
	if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >"$out" 2>&1 ||
		! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" \
			--no-install-recommends "${pkgs[@]}" </dev/null >>"$out" 2>&1; then
		tail -n 30 "$out" >&2
		rm -f "$out"
		die "apt-get failed"
	fi
	rm -f "$out"
fi

# Debian's libcoap3-bin ships coap-client-{openssl,gnutls,notls} only; the
# tests call `coap-client`. Prefer a DTLS-capable build.
if ! have coap-client; then
	target=
	for c in "${coap_variants[@]}"; do
		if have "$c"; then
			target=$(command -v "$c")
			break
		fi
	done
	[[ -n $target ]] || die "libcoap3-bin is installed but no coap-client-* binary was found"
	if ((EUID != 0)); then
		sudo -n ln -sf "$target" /usr/local/bin/coap-client
	else
		ln -sf "$target" /usr/local/bin/coap-client
	fi
	log "linked /usr/local/bin/coap-client -> $target"
fi

# still missing after the install? say so now rather than in a test
for c in redis-server redis-cli mosquitto_pub mosquitto_sub mosquitto kcat coap-client java mvn; do
	have "$c" || die "$c is still missing after installing packages"
done

"$SCRIPT_DIR/kafka.sh" fetch
if ((verbose)); then log "all present"; fi
exit 0
