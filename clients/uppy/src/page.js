// The page the example business server serves: a person picks files in Uppy's Dashboard, the
// business server grants each upload, and Uppy's tus plugin uploads it to fupload, resumably.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

// A real page has a signed-in user and its business server takes the id from the session;
// this one names the user in the query (?user=...).
const userId = new URLSearchParams(window.location.search).get('user') ?? 'demo'

const uppy = new Uppy({ autoProceed: true })
  .use(Dashboard, {
    inline: true,
    target: '#uppy',
    width: '100%',
    height: 420,
    proudlyDisplayPoweredByUppy: false,
  })
  .use(Tus, {
    // Each file gets its own endpoint and grant (below); tus-js-client remembers the upload's
    // URL in localStorage, so the same file added again after a reload resumes where it was.
    chunkSize: 5 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000],
  })

// A grant is asked for as soon as a file is added; the upload waits for it.
const grants = new Map()

async function requestGrant(file) {
  const reply = await fetch('/api/business/grant', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId, fileName: file.name, fileSize: file.size ?? null }),
  })
  if (!reply.ok) throw new Error(`the business server refused a grant: ${reply.status} ${await reply.text()}`)
  return reply.json()
}

uppy.on('file-added', (file) => {
  const grant = requestGrant(file)
  grant.catch(() => {}) // reported by the pre-processor, when the upload needs it
  grants.set(file.id, grant)
})
uppy.on('file-removed', (file) => grants.delete(file.id))

uppy.addPreProcessor(async (fileIDs) => {
  await Promise.all(fileIDs.map(async (id) => {
    const { grant, endpoint } = await (grants.get(id) ?? requestGrant(uppy.getFile(id)))
    uppy.setFileState(id, { tus: { endpoint, headers: { Authorization: `Bearer ${grant}` } } })
  }))
})

// fupload calls the business server back once the file is stored; show what it said.
uppy.on('upload-success', async () => {
  const shown = document.getElementById('callback')
  for (let attempt = 0; attempt < 40; attempt++) {
    const callbacks = await (await fetch('/api/business/callbacks')).json()
    if (callbacks.length > 0) {
      shown.textContent = JSON.stringify(callbacks[callbacks.length - 1], null, 2)
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
})

// For the browser test (test.mjs) and a curious person's console.
window.uppy = uppy
