#!/bin/sh
# sextant-iptables: the traffic capture of an injected pod, run by the
# istio-init container before any application container starts. It takes
# the flags of Istio's istio-iptables and writes Istio's nat table layout:
#
#   PREROUTING -> ISTIO_INBOUND -> ISTIO_IN_REDIRECT  (REDIRECT to 15006)
#   OUTPUT     -> ISTIO_OUTPUT  -> ISTIO_REDIRECT     (REDIRECT to 15001)
#
# The proxy's own traffic (uid/gid 1337) and traffic to 127.0.0.1 leave
# uncaptured; the proxy's traffic to the pod's own address over lo goes back
# to the inbound listener; 127.0.0.6 (Envoy's inbound passthrough source) is
# never captured. In TPROXY mode, inbound capture is done in the mangle table
# with TPROXY, a firewall mark and a local routing table instead.
#
# Installed in the proxy image as /usr/local/bin/sextant-iptables (needs
# iptables, iptables-restore, and iproute2 for TPROXY). Only IPv4 is
# captured; IPv6 ranges in -i/-x are ignored, as istio-iptables does
# without dual-stack support.
#
# Usage: sextant-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' \
#          -x "" -b '*' -d 15090,15021,15020 [-o PORTS] [-q PORTS] [-c IFACES] [-n]
set -eu

usage() {
    cat <<'EOF'
sextant-iptables: capture a pod's TCP traffic for its Envoy sidecar (istio-iptables flags)
  -p PORT   outbound capture port (Envoy's 15001)
  -z PORT   inbound capture port (Envoy's 15006)
  -u UID    the proxy's user id, never captured (1337)
  -g GID    the proxy's group id, never captured (default: the uid)
  -m MODE   REDIRECT, TPROXY or NONE
  -i CIDRS  outbound destinations to capture: '*' for all, or a comma list
  -x CIDRS  outbound destinations never captured (comma list)
  -b PORTS  inbound ports to capture: '*' for all, or a comma list ('' for none)
  -d PORTS  inbound ports never captured when -b is '*'
  -o PORTS  outbound ports never captured
  -q PORTS  outbound ports always captured
  -c IFACES interfaces whose traffic is never captured
  -n        dry run: print the rules, change nothing
EOF
}

die() {
    echo "sextant-iptables: $*" >&2
    exit 1
}

PROXY_PORT=15001
INBOUND_CAPTURE_PORT=15006
PROXY_UID=1337
PROXY_GID=
MODE=REDIRECT
OUTBOUND_IP_RANGES_INCLUDE=
OUTBOUND_IP_RANGES_EXCLUDE=
INBOUND_PORTS_INCLUDE=
INBOUND_PORTS_EXCLUDE=
OUTBOUND_PORTS_INCLUDE=
OUTBOUND_PORTS_EXCLUDE=
EXCLUDE_INTERFACES=
DRY_RUN=
# Istio's HBONE port, never captured inbound.
TUNNEL_PORT=15008
TPROXY_MARK=1337
TPROXY_TABLE=133

while getopts ":p:z:u:g:m:i:x:b:d:o:q:c:k:nh" opt; do
    case "$opt" in
        p) PROXY_PORT=$OPTARG ;;
        z) INBOUND_CAPTURE_PORT=$OPTARG ;;
        u) PROXY_UID=$OPTARG ;;
        g) PROXY_GID=$OPTARG ;;
        m) MODE=$OPTARG ;;
        i) OUTBOUND_IP_RANGES_INCLUDE=$OPTARG ;;
        x) OUTBOUND_IP_RANGES_EXCLUDE=$OPTARG ;;
        b) INBOUND_PORTS_INCLUDE=$OPTARG ;;
        d) INBOUND_PORTS_EXCLUDE=$OPTARG ;;
        o) OUTBOUND_PORTS_EXCLUDE=$OPTARG ;;
        q) OUTBOUND_PORTS_INCLUDE=$OPTARG ;;
        c) EXCLUDE_INTERFACES=$OPTARG ;;
        k) die "-k (kubevirtInterfaces) is not supported" ;;
        n) DRY_RUN=1 ;;
        h)
            usage
            exit 0
            ;;
        :) die "-$OPTARG needs a value" ;;
        *) die "unknown option -$OPTARG (see -h)" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || die "unexpected arguments: $*"
[ -n "$PROXY_GID" ] || PROXY_GID=$PROXY_UID

# The comma list $1 as words.
words() {
    printf '%s' "$1" | tr ',' ' '
}

is_number() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

check_port() {
    is_number "$1" && [ "$1" -ge 1 ] && [ "$1" -le 65535 ] || die "$2: $1 is not a port"
}

check_ports() {
    for port in $(words "$1"); do check_port "$port" "$2"; done
}

# IPv4 CIDRs of the comma list $1 (IPv6 ones are skipped), checked.
ipv4_cidrs() {
    flag=$2
    for cidr in $(words "$1"); do
        case "$cidr" in
            *:*) continue ;;
            */*) ;;
            *) die "$flag: $cidr is not a CIDR" ;;
        esac
        addr=${cidr%/*}
        len=${cidr#*/}
        is_number "$len" && [ "$len" -le 32 ] || die "$flag: $cidr has a bad prefix length"
        old_ifs=$IFS
        IFS=.
        # shellcheck disable=SC2086
        set -- $addr
        IFS=$old_ifs
        [ $# -eq 4 ] || die "$flag: $cidr is not an IPv4 CIDR"
        for octet in "$@"; do
            is_number "$octet" && [ "$octet" -le 255 ] || die "$flag: $cidr is not an IPv4 CIDR"
        done
        printf '%s\n' "$cidr"
    done
}

case "$MODE" in
    REDIRECT | TPROXY) ;;
    NONE)
        echo "sextant-iptables: interception mode NONE: nothing to set up"
        exit 0
        ;;
    *) die "-m must be REDIRECT, TPROXY or NONE, not $MODE" ;;
esac
check_port "$PROXY_PORT" -p
check_port "$INBOUND_CAPTURE_PORT" -z
is_number "$PROXY_UID" || die "-u: $PROXY_UID is not a user id"
is_number "$PROXY_GID" || die "-g: $PROXY_GID is not a group id"
[ "$INBOUND_PORTS_INCLUDE" = '*' ] || check_ports "$INBOUND_PORTS_INCLUDE" -b
check_ports "$INBOUND_PORTS_EXCLUDE" -d
check_ports "$OUTBOUND_PORTS_EXCLUDE" -o
check_ports "$OUTBOUND_PORTS_INCLUDE" -q
INCLUDE_CIDRS=
if [ "$OUTBOUND_IP_RANGES_INCLUDE" != '*' ]; then
    INCLUDE_CIDRS=$(ipv4_cidrs "$OUTBOUND_IP_RANGES_INCLUDE" -i)
fi
EXCLUDE_CIDRS=$(ipv4_cidrs "$OUTBOUND_IP_RANGES_EXCLUDE" -x)

NAT=
MANGLE=
NL='
'
nat() { NAT="$NAT$*$NL"; }
mangle() { MANGLE="$MANGLE$*$NL"; }

# --- chains ---------------------------------------------------------------
nat ":ISTIO_REDIRECT - [0:0]"
nat ":ISTIO_IN_REDIRECT - [0:0]"
nat ":ISTIO_OUTPUT - [0:0]"
if [ "$MODE" = REDIRECT ] && [ -n "$INBOUND_PORTS_INCLUDE" ]; then
    nat ":ISTIO_INBOUND - [0:0]"
fi
nat "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports $PROXY_PORT"
nat "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports $INBOUND_CAPTURE_PORT"

# --- inbound --------------------------------------------------------------
if [ -n "$INBOUND_PORTS_INCLUDE" ]; then
    if [ "$MODE" = TPROXY ]; then
        # New connections are handed to Envoy's transparent listener; packets
        # of established ones are marked and routed to lo by table 133.
        mangle ":ISTIO_DIVERT - [0:0]"
        mangle ":ISTIO_TPROXY - [0:0]"
        mangle ":ISTIO_INBOUND - [0:0]"
        mangle "-A ISTIO_DIVERT -j MARK --set-mark $TPROXY_MARK"
        mangle "-A ISTIO_DIVERT -j ACCEPT"
        mangle "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark $TPROXY_MARK/0xffffffff --on-port $INBOUND_CAPTURE_PORT"
        mangle "-A PREROUTING -p tcp -j ISTIO_INBOUND"
        mangle "-A ISTIO_INBOUND -p tcp --dport $TUNNEL_PORT -j RETURN"
        mangle "-A ISTIO_INBOUND -p tcp -s 127.0.0.6/32 -i lo -j RETURN"
        if [ "$INBOUND_PORTS_INCLUDE" = '*' ]; then
            for port in $(words "$INBOUND_PORTS_EXCLUDE"); do
                mangle "-A ISTIO_INBOUND -p tcp --dport $port -j RETURN"
            done
            mangle "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
            mangle "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY"
        else
            for port in $(words "$INBOUND_PORTS_INCLUDE"); do
                mangle "-A ISTIO_INBOUND -p tcp --dport $port -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
                mangle "-A ISTIO_INBOUND -p tcp --dport $port -j ISTIO_TPROXY"
            done
        fi
        # Replies of the application to a diverted connection follow the mark
        # back to Envoy rather than leaving the pod.
        mangle "-A PREROUTING -p tcp -m mark --mark $TPROXY_MARK -j CONNMARK --save-mark"
        mangle "-A OUTPUT -p tcp -m connmark --mark $TPROXY_MARK -j CONNMARK --restore-mark"
    else
        nat "-A PREROUTING -p tcp -j ISTIO_INBOUND"
        nat "-A ISTIO_INBOUND -p tcp --dport $TUNNEL_PORT -j RETURN"
        if [ "$INBOUND_PORTS_INCLUDE" = '*' ]; then
            for port in $(words "$INBOUND_PORTS_EXCLUDE"); do
                nat "-A ISTIO_INBOUND -p tcp --dport $port -j RETURN"
            done
            nat "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"
        else
            for port in $(words "$INBOUND_PORTS_INCLUDE"); do
                nat "-A ISTIO_INBOUND -p tcp --dport $port -j ISTIO_IN_REDIRECT"
            done
        fi
    fi
fi

# --- outbound -------------------------------------------------------------
nat "-A OUTPUT -p tcp -j ISTIO_OUTPUT"
for port in $(words "$OUTBOUND_PORTS_EXCLUDE"); do
    nat "-A ISTIO_OUTPUT -p tcp --dport $port -j RETURN"
done
# Envoy's inbound passthrough connects to the app from 127.0.0.6.
nat "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
# The proxy calling the pod's own address (app -> Envoy -> service VIP ->
# this pod) goes to the inbound listener; the app's other loopback traffic
# and all of the proxy's other traffic is left alone.
nat "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner $PROXY_UID -j ISTIO_IN_REDIRECT"
nat "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner $PROXY_UID -j RETURN"
nat "-A ISTIO_OUTPUT -m owner --uid-owner $PROXY_UID -j RETURN"
nat "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner $PROXY_GID -j ISTIO_IN_REDIRECT"
nat "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner $PROXY_GID -j RETURN"
nat "-A ISTIO_OUTPUT -m owner --gid-owner $PROXY_GID -j RETURN"
nat "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"
for cidr in $EXCLUDE_CIDRS; do
    nat "-A ISTIO_OUTPUT -d $cidr -j RETURN"
done
for port in $(words "$OUTBOUND_PORTS_INCLUDE"); do
    nat "-A ISTIO_OUTPUT -p tcp --dport $port -j ISTIO_REDIRECT"
done
if [ "$OUTBOUND_IP_RANGES_INCLUDE" = '*' ]; then
    nat "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"
elif [ -n "$INCLUDE_CIDRS" ]; then
    for cidr in $INCLUDE_CIDRS; do
        nat "-A ISTIO_OUTPUT -d $cidr -j ISTIO_REDIRECT"
    done
    nat "-A ISTIO_OUTPUT -j RETURN"
fi

# --- excluded interfaces (first, so they win) -------------------------------
for iface in $(words "$EXCLUDE_INTERFACES"); do
    nat "-I PREROUTING 1 -i $iface -j RETURN"
    nat "-I OUTPUT 1 -o $iface -j RETURN"
    [ -z "$MANGLE" ] || mangle "-I PREROUTING 1 -i $iface -j RETURN"
done

RULES="*nat$NL${NAT}COMMIT$NL"
[ -z "$MANGLE" ] || RULES="$RULES*mangle$NL${MANGLE}COMMIT$NL"
ROUTES=
if [ "$MODE" = TPROXY ] && [ -n "$INBOUND_PORTS_INCLUDE" ]; then
    ROUTES="ip -f inet rule add fwmark $TPROXY_MARK lookup $TPROXY_TABLE$NL"
    ROUTES="${ROUTES}ip -f inet route add local default dev lo table $TPROXY_TABLE$NL"
fi

echo "sextant-iptables: mode $MODE, rules for iptables-restore --noflush:"
printf '%s' "$RULES"
[ -z "$ROUTES" ] || printf 'and routes:\n%s' "$ROUTES"

if [ -n "$DRY_RUN" ]; then
    echo "sextant-iptables: dry run, nothing applied"
    exit 0
fi

command -v iptables-restore >/dev/null 2>&1 || die "iptables-restore is not installed in this image"
# The pod's containers (and their args) cannot change, so rules already in
# place (the init container ran before in this network namespace) are the
# ones this run would write.
if iptables -t nat -S ISTIO_OUTPUT >/dev/null 2>&1; then
    echo "sextant-iptables: ISTIO_OUTPUT already exists; capture is already set up"
    exit 0
fi
printf '%s' "$RULES" | iptables-restore --noflush || die "iptables-restore failed (does the container have NET_ADMIN and NET_RAW?)"
if [ -n "$ROUTES" ]; then
    command -v ip >/dev/null 2>&1 || die "ip (iproute2) is needed for TPROXY"
    ip -f inet rule add fwmark "$TPROXY_MARK" lookup "$TPROXY_TABLE"
    ip -f inet route add local default dev lo table "$TPROXY_TABLE"
fi
echo "sextant-iptables: done"
