// Builds the page into dist/, which the gateway serves at `/` (--web-dir).
// `npm run dev` serves it with hot reload and forwards /api to a running
// gateway (GATEWAY_URL, default http://127.0.0.1:8080), WebSockets included.
import { defineConfig } from 'vite';

const gateway = process.env.GATEWAY_URL || 'http://127.0.0.1:8080';

export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    proxy: {
      '/api': { target: gateway, ws: true, changeOrigin: false },
    },
  },
});
