// The dev server listens where the gateway says (PORT and HOST are set for
// every container it starts). HMR needs nothing here: the client connects back
// to the host and port the page was loaded from, which is the gateway's
// preview host, and the gateway passes the WebSocket upgrade through.
import { defineConfig } from 'vite';

export default defineConfig({
  server: {
    host: process.env.HOST || '127.0.0.1',
    port: Number(process.env.PORT || 5173),
    strictPort: true,
    // Requests arrive through the gateway under its preview host names
    // ({container}.{project}.{preview-domain}); the gateway authenticates them.
    allowedHosts: true,
  },
});
