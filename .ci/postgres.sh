#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1 for the tests that need one, and exports
# VAULTFS_TEST_POSTGRES_URL. Source it: `. .ci/postgres.sh`; the server stops on exit.
# Installs Debian's postgresql package when no server binaries are present.

vaultfs_pg_port="${VAULTFS_PG_PORT:-55432}"

vaultfs_pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

if [ -z "$(vaultfs_pg_bin)" ] || [ ! -x "$(vaultfs_pg_bin)/pg_ctl" ]; then
  echo "== installing PostgreSQL (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
vaultfs_pg_dir="$(mktemp -d /tmp/vaultfs-pg.XXXXXX)"
vaultfs_pg_runas=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root.
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$vaultfs_pg_dir"
  vaultfs_pg_runas=(runuser -u postgres --)
fi
"${vaultfs_pg_runas[@]}" "$(vaultfs_pg_bin)/initdb" -D "$vaultfs_pg_dir/data" -U vaultfs \
  --auth=trust -E UTF8 >/dev/null
"${vaultfs_pg_runas[@]}" "$(vaultfs_pg_bin)/pg_ctl" -D "$vaultfs_pg_dir/data" -w -l "$vaultfs_pg_dir/log" \
  -o "-c listen_addresses=127.0.0.1 -p $vaultfs_pg_port -k $vaultfs_pg_dir -c max_connections=300" \
  start >/dev/null
export VAULTFS_TEST_POSTGRES_URL="postgres://vaultfs@127.0.0.1:$vaultfs_pg_port/postgres"
echo "== PostgreSQL on 127.0.0.1:$vaultfs_pg_port (data in $vaultfs_pg_dir)"

vaultfs_pg_stop() {
  "${vaultfs_pg_runas[@]}" "$(vaultfs_pg_bin)/pg_ctl" -D "$vaultfs_pg_dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$vaultfs_pg_dir"
}
trap vaultfs_pg_stop EXIT
