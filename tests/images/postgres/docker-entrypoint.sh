#!/usr/bin/env bash
# Entrypoint of postgraas/postgres-test: behaves like the official postgres
# image's entrypoint, which production uses, so tests exercise the same contract.
#
#   POSTGRES_USER             superuser name (default postgres)
#   POSTGRES_PASSWORD         its password; required unless
#                             POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_DB               database created on first start (default: $POSTGRES_USER)
#   POSTGRES_HOST_AUTH_METHOD method of the `host all all all` line (default scram-sha-256)
#   POSTGRES_INITDB_ARGS      extra initdb arguments (split on blanks)
#   POSTGRES_INITDB_WALDIR    optional initdb --waldir
#   PGDATA                    cluster directory (default /var/lib/postgresql/data)
#   *_FILE                    for USER/PASSWORD/DB/INITDB_ARGS: read the value
#                             from that file (docker secrets), as upstream allows
#
# Never enable xtrace here: the password passes through variables.
set -Eeuo pipefail

say() { printf 'docker-entrypoint: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# file_env VAR [DEFAULT]: export VAR from $VAR, else from the file named by
# $VAR_FILE, else DEFAULT.
file_env() {
    local var=$1 file_var=${1}_FILE default=${2:-} value
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        die "both $var and $file_var are set; use only one"
    fi
    value=$default
    if [ -n "${!var:-}" ]; then
        value=${!var}
    elif [ -n "${!file_var:-}" ]; then
        value=$(<"${!file_var}")
    fi
    export "$var=$value"
    unset "$file_var"
}

# `docker run IMAGE -c foo=bar` means options for postgres.
if [ $# -eq 0 ] || [ "${1:0:1}" = - ]; then
    set -- postgres "$@"
fi

# Anything else (bash, psql, ...) runs as given, without initialisation.
if [ "$1" != postgres ]; then
    exec "$@"
fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

if [ "$(id -u)" = 0 ]; then
    # A bind mount or fresh volume may be root-owned; postgres must own its
    # data dir (mode 0700) and be able to create its socket.
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    # postgres refuses to run as root. gosu isn't in Debian's minbase;
    # setpriv (util-linux) drops to the postgres user without a PAM session.
    HOME=$(getent passwd postgres | cut -d: -f6)
    export HOME USER=postgres LOGNAME=postgres
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

file_env POSTGRES_USER postgres
file_env POSTGRES_PASSWORD
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

# Run a psql command as the superuser over the unix socket, failing on the first error.
psql_init() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" "$@"
}

# initdb with the superuser; "$@" may carry --pwfile=<(...), which must be
# expanded on this call so its pipe is still open while initdb reads it.
run_initdb() {
    local extra=()
    read -r -a extra <<<"$POSTGRES_INITDB_ARGS"
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        extra+=(--waldir="$POSTGRES_INITDB_WALDIR")
    fi
    initdb --username="$POSTGRES_USER" "$@" "${extra[@]}"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'EOF'
docker-entrypoint: error: the database is uninitialized and no superuser password is set.
  Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value, or set
  POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password
  (not recommended).
EOF
        exit 1
    fi

    say "initialising cluster in $PGDATA for superuser '$POSTGRES_USER'"
    if [ -n "$POSTGRES_PASSWORD" ]; then
        # printf is a builtin: the password shows up in no process list or log.
        run_initdb --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
    else
        run_initdb
    fi
    # The default in 15 already, but stated so every password set by the
    # init scripts below is stored as SCRAM whatever initdb args said.
    printf "\npassword_encryption = 'scram-sha-256'\n" >>"$PGDATA/postgresql.conf"

    # Temporary server on the unix socket only: nobody can connect over TCP
    # (and see a half-initialised database) until initialisation is done.
    export PGPASSWORD=$POSTGRES_PASSWORD
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start

    if [ "$POSTGRES_DB" != postgres ]; then
        # :'db' and %I quote value and identifier: any database name is safe.
        psql_init --dbname postgres --set db="$POSTGRES_DB" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')\gexec
SQL
    fi

    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                # Executable scripts run in their own process; others are
                # sourced and see this script's variables (upstream behaviour).
                if [ -x "$f" ]; then
                    say "running $f"
                    "$f"
                else
                    say "sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql)
                say "running $f"
                psql_init --dbname "$POSTGRES_DB" -f "$f"
                ;;
            *.sql.gz)
                say "running $f"
                gzip -dc "$f" | psql_init --dbname "$POSTGRES_DB"
                ;;
            *) say "ignoring $f" ;;
        esac
    done
    shopt -u nullglob

    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD

    # Connections from other hosts (other containers, published ports) need a password.
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
        say "warning: POSTGRES_HOST_AUTH_METHOD=trust lets anyone connect without a password"
    fi
    say "initialisation complete; starting postgres"
else
    say "$PGDATA already holds a cluster; skipping initialisation"
fi

# exec: postgres becomes PID 1 and receives docker's STOPSIGNAL (SIGINT) directly.
# listen_addresses='*' comes from the image's postgresql.conf.sample.
exec "$@"
