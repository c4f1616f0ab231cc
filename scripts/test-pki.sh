#!/usr/bin/env bash
# A throw-away PKI for the TLS tests and benchmarks (tests/security.rs,
# perf/ilp.rs tls), made with the openssl command:
#
#   scripts/test-pki.sh DIR              # ca, node, client (signed by ca),
#                                        # foreign (another CA), expired (2020)
#   scripts/test-pki.sh DIR leaf NAME CA # NAME.pem/NAME.key signed by CA
#
# Leaves are for localhost and 127.0.0.1 (what the clients check), EC P-256,
# valid two days. Never use these for anything else.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "error: openssl is required (apt-get install openssl)" >&2; exit 1; }

leaf() {
  local name="$1" ca="$2"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial \
    -out "$name.pem" -days 2 -extfile leaf.ext 2>/dev/null
}

if [ "${2:-}" = leaf ]; then
  leaf "$3" "$4"
  exit 0
fi

printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > leaf.ext
for ca in ca other-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$ca.key" -out "$ca.pem" -days 2 -subj "/CN=basalt test $ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
done
leaf node ca
leaf client ca
leaf foreign other-ca
# Valid for one day in 2020, signed by ca.
printf '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial.txt\ndefault_md=sha256\npolicy=p\ncopy_extensions=copy\nunique_subject=no\n[p]\ncommonName=supplied\n' > ca.cnf
: > index.txt
echo 1000 > serial.txt
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in node.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200102000000Z -extfile leaf.ext -notext 2>/dev/null
cp node.key expired.key
