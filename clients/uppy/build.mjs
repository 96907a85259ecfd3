// Bundles the page into dist/: page.js, page.css (Uppy's styles) and index.html. No CDN.
import { build } from 'esbuild'
import { copyFile, rm } from 'node:fs/promises'

await rm('dist', { recursive: true, force: true })
await build({
  entryPoints: ['src/page.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  outdir: 'dist',
  loader: { '.svg': 'dataurl', '.woff': 'dataurl', '.woff2': 'dataurl' },
  logLevel: 'warning',
})
await copyFile('src/index.html', 'dist/index.html')
