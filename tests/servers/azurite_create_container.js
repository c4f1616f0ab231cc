// Creates a blob container on a local Azurite with the well-known
// development account, signing the request with SharedKey (no SDK needed).
//   node azurite_create_container.js PORT CONTAINER
const http = require("http");
const crypto = require("crypto");

const [port, container] = process.argv.slice(2);
const account = "devstoreaccount1";
const key = Buffer.from(
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
  "base64",
);
const date = new Date().toUTCString();
const version = "2021-10-04";
const path = `/${account}/${container}`;
const canonicalHeaders = `x-ms-date:${date}\nx-ms-version:${version}\n`;
const canonicalResource = `/${account}${path}\nrestype:container`;
// VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date,
// If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range
const toSign = ["PUT", "", "", "", "", "", "", "", "", "", "", "", canonicalHeaders + canonicalResource].join("\n");
const sig = crypto.createHmac("sha256", key).update(toSign, "utf8").digest("base64");
const req = http.request(
  {
    host: "127.0.0.1",
    port,
    method: "PUT",
    path: `${path}?restype=container`,
    headers: {
      "x-ms-date": date,
      "x-ms-version": version,
      Authorization: `SharedKey ${account}:${sig}`,
      "Content-Length": 0,
    },
  },
  (res) => {
    let body = "";
    res.on("data", (d) => (body += d));
    res.on("end", () => {
      if (res.statusCode === 201 || res.statusCode === 409) process.exit(0);
      console.error(`create container: HTTP ${res.statusCode} ${body}`);
      process.exit(1);
    });
  },
);
req.on("error", (e) => {
  console.error(`create container: ${e.message}`);
  process.exit(1);
});
req.end();
