#!/bin/sh
# sextant-proxy-entrypoint: PID 1 of the injected istio-proxy container (the
# job of Istio's pilot-agent):
#   1. writes Envoy's bootstrap with `sextant bootstrap` (node id, labels and
#      metadata of this pod, ADS to DISCOVERY_ADDRESS, the sds-grpc cluster
#      on the agent's socket) to /etc/istio/proxy/envoy.yaml;
#   2. starts `sextant agent` (workload key and certificate from the CA at
#      CA_ADDR, authenticated with the istio-ca service account token,
#      served to Envoy over SDS on a Unix socket; the status port
#      STATUS_PORT, 15020, where kubelet's rewritten app probes from
#      ISTIO_KUBE_APP_PROBERS are run against the app at INSTANCE_IP);
#   3. starts Envoy on that bootstrap;
# then supervises both: when either exits, the other is stopped and the
# container exits with the first one's status, so Kubernetes restarts it.
# SIGTERM/SIGINT are passed to both.
#
# `sextant-proxy-entrypoint wait` blocks until Envoy reports ready (admin
# /ready says LIVE) or READY_TIMEOUT seconds pass: the postStart hook that
# holdApplicationUntilProxyStarts injects. It needs curl or wget.
#
# Installed in the proxy image as /usr/local/bin/sextant-proxy-entrypoint.
# Reads the environment the injector sets (control-plane/webhook/src/inject):
# POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, DISCOVERY_ADDRESS,
# CA_ADDR, TRUST_DOMAIN, CLUSTER_DOMAIN, ISTIO_META_CLUSTER_ID,
# ISTIO_META_INTERCEPTION_MODE, ISTIO_KUBE_APP_PROBERS (read by the agent
# itself), and the pod's labels from the downward API
# file /etc/istio/pod/labels. XDS_TLS (true, false, auto: TLS unless the
# port is 15010) overrides how Envoy reaches DISCOVERY_ADDRESS.
set -eu

SEXTANT=${SEXTANT_BIN:-sextant}
ENVOY=${ENVOY_BIN:-envoy}
CONFIG_DIR=${PROXY_CONFIG_DIR:-/etc/istio/proxy}
POD_INFO_DIR=${POD_INFO_DIR:-/etc/istio/pod}
SDS_SOCKET=${SDS_SOCKET:-/var/run/secrets/workload-spiffe-uds/socket}
TOKEN_FILE=${TOKEN_FILE:-/var/run/secrets/tokens/istio-token}
ROOT_CERT=${ROOT_CERT:-/var/run/secrets/istio/root-cert.pem}
ADMIN_PORT=${ADMIN_PORT:-15000}
STATUS_PORT=${STATUS_PORT:-15020}
READY_TIMEOUT=${READY_TIMEOUT:-60}
ENVOY_LOG_LEVEL=${ENVOY_LOG_LEVEL:-warning}

log() {
    echo "sextant-proxy-entrypoint: $*" >&2
}

die() {
    log "$*"
    exit 1
}

fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 2 -O - "$1"
    else
        die "wait needs curl or wget in the proxy image"
    fi
}

wait_ready() {
    url="http://127.0.0.1:$ADMIN_PORT/ready"
    tries=0
    while [ "$tries" -lt "$READY_TIMEOUT" ]; do
        if fetch "$url" 2>/dev/null | grep -q LIVE; then
            log "Envoy is ready"
            exit 0
        fi
        tries=$((tries + 1))
        sleep 1
    done
    die "Envoy was not ready after ${READY_TIMEOUT}s ($url)"
}

case "${1:-}" in
    '') ;;
    wait) wait_ready ;;
    -h | --help)
        sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown command ${1} (expected nothing, or wait)" ;;
esac

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${POD_NAMESPACE:?POD_NAMESPACE must be set (downward API metadata.namespace)}"
: "${INSTANCE_IP:?INSTANCE_IP must be set (downward API status.podIP)}"
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-default}
CLUSTER_DOMAIN=${CLUSTER_DOMAIN:-cluster.local}
DISCOVERY_ADDRESS=${DISCOVERY_ADDRESS:-istiod.istio-system.svc:15012}
CA_ADDR=${CA_ADDR:-https://istiod.istio-system.svc:15012}
TRUST_DOMAIN=${TRUST_DOMAIN:-cluster.local}
CLUSTER_ID=${ISTIO_META_CLUSTER_ID:-Kubernetes}
INTERCEPTION_MODE=${ISTIO_META_INTERCEPTION_MODE:-REDIRECT}

# The downward API writes one `key="value"` line per label; label values
# cannot hold commas or quotes, so `k=v,k2=v2` is exact.
labels=
if [ -r "$POD_INFO_DIR/labels" ]; then
    labels=$(sed -n 's/^\([^=]*\)="\(.*\)"$/\1=\2/p' "$POD_INFO_DIR/labels" | tr '\n' ',' | sed 's/,$//')
fi

# Kubelet probes the pod IP, so the status port listens on every address.
case "$INSTANCE_IP" in
    *:*)
        ip_version=v6
        status_addr="[::]:$STATUS_PORT"
        ;;
    *)
        ip_version=v4
        status_addr="0.0.0.0:$STATUS_PORT"
        ;;
esac

# The host of HOST:PORT (or of a URL), brackets of an IPv6 address removed:
# the name a server's certificate must carry.
host_of() {
    host=${1#*://}
    host=${host%:*}
    host=${host#[}
    printf '%s' "${host%]}"
}
ca_host=$(host_of "$CA_ADDR")

# xDS goes over mTLS (workload certificate from the agent) except on
# istiod's plaintext port 15010, unless XDS_TLS says otherwise.
case "${XDS_TLS:-auto}" in
    auto)
        case "$DISCOVERY_ADDRESS" in
            *:15010) xds_tls=false ;;
            *) xds_tls=true ;;
        esac
        ;;
    true | false) xds_tls=$XDS_TLS ;;
    *) die "XDS_TLS must be true, false or auto, not $XDS_TLS" ;;
esac

set -- \
    --node-id "sidecar~$INSTANCE_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.$CLUSTER_DOMAIN" \
    --pod-name "$POD_NAME" \
    --namespace "$POD_NAMESPACE" \
    --service-account "$SERVICE_ACCOUNT" \
    --labels "$labels" \
    --ip "$INSTANCE_IP" \
    --xds-addr "$DISCOVERY_ADDRESS" \
    --cluster-id "$CLUSTER_ID" \
    --interception-mode "$INTERCEPTION_MODE" \
    --admin-port "$ADMIN_PORT" \
    --health-port 15021 \
    --stats-port 15090 \
    --sds-socket "$SDS_SOCKET"
if [ "$xds_tls" = true ]; then
    set -- "$@" --xds-tls --xds-server-name "$(host_of "$DISCOVERY_ADDRESS")"
fi

mkdir -p "$CONFIG_DIR"
bootstrap="$CONFIG_DIR/envoy.yaml"
"$SEXTANT" bootstrap "$@" >"$bootstrap.tmp" || die "sextant bootstrap failed"
mv "$bootstrap.tmp" "$bootstrap"
log "wrote $bootstrap for $POD_NAMESPACE/$POD_NAME ($INSTANCE_IP), xDS at $DISCOVERY_ADDRESS (TLS: $xds_tls)"

"$SEXTANT" agent \
    --ca-addr "$CA_ADDR" \
    --ca-root-cert "$ROOT_CERT" \
    --ca-server-name "$ca_host" \
    --token-file "$TOKEN_FILE" \
    --namespace "$POD_NAMESPACE" \
    --service-account "$SERVICE_ACCOUNT" \
    --trust-domain "$TRUST_DOMAIN" \
    --cluster-id "$CLUSTER_ID" \
    --sds-socket "$SDS_SOCKET" \
    --status-addr "$status_addr" &
agent=$!

"$ENVOY" -c "$bootstrap" \
    --disable-hot-restart \
    --drain-time-s 45 \
    --local-address-ip-version "$ip_version" \
    -l "$ENVOY_LOG_LEVEL" &
envoy=$!

stopping=
stop() {
    stopping=1
    kill -TERM "$envoy" "$agent" 2>/dev/null || true
}
trap stop TERM INT

# POSIX sh cannot wait for "either child", so poll once a second.
while kill -0 "$agent" 2>/dev/null && kill -0 "$envoy" 2>/dev/null; do
    sleep 1
done
if kill -0 "$envoy" 2>/dev/null; then
    first=agent
    status=0
    wait "$agent" || status=$?
else
    first=envoy
    status=0
    wait "$envoy" || status=$?
fi
[ -n "$stopping" ] || log "$first exited with status $status; stopping the container"
stop
wait "$agent" 2>/dev/null || true
wait "$envoy" 2>/dev/null || true
exit "$status"
