#!/usr/bin/env bash
# scripts/mochi-diff.sh: how iotgw's copy of mochi-mqtt (third_party/mochi-mqtt)
# differs from the release it was copied from (go.mod's version, read from
# the module cache; go mod download fetches it if missing).
#
#   scripts/mochi-diff.sh           the whole diff, release -> copy
#   scripts/mochi-diff.sh pending   the diff from the release with the patches in
#                                   third_party/mochi-mqtt/patches applied, in
#                                   order, to the copy: what no patch has yet
#                                   (redirect it into the next patch file)
#   scripts/mochi-diff.sh check     exit non-zero unless the patches make the copy
#
# Only the files the copy kept are compared: it leaves out the release's
# storage hooks, examples, cmd, config and translated READMEs (PATCHES.md),
# and has a go.mod and go.sum of its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-diff}
mod=github.com/mochi-mqtt/server/v2
fork=third_party/mochi-mqtt
version=$(go list -m -f '{{.Version}}' "$mod")
release=$(go mod download -json "$mod@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $release ]] || { echo "mochi-diff: no module directory for $mod@$version" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# a: the release's copies of the files the copy kept; b: the copy.
mkdir -p "$tmp/a" "$tmp/b"
(cd "$fork" && find . -type f ! -name go.mod ! -name go.sum ! -name PATCHES.md ! -path './patches/*' | sed 's|^\./||') |
	while read -r f; do
		mkdir -p "$tmp/b/$(dirname "$f")"
		cp "$fork/$f" "$tmp/b/$f"
		if [[ -f $release/$f ]]; then
			mkdir -p "$tmp/a/$(dirname "$f")"
			cp "$release/$f" "$tmp/a/$f"
		fi
	done
chmod -R u+w "$tmp/a"

# diff -ruN a b without timestamps: git apply -p1 (or patch -p1) takes it in
# the module's directory.
udiff() { (cd "$tmp" && diff -ruN a b | sed -E 's/^((---|\+\+\+) [^\t]+)\t.*/\1/') || true; }

case $mode in
diff)
	udiff
	;;
pending | check)
	for p in "$fork"/patches/*.patch; do
		(cd "$tmp/a" && git apply -p1 --whitespace=nowarn "$OLDPWD/$p") ||
			{ echo "mochi-diff: $p does not apply to $mod $version with the patches before it" >&2; exit 1; }
	done
	out=$(udiff)
	if [[ $mode == pending ]]; then
		[[ -z $out ]] || printf '%s\n' "$out"
	elif [[ -n $out ]]; then
		echo "mochi-diff: $fork is not $mod $version with its patches; scripts/mochi-diff.sh pending shows the rest" >&2
		exit 1
	else
		echo "mochi-diff: $fork is $mod $version with its $(ls "$fork"/patches/*.patch | wc -l) patches"
	fi
	;;
*)
	echo "usage: scripts/mochi-diff.sh [diff|pending|check]" >&2
	exit 2
	;;
esac
