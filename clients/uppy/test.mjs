// Uppy in headless Chromium against fupload: a person's upload of a 50 MiB file through the page the
// example business server serves, with the page reloaded in the middle and the same file added
// again. Passes when the upload resumed (no second creation, the first PATCH after the reload at
// the offset fupload reported, above 0) and fupload stored the same bytes and called back.
//
//   FUPLOAD_URL=http://127.0.0.1:8080 BUSINESS_URL=http://127.0.0.1:8090 node test.mjs
//
// scripts/uppy.sh starts both servers and runs this. Optional: CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT (a PNG of the page mid-upload is written there; docs/img/uppy.png is one).
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const FILE_SIZE = 50 << 20
// Slow enough that the reload lands mid-upload on any machine, fast enough to stay a few seconds.
const UPLOAD_BYTES_PER_SEC = 8 << 20
const RELOAD_AT = 0.3

const fuploadUrl = required('FUPLOAD_URL')
const businessUrl = required('BUSINESS_URL')
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium'
const screenshot = process.env.SCREENSHOT
const tusPrefix = `${fuploadUrl}/api/upload/tus`

function required(name) {
  const value = process.env[name]
  if (!value) throw new Error(`${name} must be set (scripts/uppy.sh sets it)`)
  return value.replace(/\/$/, '')
}

function md5Of(path) {
  return new Promise((resolve, reject) => {
    const hash = createHash('md5')
    createReadStream(path).on('data', (data) => hash.update(data)).on('end', () => resolve(hash.digest('hex'))).on('error', reject)
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

// The page's one file, as Uppy sees it; fails at once on an upload error.
async function uppyFile(page) {
  const file = await page.evaluate(() => {
    const [file] = window.uppy?.getFiles() ?? []
    return file && { uploaded: file.progress.bytesUploaded || 0, complete: !!file.progress.uploadComplete, error: file.error ?? null }
  })
  if (file?.error) throw new Error(`Uppy reports an upload error: ${file.error}`)
  return file
}

async function addFile(page, path) {
  await page.locator('input.uppy-Dashboard-input[name="files[]"]:not([webkitdirectory])').setInputFiles(path)
}

const work = await mkdtemp(join(tmpdir(), 'fupload-uppy-'))
const browser = await chromium.launchPersistentContext(join(work, 'profile'), {
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1000, height: 700 },
})
try {
  const path = join(work, 'big.bin')
  await writeFile(path, randomBytes(FILE_SIZE))
  const localMd5 = await md5Of(path)

  const page = browser.pages()[0] ?? await browser.newPage()
  page.on('pageerror', (error) => console.error(`page error: ${error.message}`))
  page.on('console', (message) => { if (message.type() === 'error') console.error(`page console: ${message.text()}`) })
  page.on('response', (response) => {
    if (response.status() >= 400) console.error(`${response.status()} for ${response.request().method()} ${response.url()}`)
  })
  // What the page sends to fupload after the reload (listening only: a route would answer CORS
  // preflights itself and hide fupload's).
  let reloaded = false
  const afterReload = { creations: 0, headOffsets: [], patchOffsets: [] }
  page.on('request', (request) => {
    if (!reloaded || !request.url().startsWith(tusPrefix)) return
    if (request.method() === 'POST') afterReload.creations++
    if (request.method() === 'PATCH') afterReload.patchOffsets.push(Number(request.headers()['upload-offset']))
  })
  page.on('response', (response) => {
    if (reloaded && response.request().method() === 'HEAD' && response.url().startsWith(tusPrefix)) {
      afterReload.headOffsets.push(Number(response.headers()['upload-offset']))
    }
  })
  const cdp = await browser.newCDPSession(page)
  await cdp.send('Network.enable')
  await cdp.send('Network.emulateNetworkConditions',
    { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: UPLOAD_BYTES_PER_SEC })

  const started = Date.now()
  await page.goto(`${businessUrl}/`)
  await addFile(page, path)
  const before = await waitFor(`${RELOAD_AT * 100}% of the upload`, 60_000, async () => {
    const file = await uppyFile(page)
    return file && file.uploaded >= RELOAD_AT * FILE_SIZE && file
  })
  if (before.complete) throw new Error('the upload finished before the reload: it cannot test resuming')
  if (screenshot) await page.screenshot({ path: screenshot })
  console.log(`reloading at ${before.uploaded} of ${FILE_SIZE} bytes (after ${Date.now() - started} ms)`)

  reloaded = true
  await page.reload()
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 })
  await addFile(page, path)
  await waitFor('Uppy to finish the upload', 120_000, async () => (await uppyFile(page))?.complete)
  const callbacks = await waitFor("fupload's callback", 60_000, async () => {
    const callbacks = await (await fetch(`${businessUrl}/api/business/callbacks`)).json()
    return callbacks.length > 0 && callbacks
  })
  const [callback] = callbacks
  const storedMd5 = await md5Of(callback.storePath)
  const resumedAt = afterReload.headOffsets[0]
  console.log(`resumed at ${resumedAt} (HEAD), PATCH offsets after the reload: ${afterReload.patchOffsets.join(' ')}`)
  console.log(`callback: retCode ${callback.retCode}, protocol ${callback.protocol}, storePath ${callback.storePath}`)
  console.log(`md5 local ${localMd5}, stored ${storedMd5}, called back ${callback.fileMd5}; ${Date.now() - started} ms`)

  const failures = []
  const check = (ok, what) => { if (!ok) failures.push(what) }
  check(afterReload.creations === 0, `no new upload was created after the reload (${afterReload.creations} were)`)
  check(resumedAt > 0, `fupload had bytes when the page resumed (HEAD said ${resumedAt})`)
  check(afterReload.patchOffsets[0] === resumedAt, `the first PATCH after the reload started at the HEAD's offset (${afterReload.patchOffsets[0]})`)
  check(callbacks.length === 1, `one callback (${callbacks.length})`)
  check(callback.retCode === '0', `callback retCode "0" (${callback.retCode})`)
  check(callback.protocol === 'tus', `callback protocol "tus" (${callback.protocol})`)
  check(storedMd5 === localMd5, 'the stored file has the md5 of the local one')
  check(callback.fileMd5 === localMd5, 'the callback names the md5 of the local file')
  check(callback.storePath.includes('/users/demo/'), `stored under users/demo/ (${callback.storePath})`)
  if (failures.length > 0) throw new Error(`failed:\n  ${failures.join('\n  ')}`)
  console.log('uppy: ok')
} finally {
  await browser.close()
  await rm(work, { recursive: true, force: true })
}
