#!/bin/sh
# The release image's whole filesystem, assembled into OUT: the static agentrunner
# binary with its version stamps, the CA bundle, and passwd/group entries for the
# nonroot user 65532. This is the one recipe for the image's contents: the build
# stage of deploy/Dockerfile runs it inside golang:1.26, and `make image`
# (deploy/image.sh) runs it on the build machine and hands OUT to the Dockerfile
# in place of that stage (podman build --build-context build=…).
#   VERSION=… COMMIT=… DATE=… deploy/rootfs.sh OUT
# Environment: VERSION, COMMIT, DATE (the stamps), GOOS/GOARCH (default: the
# machine's), CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -eu
out=${1:?usage: rootfs.sh OUT}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || { echo "rootfs.sh: no CA bundle at $ca (install ca-certificates)" >&2; exit 1; }
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp" "$out/home/nonroot"
CGO_ENABLED=0 go build -trimpath -buildvcs=false \
  -ldflags="-s -w -X main.version=${VERSION:-dev} -X main.commit=${COMMIT:-} -X main.date=${DATE:-}" \
  -o "$out/usr/local/bin/agentrunner" ./cmd/agentrunner
cp "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
