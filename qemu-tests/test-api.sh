#!/usr/bin/env bash
# qemu-tests/test-api.sh: the admin REST API against a running `boot-server serve`
# (temporary state directory, in a network namespace of its own with only loopback,
# admin listener over TLS with its self-signed certificate):
#   tls      : curl trusts the certificate with --cacert and refuses it without;
#              the CLI works with --ca-file and with --fingerprint, and refuses a wrong pin.
#   tokens   : a read-only token gets 403 on every state-changing operation of the
#              OpenAPI document (the list comes from the document, not by hand), each
#              refusal audited with the token's name and never the secret; an operator
#              token scales its environment and gets 403 on another; a revoked token 401.
#   schemathesis: the OpenAPI document against the server (pinned version in a venv),
#              capped examples per operation, the long-poll /api/events and the agent
#              routes (not in the document) left out: no 5xx, documented status codes,
#              content types and response bodies that match their schemas.
# Usage: qemu-tests/test-api.sh   (ST_MAX_EXAMPLES=N to change the cap, default 25)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=lib/summary.sh
source "$here/lib/summary.sh"
t0=$SECONDS
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
ST_VERSION=4.32.5
venv="${API_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/boot-server-tests/schemathesis-$ST_VERSION}"

finish() { echo "test-api: $((SECONDS - t0)) s"; t_summary; exit; }
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; finish; }
for tool in curl python3; do
    command -v "$tool" >/dev/null || { t_skip "test-api.sh" "needs $tool"; finish; }
done

# schemathesis is installed (from PyPI) before the test leaves the network.
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $ST_VERSION into $venv"
    rm -rf "$venv"
    pip_log="$(mktemp /tmp/test-api-pip.XXXXXX)"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "schemathesis==$ST_VERSION"; } >"$pip_log" 2>&1; then
        tail -n 5 "$pip_log"; rm -f "$pip_log"
        t_skip "schemathesis" "could not install schemathesis $ST_VERSION (python3-venv, PyPI)"
        finish
    fi
    rm -f "$pip_log"
fi
# The server and every request run in a network namespace of their own with only
# loopback up: the power commands that generated nodes cause (BMC addresses the
# generator makes up) can reach nothing outside it. The namespace goes with the process.
if [ -z "${TEST_API_IN_NETNS:-}" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
        t_skip "test-api.sh" "needs root and unshare (util-linux) for its own network namespace"; finish
    fi
    exec env TEST_API_IN_NETNS=1 unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

dir="$(mktemp -d /tmp/test-api.XXXXXX)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ "${KEEP_LOGS:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/images" "$dir/loaders"
cat > "$dir/server.toml" <<TOML
state_dir = "$dir/state"
images_dir = "$dir/images"
loaders_dir = "$dir/loaders"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[tftp]
enabled = false
[ra]
enabled = false
[nbd]
listen = "127.0.0.1:0"
[power]
# Generated nodes carry generated BMC addresses: give up on them quickly.
timeout_ms = 1000
TOML
"$server" --config "$dir/server.toml" serve > "$dir/server.log" 2>&1 &
pid=$!
addr=""
for _ in $(seq 100); do
    addr="$(sed -n 's/.*admin-https=\([0-9.:]*\).*/\1/p' "$dir/server.log" | head -n 1)"
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    t_fail "server starts with a TLS admin listener"; tail -n 20 "$dir/server.log"; finish
fi
t_ok "server starts with a TLS admin listener ($addr)"
url="https://$addr"
ca="$dir/state/tls/admin-cert.pem"
token="$(cat "$dir/state/admin.token")"
fp="$(sed -n 's/^admin TLS certificate SHA-256 fingerprint: \([0-9a-f]*\)$/\1/p' "$dir/server.log")"
admin_curl() { curl -sS --cacert "$ca" -H "Authorization: Bearer $token" "$@"; }
cli() { BOOT_SERVER_TOKEN="$token" "$server" --server "$url" "$@"; }

# --- tls
t_check "tls: the fingerprint printed at start is the certificate's" \
    test "$fp" = "$(openssl x509 -in "$ca" -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1)"
t_check "tls: curl --cacert gets the spec" \
    test "$(curl -sS --cacert "$ca" -o /dev/null -w '%{http_code}' "$url/api/openapi.json")" = 200
curl -sS -o /dev/null "$url/api/openapi.json" 2>/dev/null
t_check "tls: curl without the certificate refuses the server (exit 60)" test $? = 60
t_check "tls: plain HTTP to the TLS listener gets no API answer" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/nodes")" != 200
t_check "tls: CLI with --ca-file lists nodes" cli --ca-file "$ca" node list
t_check "tls: CLI with --fingerprint lists nodes" cli --fingerprint "$fp" node list
wrong="$(tr '0-9a-f' '1-9a-f0' <<<"$fp")"
out="$(cli --fingerprint "$wrong" node list 2>&1)"
t_check "tls: CLI with a wrong --fingerprint refuses the server" \
    grep -q "not the pinned" <<<"$out"

# --- tokens: fixtures (an image, two environments), tokens through the CLI
admin_curl -o /dev/null "$url/api/images" -d '{"manifest": "name = \"local\"\nkind = \"localdisk\"\n"}'
for e in web db; do
    admin_curl -o /dev/null "$url/api/environments" -d "{\"name\": \"$e\", \"image\": \"local\"}"
done
ro="$(cli --ca-file "$ca" token create ro-test --role read-only)"
op="$(cli --ca-file "$ca" token create op-web --role operator --env web)"
t_check "tokens: created through the CLI" test -n "$ro" -a -n "$op"
t_check "tokens: listed by name, never with the secret" \
    sh -c "cli_out=\$(BOOT_SERVER_TOKEN='$token' '$server' --server '$url' --ca-file '$ca' token list --json) && \
           echo \"\$cli_out\" | grep -q op-web && ! echo \"\$cli_out\" | grep -q '$op'"
spec="$dir/openapi.json"
curl -sS --cacert "$ca" -o "$spec" "$url/api/openapi.json"
python3 - "$url" "$ca" "$spec" "$token" "$ro" "$op" > "$dir/tokens.out" <<'PY'
import json, ssl, sys, urllib.request, urllib.error
url, ca, spec, admin, ro, op = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
def call(method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
doc = json.load(open(spec))
changing = [(m.upper(), p) for p, item in doc["paths"].items() for m in item
            if m in ("post", "put", "patch", "delete")]
bad = []
for m, p in changing:
    path = p.replace("{", "").replace("}", "")  # {name} -> name: any value
    st, body = call(m, path, ro, {})
    if st != 403 or json.loads(body).get("code") != "forbidden":
        bad.append(f"{m} {p}: {st}")
print(f"readonly_changing_ops {len(changing)}")
print(f"readonly_not_403 {len(bad)} {'; '.join(bad)}")
st, _ = call("GET", "/api/nodes", ro)
print(f"readonly_get {st}")
st, _ = call("GET", "/api/tokens", ro)
print(f"readonly_tokens {st}")
st, body = call("POST", "/api/environments/web/scale", op, {"nodes": 0})
print(f"operator_scale_own {st}")
st, _ = call("POST", "/api/environments/db/scale", op, {"nodes": 0})
print(f"operator_scale_other {st}")
st, _ = call("POST", "/api/nodes", op, {"mac": "52:54:00:00:00:01"})
print(f"operator_enrol {st}")
st, _ = call("GET", "/api/environments", op)
print(f"operator_get {st}")
st, _ = call("DELETE", "/api/tokens/ro-test", admin)
print(f"revoke {st}")
st, _ = call("GET", "/api/nodes", ro)
print(f"revoked_get {st}")
st, body = call("GET", "/api/events?limit=100000", admin)
audit = [e["detail"] for e in json.loads(body) if e["kind"] == "audit"]
ro_forbidden = [a for a in audit if a.get("token") == "ro-test" and a.get("outcome") == "forbidden"]
print(f"audit_ro_forbidden {len(ro_forbidden)}")
print(f"audit_operator_ok {sum(1 for a in audit if a.get('token') == 'op-web' and a.get('outcome') == 'ok' and a.get('path') == '/api/environments/web/scale')}")
print(f"audit_secret_leaks {sum(1 for a in audit if ro in json.dumps(a) or op in json.dumps(a) or admin in json.dumps(a))}")
PY
cat "$dir/tokens.out"
val() { sed -n "s/^$1 \([0-9]*\).*/\1/p" "$dir/tokens.out"; }
n="$(val readonly_changing_ops)"
t_check "tokens: read-only gets 403 on all ${n:-?} state-changing operations of the spec" \
    test "${n:-0}" -gt 20 -a "$(val readonly_not_403)" = 0
t_check "tokens: read-only reads (200)" test "$(val readonly_get)" = 200
t_check "tokens: read-only cannot list tokens (403)" test "$(val readonly_tokens)" = 403
t_check "tokens: operator scales its environment (200)" test "$(val operator_scale_own)" = 200
t_check "tokens: operator gets 403 on another environment" test "$(val operator_scale_other)" = 403
t_check "tokens: operator gets 403 outside environments" test "$(val operator_enrol)" = 403
t_check "tokens: operator reads (200)" test "$(val operator_get)" = 200
t_check "tokens: revoked (204), then 401" test "$(val revoke)" = 204 -a "$(val revoked_get)" = 401
t_check "audit: each read-only refusal recorded with the token's name" \
    test "$(val audit_ro_forbidden)" = "${n:-x}"
t_check "audit: the operator's scale recorded" test "$(val audit_operator_ok)" = 1
t_check "audit: no secret in the audit log" test "$(val audit_secret_leaks)" = 0

# --- schemathesis
st_t0=$SECONDS
cd "$dir" || finish  # schemathesis keeps a cache directory in its working directory
# One worker: with two, CPython 3.11's ast module (hypothesis describes its filter
# lambdas with ast.parse) races between the worker threads and schemathesis itself
# crashes now and then ("SystemError: AST constructor recursion depth mismatch",
# CPython gh-106905), which would read as a failure of the server.
"$venv/bin/schemathesis" run "$url/api/openapi.json" \
    --tls-verify "$ca" -H "Authorization: Bearer $token" \
    --max-examples "${ST_MAX_EXAMPLES:-25}" --seed 1 -w 1 \
    --exclude-path /api/events \
    --exclude-path /api/events/stream \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --report junit --report-dir "$dir/st-report" --no-color > "$dir/schemathesis.out" 2>&1
rc=$?
sed -n '/SUMMARY/,$p' "$dir/schemathesis.out"
ops="$(sed -n 's/^ *Tested: \([0-9]*\).*/\1/p' "$dir/schemathesis.out")"
cases="$(sed -n 's/^ *\([0-9]*\) generated.*/\1/p' "$dir/schemathesis.out")"
echo "schemathesis: ${ops:-?} operations, ${cases:-?} test cases, $((SECONDS - st_t0)) s"
if [ "$rc" = 0 ]; then
    t_ok "schemathesis: no 5xx, responses match the spec (${ops:-?} operations, ${cases:-?} cases)"
else
    # What went wrong, and the curl line that reproduces it.
    sed -En '/^=+ (ERRORS|FAILURES) =+$/,/^=+ SUMMARY =+$/p' "$dir/schemathesis.out" | head -n 60
    t_fail "schemathesis: failures (see above)"
fi
t_check "server still running" kill -0 "$pid"
finish
