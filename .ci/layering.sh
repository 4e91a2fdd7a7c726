#!/usr/bin/env bash
# Layering check (issue 23): no module of src/ imports a module above it.
#
# Layers, top to bottom. A file may import its own layer and any layer below it:
#   6 main.rs, cli/            the binary and the client commands
#   5 client.rs                the HTTP client
#   4 server.rs, conn.rs, tls.rs  the accept loop (TLS included)
#   3 handlers/, error.rs      the HTTP edge
#   2 api.rs                   wire types shared by the client and the server
#   1 app.rs                   AppState and opening it
#   0 services/                everything below the HTTP edge
#  -1 metrics.rs, config.rs, retention.rs, paths.rs, blocking.rs, faults.rs, watchdog.rs,
#     zero_copy.rs (splice bodies: used by the edge and the connection, uses only blocking.rs), lib.rs   leaves
# Besides: error.rs maps service errors only (no crate::handlers/server/app/client there).
# Every `crate::<module>` path in a file counts (imports and inline paths alike); comments
# are skipped. Prints each upward edge; exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

layer_of_module() {
    case "$1" in
        main|cli) echo 6 ;;
        client) echo 5 ;;
        server|conn|tls) echo 4 ;;
        handlers|error) echo 3 ;;
        api) echo 2 ;;
        app) echo 1 ;;
        services) echo 0 ;;
        metrics|config|retention|paths|blocking|faults|watchdog|zero_copy) echo -1 ;;
        *) echo "?" ;;
    esac
}

layer_of_file() {
    local rel=${1#src/}
    local top=${rel%%/*}
    top=${top%.rs}
    if [ "$top" = lib ]; then echo -1; else layer_of_module "$top"; fi
}

status=0
edges=0
while IFS= read -r file; do
    from=$(layer_of_file "$file")
    if [ "$from" = "?" ]; then
        echo "layering: $file: not in a layer; add it to .ci/layering.sh"
        status=1
        continue
    fi
    # Modules named after `crate::` outside comments.
    for module in $(sed -e 's://.*$::' "$file" | grep -o 'crate::[a-z_]*' | sed 's/crate:://' | sort -u); do
        to=$(layer_of_module "$module")
        if [ "$to" = "?" ]; then
            echo "layering: $file: crate::$module is not in a layer; add it to .ci/layering.sh"
            status=1
        elif [ "$to" -gt "$from" ]; then
            echo "layering: upward import: $file (layer $from) -> crate::$module (layer $to)"
            edges=$((edges + 1))
            status=1
        fi
    done
done < <(find src -name '*.rs' | sort)

# `crate::{a::X, b::Y}` would hide its modules from the check above.
if grep -rn --include='*.rs' 'crate::{' src | grep -v '^\s*//'; then
    echo "layering: spell out grouped crate:: imports (one module per path) so they are checked"
    status=1
fi

# error.rs maps service errors only.
if sed -e 's://.*$::' src/error.rs | grep -q 'crate::\(handlers\|server\|app\|client\|cli\)'; then
    echo "layering: src/error.rs maps something other than service errors"
    status=1
fi

if [ "$status" -eq 0 ]; then
    echo "layering: ok (no upward imports)"
else
    echo "layering: $edges upward import(s)"
fi
exit "$status"
