#!/usr/bin/env bash
# Make this machine able to build and run OCI images without a Docker daemon
# or a container registry.
#
#   1. installs buildah, podman and mmdebstrap from Debian if they are missing
#      (needs root; exits 3 otherwise);
#   2. builds the local base image localhost/arrowscore-test-base:bookworm, a
#      stand-in for python:3.11-slim made only from Debian packages
#      (python3, python3-venv, pip's wheels, useradd, `python` -> python3),
#      with the host's CA bundle and pip index settings baked in so that
#      `pip install` inside a build reaches PyPI the way the host does.
#
# Idempotent: each step is skipped when already done (a no-op run takes well under 1 s).
# Tests build a Dockerfile against the base with
#   buildah bud --isolation chroot --build-arg BASE_IMAGE=localhost/arrowscore-test-base:bookworm ...
#
# Env knobs: BASE_IMAGE_NAME (default localhost/arrowscore-test-base:bookworm),
#            DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR (default: mmdebstrap's),
#            REBUILD_BASE=1 to rebuild the base even when it exists.
set -euo pipefail

BASE_IMAGE_NAME="${BASE_IMAGE_NAME:-localhost/arrowscore-test-base:bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf '[container-base] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

T_ALL=$(now)

# Serialise concurrent runs (parallel test workers): the second waits, then
# finds everything done.
lock="${TMPDIR:-/tmp}/arrowscore-container-base.lock"
if command -v flock >/dev/null 2>&1 && { exec 9>>"$lock"; } 2>/dev/null; then
    chmod a+rw "$lock" 2>/dev/null || true
    flock 9
fi

# ---------------------------------------------------------------- 1. tools
T=$(now)
missing=()
for tool in buildah podman mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing tools: ${missing[*]}; run this script as root (it installs them with apt-get)"
        exit 3
    fi
    # uidmap comes in as a dependency of buildah; fuse-overlayfs is not needed
    # (root uses the kernel's overlay driver).
    log "installing: apt-get install -y --no-install-recommends mmdebstrap podman buildah"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends mmdebstrap podman buildah; then
        log "install failed; retrying after apt-get update"
        apt-get update
        apt-get install -y --no-install-recommends mmdebstrap podman buildah
    fi
    log "step tools: installed ${missing[*]} in $(elapsed "$T") s"
else
    log "step tools: buildah, podman, mmdebstrap already present ($(elapsed "$T") s)"
fi

# buildah and podman share /etc/containers/storage.conf (or their built-in
# defaults when it is absent), so an image imported by podman is visible to
# buildah.  Do not set STORAGE_DRIVER for only one of them.

# ---------------------------------------------------------------- 2. base image
T=$(now)
if [[ "${REBUILD_BASE:-0}" != 1 ]] && podman image exists "$BASE_IMAGE_NAME"; then
    log "step base image: $BASE_IMAGE_NAME already exists ($(elapsed "$T") s)"
    log "done in $(elapsed "$T_ALL") s"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    log "building $BASE_IMAGE_NAME needs root (mmdebstrap root mode)"
    exit 3
fi

work=$(mktemp -d /tmp/arrowscore-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- pip configuration for the image: CA bundle + the host's index settings.
# `pip config list` merges env (PIP_*), /etc/pip.conf, ~/.config/pip/pip.conf,
# ~/.pip/pip.conf; only index-related keys are carried over (find-links,
# timeouts etc. refer to the host).
pipconf="$work/pip.conf"
{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
} >"$pipconf"
host_pip=""
for cand in /usr/bin/python3 python3; do
    if "$cand" -m pip --version >/dev/null 2>&1; then host_pip="$cand -m pip"; break; fi
done
if [[ -n "$host_pip" ]]; then
    # lines look like  global.index-url='https://...'  or  :env:.index-url='...'
    $host_pip config list 2>/dev/null | while IFS= read -r line; do
        key=${line%%=*}; key=${key##*.}
        val=${line#*=}; val=${val#\'}; val=${val%\'}
        case "$key" in
            index-url|extra-index-url|trusted-host|proxy|no-index)
                printf '%s = %s\n' "$key" "$val" ;;
        esac
    done | sort -u >>"$pipconf"
else
    # no pip on the host: read the config files directly
    for f in /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [[ -r $f ]] && grep -E '^\s*(index-url|extra-index-url|trusted-host|proxy)\s*=' "$f" >>"$pipconf" || true
    done
    for v in INDEX_URL EXTRA_INDEX_URL TRUSTED_HOST PROXY; do
        n="PIP_$v"
        if [[ -n "${!n:-}" ]]; then printf '%s = %s\n' "$(tr 'A-Z_' 'a-z-' <<<"$v")" "${!n}" >>"$pipconf"; fi
    done
fi
log "pip.conf for the image:"; sed 's/^/    /' "$pipconf" >&2

# --- extra CAs: the certificates of the host bundle that Debian's
# ca-certificates does not ship go to /usr/local/share/ca-certificates, so the
# image's bundle is a superset of the host's and survives update-ca-certificates.
cp "$HOST_CA_BUNDLE" "$work/host-bundle.crt"
HOST_PY=/usr/bin/python3; [[ -x $HOST_PY ]] || HOST_PY=$(command -v python3)
cat >"$work/certs.py" <<'PY'
import pathlib, re, sys
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
def certs(path):
    return PEM.findall(pathlib.Path(path).read_text())
def norm(c):
    return re.sub(r"\s+", "", c)
mode, host = sys.argv[1], sys.argv[2]
if mode == "extra":  # write host certs missing from the rootfs bundle
    root = pathlib.Path(sys.argv[3])
    have = {norm(c) for c in certs(root / "etc/ssl/certs/ca-certificates.crt")}
    extra = [c for c in certs(host) if norm(c) not in have]
    out = root / "usr/local/share/ca-certificates/arrowscore-host"
    out.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(extra):
        (out / f"host-extra-{i}.crt").write_text(c + "\n")
    print(f"[container-base] {len(extra)} host CA certificate(s) not shipped by Debian added", file=sys.stderr)
else:  # check: every host cert is in the given bundle
    missing = {norm(c) for c in certs(host)} - {norm(c) for c in certs(sys.argv[3])}
    if missing:
        sys.exit(f"[container-base] {len(missing)} host CA certificate(s) missing from the image bundle")
PY

T_DEB=$(now)
mirror_args=()
if [[ -n "$DEBIAN_MIRROR" ]]; then mirror_args=("$DEBIAN_MIRROR"); fi
log "mmdebstrap --variant=minbase $DEBIAN_SUITE (python3, python3-venv, ca-certificates, passwd)"
# shellcheck disable=SC2016  # hooks are expanded by mmdebstrap's shell ($1 = rootfs)
mmdebstrap --variant=minbase --mode=root --quiet \
    --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    --customize-hook="'$HOST_PY' '$work/certs.py' extra '$work/host-bundle.crt' \"\$1\"" \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    --customize-hook="cp '$pipconf' \"\$1/etc/pip.conf\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log' \
    "$DEBIAN_SUITE" "$work/rootfs.tar" "${mirror_args[@]}"
log "step mmdebstrap: $(elapsed "$T_DEB") s, tarball $(du -m "$work/rootfs.tar" | cut -f1) MB"

# sanity check: every certificate of the host bundle is in the image bundle
tar -xOf "$work/rootfs.tar" ./etc/ssl/certs/ca-certificates.crt >"$work/image-bundle.crt"
"$HOST_PY" "$work/certs.py" check "$work/host-bundle.crt" "$work/image-bundle.crt"

T_IMP=$(now)
podman image rm -f "$BASE_IMAGE_NAME" >/dev/null 2>&1 || true
# Same defaults as python:3.11-slim (LANG, CMD); PIP_CERT as a belt-and-braces
# for tools that ignore /etc/pip.conf.
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "arrowscore test base ($DEBIAN_SUITE minbase + python3)" \
    "$work/rootfs.tar" "$BASE_IMAGE_NAME" >/dev/null
log "step podman import: $(elapsed "$T_IMP") s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_IMAGE_NAME" | sed 's/^/[container-base]   /' >&2
buildah images --format '{{.Name}}:{{.Tag}}' | grep -qx "$BASE_IMAGE_NAME" \
    || { log "buildah does not see $BASE_IMAGE_NAME (storage mismatch?)"; exit 1; }
log "step base image: built $BASE_IMAGE_NAME in $(elapsed "$T") s"
log "done in $(elapsed "$T_ALL") s"
