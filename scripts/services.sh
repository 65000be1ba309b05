#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432, user
# postgres, no password) are listening. Idempotent: a service that already answers is left alone.
# Otherwise, on Debian/Ubuntu, installs what is missing with apt-get and starts it.
#
#   PDQ_STATE_DIR  where a private PostgreSQL cluster lives when the distribution's cluster tools
#                  (pg_ctlcluster) are unavailable; default ~/.local/share/pdq (/var/lib/pdq as root)
set -euo pipefail

readonly HOST=127.0.0.1
readonly AMQP_PORT=5672
readonly PG_PORT=5432
readonly RABBIT_WAIT_S=60
readonly PG_WAIT_S=30

log() { echo "services: $*"; }
die() {
    echo "services: error: $*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for '$*' and sudo is not installed"
    fi
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

pg_up() {
    if command -v pg_isready >/dev/null; then
        # 0: accepting, 1: starting up (it answers; wait for it below), 2/3: nothing there.
        local rc=0
        pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2 || rc=$?
        [[ $rc -le 1 ]]
    else
        port_open "$PG_PORT"
    fi
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    local i
    for ((i = 0; i < seconds; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 1
    done
    die "$what did not come up within ${seconds}s"
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null ||
        die "cannot install $* here: no apt-get (install it yourself, or point PDQ_AMQP_URL / DATABASE_URL at running services)"
    if [[ $APT_UPDATED -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

ensure_rabbitmq() {
    if port_open "$AMQP_PORT"; then
        log "rabbitmq: already listening on $HOST:$AMQP_PORT, left alone"
        return
    fi
    local installed=""
    if ! command -v rabbitmq-server >/dev/null && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
        apt_install rabbitmq-server
        installed="installed, "
    fi
    # Debian's rabbitmq-server wrapper drops to the rabbitmq user when run as root. A package
    # post-install may already have started the node; a second start then just fails, harmlessly.
    if ! port_open "$AMQP_PORT"; then
        as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    # The AMQP listener opens once the node has booted, so the port is the readiness check
    # (`rabbitmq-diagnostics ping` answers earlier, and needs the node's Erlang cookie).
    wait_for "RabbitMQ (see /var/log/rabbitmq/)" "$RABBIT_WAIT_S" port_open "$AMQP_PORT"
    log "rabbitmq: ${installed}started, listening on $HOST:$AMQP_PORT (guest/guest)"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# Newest PostgreSQL version with Debian cluster config, or nothing.
debian_pg_version() {
    [[ -d /etc/postgresql ]] || return 0
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1
}

# Directory with initdb and pg_ctl, or nothing.
pg_bindir() {
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $d && -x $d/pg_ctl && -x $d/initdb ]]; then
        echo "$d"
    fi
}

pg_trusts_postgres() {
    command -v psql >/dev/null || return 0 # cannot check; the connection error will say
    psql -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

# Sets TCP loopback entries (127.0.0.1/32 and ::1/128) of a pg_hba.conf to trust.
trust_loopback() {
    local hba=$1
    as_root cp -p "$hba" "$hba.pdq-backup"
    as_root sed -E -i \
        -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+)[^[:space:]]+#\1trust#' \
        -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+)[^[:space:]]+#\1trust#' \
        "$hba"
    if ! as_root grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        # No such line to rewrite: prepend ours (pg_hba.conf is first match wins).
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
}

start_debian_cluster() {
    local ver=$1 how=$2
    if [[ ! -d /etc/postgresql/$ver/main ]]; then
        as_root pg_createcluster "$ver" main >/dev/null
        how+="created cluster $ver/main, "
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_for "PostgreSQL $ver/main (see /var/log/postgresql/)" "$PG_WAIT_S" pg_up
    wait_for "PostgreSQL $ver/main to accept connections" "$PG_WAIT_S" pg_accepting
    if ! pg_trusts_postgres; then
        trust_loopback "/etc/postgresql/$ver/main/pg_hba.conf"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
        sleep 1
        pg_trusts_postgres || die "user postgres still cannot connect to $HOST:$PG_PORT without a password; see /etc/postgresql/$ver/main/pg_hba.conf"
        how+="set 127.0.0.1/::1 to trust in pg_hba.conf, "
    fi
    log "postgresql: ${how}started cluster $ver/main (pg_ctlcluster), listening on $HOST:$PG_PORT"
}

pg_accepting() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2
    else
        port_open "$PG_PORT"
    fi
}

# A private cluster owned by an unprivileged user (PostgreSQL refuses to run as root).
start_private_cluster() {
    local bindir=$1 how=$2 user state dir
    user=$(id -un)
    state=${PDQ_STATE_DIR:-$HOME/.local/share/pdq}
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
        user=postgres
        # The postgres user must be able to reach the directory; root's home usually is closed.
        state=${PDQ_STATE_DIR:-/var/lib/pdq}
    fi
    dir=$state/pg
    run_pg() {
        if [[ $user == "$(id -un)" ]]; then
            "$@"
        else
            runuser -u "$user" -- "$@"
        fi
    }
    mkdir -p "$dir"
    [[ $user == "$(id -un)" ]] || chown "$user" "$state" "$dir"
    chmod 700 "$dir"
    if [[ ! -f $dir/PG_VERSION ]]; then
        run_pg "$bindir/initdb" -D "$dir" -A trust -U postgres -E UTF8 >/dev/null
        how+="initdb $dir, "
    fi
    run_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t "$PG_WAIT_S" \
        -o "-p $PG_PORT -k $dir -c listen_addresses=localhost" start >/dev/null
    wait_for "PostgreSQL in $dir (see $dir/server.log)" "$PG_WAIT_S" pg_accepting
    log "postgresql: ${how}started private cluster $dir (pg_ctl, user $user), listening on $HOST:$PG_PORT"
}

ensure_postgresql() {
    if pg_up; then
        wait_for "PostgreSQL on $HOST:$PG_PORT to accept connections" "$PG_WAIT_S" pg_accepting
        if pg_trusts_postgres; then
            log "postgresql: already listening on $HOST:$PG_PORT, left alone"
        else
            log "postgresql: already listening on $HOST:$PG_PORT, left alone; WARNING: user postgres cannot connect without a password (set DATABASE_URL with credentials)"
        fi
        return
    fi
    local how="" ver bindir
    ver=$(debian_pg_version)
    bindir=$(pg_bindir)
    if [[ -z $ver && -z $bindir ]]; then
        apt_install postgresql
        how="installed, "
        ver=$(debian_pg_version)
        bindir=$(pg_bindir)
    fi
    if [[ -n $ver ]] && command -v pg_ctlcluster >/dev/null; then
        start_debian_cluster "$ver" "$how"
    elif [[ -n $bindir ]]; then
        start_private_cluster "$bindir" "$how"
    else
        die "PostgreSQL is installed but neither pg_ctlcluster nor initdb/pg_ctl was found"
    fi
}

ensure_rabbitmq
ensure_postgresql
