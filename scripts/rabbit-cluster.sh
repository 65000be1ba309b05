#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the system broker (which it never
# touches): nodes pdq-c1..3@localhost on AMQP ports 5681..5683, with their own distribution
# ports, data and log directories, config files and Erlang cookie under one directory.
#
#   scripts/rabbit-cluster.sh start          start the three nodes and cluster them
#   scripts/rabbit-cluster.sh stop           stop them and remove the directory
#   scripts/rabbit-cluster.sh node-stop N    stop node N's RabbitMQ application (connections close)
#   scripts/rabbit-cluster.sh node-kill N    kill node N's Erlang VM outright (SIGKILL)
#   scripts/rabbit-cluster.sh node-start N   bring node N back (after node-stop or node-kill)
#   scripts/rabbit-cluster.sh urls           the AMQP URLs, comma-separated (for PDQ_AMQP_URL)
#   scripts/rabbit-cluster.sh ctl N ARGS...  rabbitmqctl ARGS against node N
#
# PDQ_RABBIT_CLUSTER_DIR (default /tmp/pdq-rabbit-cluster) and PDQ_RABBIT_CLUSTER_PORT (the first
# AMQP port, default 5681) choose where. Exit status 0 only when the command did what it says.
set -euo pipefail

DIR=${PDQ_RABBIT_CLUSTER_DIR:-/tmp/pdq-rabbit-cluster}
BASE_PORT=${PDQ_RABBIT_CLUSTER_PORT:-5681}
NODES=3
SBIN=/usr/lib/rabbitmq/bin
[ -x "$SBIN/rabbitmq-server" ] || SBIN=$(dirname "$(command -v rabbitmq-server)")

node() { echo "pdq-c$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
# The distribution port is RabbitMQ's usual +20000 offset; the CLI tools get their own range
# so rabbitmqctl calls for these nodes cannot collide with the system node's tools.
dist_port() { echo $((BASE_PORT + 20000 + $1 - 1)); }

# Every rabbitmq command for node N runs with this environment: our HOME (our cookie), our env
# file (so /etc/rabbitmq/rabbitmq-env.conf's NODENAME does not apply), our config.
node_env() {
    local n=$1 d="$DIR/n$1"
    export HOME="$DIR/home"
    export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    export RABBITMQ_NODENAME; RABBITMQ_NODENAME=$(node "$n")
    export RABBITMQ_NODE_PORT; RABBITMQ_NODE_PORT=$(amqp_port "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_DIST_PORT; RABBITMQ_DIST_PORT=$(dist_port "$n")
    export RABBITMQ_CTL_DIST_PORT_MIN=$((BASE_PORT + 30000)) RABBITMQ_CTL_DIST_PORT_MAX=$((BASE_PORT + 30100))
    export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$d/mnesia"
    export RABBITMQ_LOG_BASE="$d/log"
    export RABBITMQ_PID_FILE="$d/pid"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { # ctl N ARGS...: rabbitmqctl against node N, with a deadline
    local n=$1; shift
    (node_env "$n"; timeout 120 "$SBIN/rabbitmqctl" -q -n "$(node "$n")" "$@")
}

prepare() {
    local n=$1 d="$DIR/n$1"
    mkdir -p "$d/mnesia" "$d/log"
    : >"$d/rabbitmq-env.conf"
    echo "[]." >"$d/enabled_plugins"
    echo "[]." >"$d/advanced.config"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
# Short enough that the survivors notice a killed node within seconds, not the default minute.
net_ticktime = 10
EOF
}

launch() { # launch N: start node N's VM in the background; its output goes to its log dir
    local n=$1 d="$DIR/n$1"
    (
        node_env "$n"
        cd "$d"
        setsid "$SBIN/rabbitmq-server" >"$d/log/console.log" 2>&1 </dev/null &
        echo $! >"$d/server.pid"
    )
    # await_startup fails at once while the VM has not registered its name yet: retry until the
    # VM we started is gone or a minute has passed.
    local deadline=$((SECONDS + 60))
    until ctl "$n" await_startup --timeout 60 >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$d/server.pid")" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "node $(node "$n") did not start; last lines of its console log:" >&2
            tail -20 "$d/log/console.log" >&2
            return 1
        fi
        sleep 1
    done
}

start() {
    if [ -d "$DIR" ]; then stop_all; fi
    mkdir -p "$DIR/home"
    # One cookie of our own: the three nodes (and our rabbitmqctl) share it, and no command of
    # ours can reach the system node, which has another.
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/home/.erlang.cookie"
    chmod 400 "$DIR/home/.erlang.cookie"
    for n in $(seq 1 $NODES); do prepare "$n"; done
    for n in $(seq 1 $NODES); do launch "$n"; done
    for n in $(seq 2 $NODES); do
        # join_cluster prints errors about tracking tables of nodes still joining: noise, kept
        # in the node's log directory unless a step fails.
        local log="$DIR/n$n/log/join.log"
        { ctl "$n" stop_app && ctl "$n" join_cluster "$(node 1)" && ctl "$n" start_app; } >"$log" 2>&1 || {
            echo "node $(node "$n") did not join $(node 1):" >&2
            cat "$log" >&2
            return 1
        }
    done
    ctl 1 await_startup
    local running
    running=$(ctl 1 eval 'length(rabbit_nodes:all_running()).')
    if [ "$running" != "$NODES" ]; then
        echo "the cluster has $running running nodes, not $NODES" >&2
        return 1
    fi
    echo "RabbitMQ cluster of $NODES nodes up: $(urls)"
}

stop_all() {
    for n in $(seq 1 $NODES); do
        local d="$DIR/n$n"
        [ -d "$d" ] || continue
        ctl "$n" stop >/dev/null 2>&1 || true
        # A node that did not stop (or was never up) is killed by the pid we started, never by name.
        for f in "$d/server.pid" "$d/pid"; do
            [ -s "$f" ] || continue
            local pid; pid=$(cat "$f")
            kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
        done
    done
    rm -rf "$DIR"
}

urls() {
    local out=""
    for n in $(seq 1 $NODES); do out+="${out:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"; done
    echo "$out"
}

check_n() {
    [[ "${1:-}" =~ ^[1-3]$ ]] || { echo "node number must be 1..$NODES, got '${1:-}'" >&2; exit 2; }
}

case "${1:-}" in
    start) start ;;
    stop) stop_all ;;
    node-stop) check_n "${2:-}"; ctl "$2" stop_app ;;
    node-kill)
        check_n "${2:-}"
        kill -9 "$(cat "$DIR/n$2/pid")"
        ;;
    node-start)
        check_n "${2:-}"
        # After node-stop the VM is still up and only the application restarts; after node-kill
        # the VM starts again and rejoins the cluster from its data directory.
        if ctl "$2" eval "ok." >/dev/null 2>&1; then ctl "$2" start_app; else launch "$2"; fi
        ctl "$2" await_startup
        ;;
    urls) urls ;;
    ctl) check_n "${2:-}"; n=$2; shift 2; ctl "$n" "$@" ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
