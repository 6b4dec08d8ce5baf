#!/usr/bin/env bash
# Build the local images the tests need. There is no registry on these
# machines, so nothing can be pulled: the base comes from debootstrap.
#
#   postgraas/bookworm-base:latest  Debian bookworm + postgresql-15 + python3
#                                   (also the base of the server's Dockerfile)
#   postgraas/postgres-test:15      honours the official postgres image contract
#   postgraas/server-base:local     the base plus this machine's CA store, to build
#                                   the server's Dockerfile here
#
# Usage: build-test-images.sh [--force] [--refresh-rootfs]
#   --force           rebuild the images even if they exist (reuses the
#                     cached rootfs tarball, so no second debootstrap)
#   --refresh-rootfs  also discard the cached rootfs and debootstrap again
#
# Env: POSTGRAAS_CACHE_DIR (default ~/.cache/postgraas) holds the rootfs tarball.
set -euo pipefail

BASE_IMAGE=postgraas/bookworm-base:latest
TEST_IMAGE=postgraas/postgres-test:15
SERVER_BASE_IMAGE=postgraas/server-base:local
SUITE=bookworm
INCLUDE=postgresql-15,python3,python3-venv,ca-certificates

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_dir=${POSTGRAAS_CACHE_DIR:-${HOME:-/root}/.cache/postgraas}
# The package list is part of the name so changing it never reuses a stale rootfs.
rootfs_tar="$cache_dir/rootfs-$SUITE-minbase-$(printf '%s' "$INCLUDE" | sha256sum | cut -c1-12).tar"

force=0
refresh_rootfs=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --refresh-rootfs) force=1 refresh_rootfs=1 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build-test-images: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

say() { printf 'build-test-images: %s\n' "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

work_dir=""
cleanup() {
    [ -n "$work_dir" ] && [ -d "$work_dir" ] || return 0
    # debootstrap mounts proc/sys (and in containers binds /dev nodes) inside
    # the target; if it died half-way those mounts are still there and rm -rf
    # must not descend into them. Unmount deepest first.
    local mnt
    awk -v d="$work_dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    rm -rf --one-file-system "$work_dir"
}
trap cleanup EXIT

make_rootfs_tar() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    mkdir -p "$cache_dir"
    # Work next to the cache so the final mv is an atomic rename.
    work_dir=$(mktemp -d "$cache_dir/build.XXXXXX")
    local root="$work_dir/rootfs" start=$SECONDS
    say "debootstrap $SUITE (minbase + $INCLUDE) into $root"
    # No mirror argument: debootstrap's default Debian mirror is the one reachable here.
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" \
        >"$work_dir/debootstrap.log" 2>&1; then
        say "debootstrap failed; tail of its log:"
        tail -n 30 "$work_dir/debootstrap.log" >&2
        tail -n 30 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
        exit 1
    fi
    say "debootstrap took $((SECONDS - start))s"

    # postgresql-15's postinst creates a cluster; containers run their own
    # initdb, so an image-wide cluster would only confuse (and take space).
    rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"
    # Package caches are useless in an image; containers can apt-get update.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages \
        "$root/var/cache/apt/"*.bin

    # --numeric-owner: the rootfs's users (postgres etc.) have their own ids,
    # unrelated to this host's /etc/passwd.
    tar -C "$root" --numeric-owner -cf "$work_dir/rootfs.tar" .
    mv -f "$work_dir/rootfs.tar" "$rootfs_tar"
    cleanup
    work_dir=""
    say "cached rootfs at $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
}

# Remember what the tags point at now, to drop superseded images afterwards
# (each stale pair would otherwise keep ~0.5 GB of dangling layers).
old_ids=()
for image in "$SERVER_BASE_IMAGE" "$TEST_IMAGE" "$BASE_IMAGE"; do
    if id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null); then
        old_ids+=("$id")
    fi
done

built_base=0
if [ "$force" -eq 1 ] || ! image_exists "$BASE_IMAGE"; then
    if [ "$refresh_rootfs" -eq 1 ] || [ ! -s "$rootfs_tar" ]; then
        make_rootfs_tar
    else
        say "reusing cached rootfs $rootfs_tar"
    fi
    say "importing $BASE_IMAGE"
    # LANG: minbase has no locales package; C.UTF-8 is built into glibc and
    # makes initdb pick UTF8, like the official image's en_US.utf8 does.
    docker import \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' \
        -m "debootstrap --variant=minbase --include=$INCLUDE $SUITE" \
        - "$BASE_IMAGE" <"$rootfs_tar" >/dev/null
    built_base=1
fi

# A rebuilt base means the test image on top of it is stale.
if [ "$force" -eq 1 ] || [ "$built_base" -eq 1 ] || ! image_exists "$TEST_IMAGE"; then
    say "building $TEST_IMAGE"
    # Build output to stderr: stdout carries only the image names.
    docker build \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$TEST_IMAGE" \
        "$repo_root/tests/images/postgres" >&2
fi

# The server's Dockerfile installs from PyPI during the build. This machine's TLS to PyPI is
# signed by a CA that only the host's trust store has, so the base used for the server-image
# test carries that store (and tells pip to use it, as the host's pip config does).
if [ "$force" -eq 1 ] || [ "$built_base" -eq 1 ] || ! image_exists "$SERVER_BASE_IMAGE"; then
    say "building $SERVER_BASE_IMAGE"
    context=$(mktemp -d)
    cp /etc/ssl/certs/ca-certificates.crt "$context/"
    cat >"$context/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
    docker build -t "$SERVER_BASE_IMAGE" "$context" >&2
    rm -rf "$context"
fi

# Test image first: its removal also frees its untagged parent layers, then
# the old base is childless. Still-tagged or in-use images are left alone.
for id in "${old_ids[@]}"; do
    if [ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ]; then
        docker image rm "$id" >/dev/null 2>&1 || true
    fi
done

printf '%s\n' "$BASE_IMAGE" "$TEST_IMAGE" "$SERVER_BASE_IMAGE"
