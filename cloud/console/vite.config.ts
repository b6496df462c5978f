/// <reference types="vitest/config" />
// The console is served by the cloud at /app. JSX goes through esbuild's built-in transform
// (no @vitejs/plugin-react), so the build works with Debian's Node.js and npm as well.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/app/",
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1500,
    rollupOptions: {
      // TanStack Query marks its modules "use client" (for React Server Components); meaningless here
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
      output: {
        manualChunks: { echarts: ["echarts/core", "echarts/charts", "echarts/components", "echarts/renderers"] },
      },
    },
  },
  server: {
    // `npm run dev` against a cloud on :8080
    proxy: {
      "/api": { target: "http://127.0.0.1:8080", ws: true },
      "/auth": "http://127.0.0.1:8080",
    },
  },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
