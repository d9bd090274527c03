#!/usr/bin/env node
// Calls the four CoreServices methods using only protos/visionrpc/v1/core.proto and prints one
// JSON object. Usage: node core_client.js [host:port]   (default 127.0.0.1:50051)
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "..", "protos");
const target = process.argv[2] || "127.0.0.1:50051";

const definition = protoLoader.loadSync("visionrpc/v1/core.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names exactly as in the .proto
  longs: String, // int64 as decimal strings: no precision loss
  enums: String,
  defaults: true,
  oneofs: true,
});
const { CoreServices } = grpc.loadPackageDefinition(definition).visionrpc.v1;
const client = new CoreServices(target, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 10000);

const timestamp = (ts) =>
  new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6)).toISOString();

function ping() {
  return new Promise((resolve, reject) => {
    client.Ping({ message: "hello from node" }, { deadline: deadline() }, (err, reply) => {
      if (err) return reject(err);
      resolve({ ...reply, server_time: timestamp(reply.server_time) });
    });
  });
}

function streamNumbers() {
  return new Promise((resolve, reject) => {
    const values = [];
    const call = client.StreamNumbers(
      { start: "-2", count: 4, step: "3", interval_ms: 5 },
      { deadline: deadline() },
    );
    call.on("data", (reply) => values.push({ index: reply.index, value: reply.value }));
    call.on("error", reject);
    call.on("end", () => resolve(values));
  });
}

function uploadNumbers() {
  return new Promise((resolve, reject) => {
    const call = client.UploadNumbers({ deadline: deadline() }, (err, summary) =>
      err ? reject(err) : resolve(summary),
    );
    for (const value of ["5", "-1", "9007199254740993"]) call.write({ value });
    call.end();
  });
}

function chat() {
  return new Promise((resolve, reject) => {
    const room = `node-${process.pid}`;
    const seen = [];
    const call = client.Chat({ deadline: deadline() });
    call.on("data", (m) => {
      seen.push({ room: m.room, sender: m.sender, text: m.text, seq: m.seq, sent_at: timestamp(m.sent_at) });
      if (m.text === "first") call.write({ room, sender: "node", text: "second" });
      if (m.text === "second") call.end(); // leave: the server ends the stream
    });
    call.on("error", reject);
    call.on("end", () => resolve(seen));
    call.write({ room, sender: "node", text: "first" });
  });
}

async function main() {
  const result = {
    target,
    ping: await ping(),
    stream_numbers: await streamNumbers(),
    upload_numbers: await uploadNumbers(),
    chat: await chat(),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

main()
  .catch((err) => {
    process.stderr.write(`error: ${err.code !== undefined ? grpc.status[err.code] : ""} ${err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
