#!/usr/bin/env bash
# Install the jetfleet edge agent on a Jetson running JetPack 5 or 6 (L4T R35/R36).
#
#   sudo ./install.sh                       # from PyPI: jetfleet[agent]
#   sudo JETFLEET_PACKAGE=./jetfleet-0.1.0-py3-none-any.whl ./install.sh
#   sudo JETFLEET_AGENT_CONFIG=./agent.yaml ./install.sh   # install a ready config
#
# Idempotent: re-running upgrades the package and the unit, and keeps the user,
# the state in /var/lib/jetfleet and an existing /etc/jetfleet/agent.yaml.
# The venv uses --system-site-packages so JetPack's TensorRT (apt: python3-libnvinfer)
# is importable. Environment: JETFLEET_PACKAGE, JETFLEET_PYTHON (default
# /usr/bin/python3), JETFLEET_AGENT_CONFIG, JETFLEET_FORCE=1 (any L4T release).
set -euo pipefail

PREFIX=/opt/jetfleet
VENV="$PREFIX/venv"
STATE_DIR=/var/lib/jetfleet
CONF_DIR=/etc/jetfleet
CONFIG="$CONF_DIR/agent.yaml"
UNIT_NAME=jetfleet-agent.service
UNIT_PATH="/etc/systemd/system/$UNIT_NAME"
SERVICE_USER=jetfleet
PACKAGE="${JETFLEET_PACKAGE:-jetfleet[agent]}"
PYTHON="${JETFLEET_PYTHON:-/usr/bin/python3}"
AGENT_CONFIG="${JETFLEET_AGENT_CONFIG:-}"
FORCE="${JETFLEET_FORCE:-0}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'jetfleet-install: %s\n' "$*"; }
die() { printf 'jetfleet-install: error: %s\n' "$*" >&2; exit 1; }

check_host() {
    [[ "${EUID:-$(id -u)}" -eq 0 ]] || die "run as root (sudo $0)"
    [[ -f /etc/nv_tegra_release ]] || die "/etc/nv_tegra_release not found: this is not a Jetson (L4T)"
    local release
    release="$(sed -n 's/^# R\([0-9]*\) (release).*/\1/p' /etc/nv_tegra_release | head -n1)"
    case "$release" in
        35|36) log "L4T R$release (JetPack $([[ $release == 35 ]] && echo 5 || echo 6))" ;;
        *)
            [[ "$FORCE" == 1 ]] || die "L4T R${release:-?} is not JetPack 5/6 (set JETFLEET_FORCE=1 to try anyway)"
            log "L4T R${release:-?}: unsupported, continuing because JETFLEET_FORCE=1"
            ;;
    esac
    command -v systemctl >/dev/null || die "systemctl not found: systemd is required"
    [[ -x "$PYTHON" ]] || die "$PYTHON not found (set JETFLEET_PYTHON)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create venvs: apt-get install python3-venv"
}

create_user() {
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        log "creating system user $SERVICE_USER"
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    # GPU device nodes (/dev/nvhost-*, /dev/nvmap) belong to video (and render on newer releases).
    local group
    for group in video render; do
        if getent group "$group" >/dev/null; then
            usermod -a -G "$group" "$SERVICE_USER"
        fi
    done
}

create_dirs() {
    install -d -m 0755 "$PREFIX"
    install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"
    install -d -o root -g "$SERVICE_USER" -m 0750 "$CONF_DIR"
}

install_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV (with system site-packages for TensorRT)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    log "installing $PACKAGE"
    "$VENV/bin/python" -m pip install --upgrade --quiet "$PACKAGE"
    [[ -x "$VENV/bin/jetfleet" ]] || die "$VENV/bin/jetfleet missing after pip install"
}

install_config() {
    if [[ -f "$CONFIG" ]]; then
        log "keeping existing $CONFIG"
    elif [[ -n "$AGENT_CONFIG" ]]; then
        [[ -f "$AGENT_CONFIG" ]] || die "JETFLEET_AGENT_CONFIG=$AGENT_CONFIG does not exist"
        install -o root -g "$SERVICE_USER" -m 0640 "$AGENT_CONFIG" "$CONFIG"
        log "installed $CONFIG"
    else
        return 1
    fi
}

unit_source() {
    if [[ -f "$SCRIPT_DIR/$UNIT_NAME" ]]; then
        echo "$SCRIPT_DIR/$UNIT_NAME"
    else
        "$VENV/bin/python" -c \
            'import pathlib, jetson; print(pathlib.Path(jetson.__file__).with_name("jetfleet-agent.service"))'
    fi
}

install_unit() {
    local source
    source="$(unit_source)"
    [[ -f "$source" ]] || die "unit file not found at $source"
    install -m 0644 "$source" "$UNIT_PATH"
    systemctl daemon-reload
    systemctl enable "$UNIT_NAME" >/dev/null
    log "installed and enabled $UNIT_PATH"
}

main() {
    check_host
    create_user
    create_dirs
    install_venv
    install_unit
    if install_config; then
        systemctl restart "$UNIT_NAME"
        log "started $UNIT_NAME (journalctl -u $UNIT_NAME -f)"
    else
        log "no $CONFIG yet: write it (or rerun with JETFLEET_AGENT_CONFIG=...),"
        log "then: systemctl start $UNIT_NAME"
    fi
}

main "$@"
