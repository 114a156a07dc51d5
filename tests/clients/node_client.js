// Runs one query with Node's snowflake-sdk, for the client matrix (tests/clients/).
//
// The job comes as JSON on standard input: {accessUrl, account, username, token,
// database, schema, sql}; the answer goes out as one JSON line ({"rows": [...]}),
// rows as arrays. The gateway's CA comes from NODE_EXTRA_CA_CERTS; snowflake-sdk
// is found through NODE_PATH (the matrix's cached npm folder).
"use strict";

const snowflake = require("snowflake-sdk");

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (part) => (text += part));
    process.stdin.on("end", () => resolve(JSON.parse(text)));
    process.stdin.on("error", reject);
  });
}

function connect(connection) {
  return new Promise((resolve, reject) =>
    connection.connect((error, conn) => (error ? reject(error) : resolve(conn))),
  );
}

function execute(connection, sqlText) {
  return new Promise((resolve, reject) =>
    connection.execute({
      sqlText,
      rowMode: "array",
      complete: (error, statement, rows) => (error ? reject(error) : resolve(rows)),
    }),
  );
}

function destroy(connection) {
  return new Promise((resolve) => connection.destroy(() => resolve()));
}

async function main() {
  const job = await readStdin();
  snowflake.configure({ logLevel: process.env.HOOPGW_NODE_LOG || "ERROR", additionalLogToConsole: !!process.env.HOOPGW_NODE_LOG });
  const connection = snowflake.createConnection({
    accessUrl: job.accessUrl,
    account: job.account,
    username: job.username,
    authenticator: "OAUTH",
    token: job.token,
    database: job.database,
    schema: job.schema,
  });
  await connect(connection);
  try {
    const rows = await execute(connection, job.sql);
    process.stdout.write(JSON.stringify({ rows, version: require("snowflake-sdk/package.json").version }) + "\n");
  } finally {
    await destroy(connection);
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
