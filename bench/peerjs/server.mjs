// The PeerJS server for the signaling benchmark: `node bench/peerjs/server.mjs PORT`.
// Its default limit of 5,000 clients is lifted so that the benchmark finds its real limit.
import { PeerServer } from "peer";

const port = Number(process.argv[2] ?? 9000);
PeerServer({ host: "127.0.0.1", port, path: "/", key: "peerjs", concurrent_limit: 1e9 }, () => {
  console.log(`peerjs listening on ${port}`);
});
