// The WebSocket upstream of bench-gateway's "WebSocket echo through the
// proxy" part: run as a dev server (a container's start command, $PORT), it
// sends every message back as it came, the way an HMR socket answers.
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.env.PORT) });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
