#!/usr/bin/env bash
# Makes what a pspace cluster needs as secrets, with openssl, into OUT (created, mode 700):
#   ca.crt, ca.key       a CA of your own (keep ca.key off the cluster)
#   tls.crt, tls.key     the coordinator's certificate, valid for the names below
#   token                a random bearer token
#   env                  PSPACE_S3_ACCESS_KEY / PSPACE_S3_SECRET_KEY for compose's SeaweedFS
# Names: pspace-coordinator (Kubernetes Service), coordinator (compose), localhost, 127.0.0.1,
# plus any given after OUT (e.g. the Service's full name, pspace-coordinator.pspace.svc).
#
# usage: deploy/image/secrets.sh OUT [EXTRA-NAME...]
set -euo pipefail
out=${1:?usage: secrets.sh OUT [EXTRA-NAME...]}
shift
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
san="DNS:pspace-coordinator,DNS:coordinator,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=pspace CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pspace-coordinator" \
  -keyout tls.key -out tls.csr 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") -out tls.crt 2>/dev/null
rm -f tls.csr ca.srl
openssl rand -hex 32 > token
printf 'PSPACE_S3_ACCESS_KEY=pspace-%s\nPSPACE_S3_SECRET_KEY=%s\n' "$(openssl rand -hex 4)" "$(openssl rand -hex 24)" > env
# The containers run as uid 65532: the files they mount must be readable by it.
chmod 644 ca.crt tls.crt tls.key token env
echo "secrets.sh: wrote ca.crt ca.key tls.crt tls.key token env to $out (certificate names: $san)"
