// tus-js-client against a running fupload: tus 1.0 interrupted and resumed, parallel uploads
// (concatenation), the IETF draft at tus-js-client's two interop versions, and a business-server
// task resumed through its tusUrl. Each upload's callback is received here, its signature checked,
// and the stored file's md5 compared with the local file's.
//
//   FUPLOAD_URL=http://127.0.0.1:PORT CALLBACK_PORT=PORT [FUPLOAD_TOKEN=cp1-secret] node --test test.mjs
//
// CALLBACK_PORT is the port of the config's bServer notifyUrl (http://127.0.0.1:PORT/callback).
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { FileUrlStorage, Upload } from 'tus-js-client';

const base = process.env.FUPLOAD_URL;
const token = process.env.FUPLOAD_TOKEN ?? 'cp1-secret';
const callbackPort = Number(process.env.CALLBACK_PORT);
assert.ok(base, 'FUPLOAD_URL must name the running fupload');
assert.ok(callbackPort > 0, 'CALLBACK_PORT must be the port of the notifyUrl');

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
const work = mkdtempSync(join(tmpdir(), 'fupload-tus-js-'));

// The callback receiver: every signed callback, by file name (each case uploads its own name).
const callbacks = new Map();
const waiters = [];
const receiver = createServer((req, res) => {
  const parts = [];
  req.on('data', (part) => parts.push(part));
  req.on('end', () => {
    const raw = Buffer.concat(parts);
    const expected = `sha256=${createHmac('sha256', token).update(raw).digest('hex')}`;
    const sent = String(req.headers['x-fupload-signature'] ?? '');
    const signed = sent.length === expected.length && timingSafeEqual(Buffer.from(sent), Buffer.from(expected));
    if (!signed) {
      res.writeHead(401).end();
      return;
    }
    const body = JSON.parse(raw.toString('utf8'));
    callbacks.set(body.fileName, body);
    waiters.splice(0).forEach((wake) => wake());
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"retCode":"0"}');
  });
});

async function callbackFor(fileName, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!callbacks.has(fileName)) {
    const left = deadline - Date.now();
    assert.ok(left > 0, `no signed callback for ${fileName} within ${timeoutMs} ms`);
    await new Promise((wake) => {
      const timer = setTimeout(wake, left);
      waiters.push(() => {
        clearTimeout(timer);
        wake();
      });
    });
  }
  return callbacks.get(fileName);
}

before(() => new Promise((resolve) => receiver.listen(callbackPort, '127.0.0.1', resolve)));
after(() => {
  receiver.close();
  rmSync(work, { recursive: true, force: true });
});

/** A file of `size` random bytes in the temp dir, and its md5. */
function randomFile(name, size) {
  const path = join(work, name);
  const md5 = createHash('md5');
  const piece = 4 * MiB;
  writeFileSync(path, '');
  for (let done = 0; done < size; done += piece) {
    const bytes = randomBytes(Math.min(piece, size - done));
    md5.update(bytes);
    writeFileSync(path, bytes, { flag: 'a' });
  }
  return { path, size, md5: md5.digest('hex') };
}

async function md5OfFile(path) {
  const md5 = createHash('md5');
  const handle = await open(path);
  try {
    for await (const piece of handle.createReadStream()) md5.update(piece);
  } finally {
    await handle.close();
  }
  return md5.digest('hex');
}

/** A grant as docs/API.md §9.3 defines it, made here independently of the Rust code. */
function grant({ fileName, fileSize, fileMd5 = null, feedBackParameter }) {
  const claims = {
    userId: '42',
    fileName,
    fileSize,
    fileMd5,
    storePath: 'clients/tus-js/',
    feedBackParameter,
    expiresAt: Math.floor(Date.now() / 1000) + 600,
    grantId: randomBytes(16).toString('hex'),
  };
  const encoded = Buffer.from(JSON.stringify(claims)).toString('base64url');
  const signature = createHmac('sha256', token).update(`fupload-grant-v1.${encoded}`).digest('base64url');
  return `${encoded}.${signature}`;
}

/** The request headers that select the protocol, as tus-js-client sends them. */
function protocolHeaders(protocol) {
  if (protocol === 'ietf-draft-03') return { 'Upload-Draft-Interop-Version': '5' };
  if (protocol === 'ietf-draft-05') return { 'Upload-Draft-Interop-Version': '6' };
  return { 'Tus-Resumable': '1.0.0' };
}

/** The server's offset of the upload at `url` (a HEAD, as a client would send it). */
async function serverOffset(url, protocol) {
  const reply = await fetch(url, { method: 'HEAD', headers: protocolHeaders(protocol) });
  assert.ok(reply.status === 200 || reply.status === 204, `HEAD ${url}: ${reply.status}`);
  return Number(reply.headers.get('upload-offset'));
}

/**
 * Runs one tus-js-client Upload of `file`. With `abortAt` (a fraction of the size) it calls
 * `upload.abort()` once that much was sent and resolves then; with `resume` it first looks the
 * upload up in the URL storage; with `buffer` it uploads the file's bytes as a Buffer, not a
 * stream of the file. Resolves with the upload's URL (none for a parallel upload cut
 * before its final creation) and the first progress it reported.
 */
function runUpload(file, options, { abortAt = null, resume = false, buffer = false } = {}) {
  return new Promise((resolve, reject) => {
    let firstProgress = null;
    let aborted = false;
    const upload = new Upload(buffer ? readFileSync(file.path) : createReadStream(file.path), {
      chunkSize: CHUNK,
      retryDelays: [0, 500, 1000, 2000],
      ...options,
      onProgress(sent, total) {
        firstProgress ??= sent;
        if (abortAt !== null && !aborted && sent >= total * abortAt) {
          aborted = true;
          upload.abort().then(() => resolve({ aborted, url: upload.url, firstProgress }));
        }
      },
      onSuccess() {
        resolve({ aborted, url: upload.url, firstProgress });
      },
      onError: reject,
    });
    const started = resume
      ? upload.findPreviousUploads().then((previous) => {
          assert.equal(previous.length, 1, 'the interrupted upload is in the URL storage');
          upload.resumeFromPreviousUpload(previous[0]);
        })
      : Promise.resolve();
    started.then(() => upload.start(), reject);
  });
}

/** The callback of `file` (uploaded as `fileName`) says it finished, and the stored file is the same. */
async function checkFinished(file, fileName, protocol, feedBackParameter) {
  const callback = await callbackFor(fileName);
  assert.equal(callback.retCode, '0', JSON.stringify(callback));
  assert.equal(callback.protocol, protocol);
  assert.equal(callback.userId, '42');
  assert.equal(callback.fileMd5, file.md5);
  assert.equal(Number(callback.fileSize), file.size);
  assert.deepEqual(callback.data, feedBackParameter);
  assert.equal(await md5OfFile(callback.storePath), file.md5, `stored file ${callback.storePath}`);
  // Checked: both copies go, so the disk holds one case's files at a time.
  rmSync(callback.storePath);
  rmSync(file.path);
}

/** An upload interrupted at `abortAt` and resumed by a second Upload through the URL storage. */
async function interruptedAndResumed(t, { protocol, name, size, abortAt, fileMd5 }) {
  const file = randomFile(name, size);
  const feedBackParameter = { case: name };
  const options = {
    endpoint: `${base}/api/upload/tus`,
    protocol,
    headers: { Authorization: `Bearer ${grant({ fileName: name, fileSize: size, fileMd5: fileMd5 ? file.md5 : null, feedBackParameter })}` },
    urlStorage: new FileUrlStorage(join(work, `${name}.urls.json`)),
  };
  const first = await runUpload(file, options, { abortAt });
  assert.ok(first.aborted && first.url, 'the first Upload was interrupted after its creation');
  const offset = await serverOffset(first.url, protocol);
  assert.ok(offset > 0 && offset < size, `the server kept part of the upload: offset ${offset}`);
  const second = await runUpload(file, options, { resume: true });
  assert.equal(second.url, first.url, 'the second Upload resumed the same upload URL');
  assert.ok(second.firstProgress >= offset, `resumed at ${second.firstProgress}, not from 0`);
  t.diagnostic(`${protocol}: ${size / MiB} MiB, interrupted at offset ${offset}, resumed at ${second.firstProgress}`);
  await checkFinished(file, name, protocol.startsWith('ietf') ? 'ietf' : 'tus', feedBackParameter);
}

test('tus-v1: 64 MiB interrupted at ~30% and resumed from the URL storage', (t) =>
  interruptedAndResumed(t, { protocol: 'tus-v1', name: 'tus-v1.bin', size: 64 * MiB, abortAt: 0.3, fileMd5: true }));

test('tus-v1: parallelUploads 4 (concatenation), 64 MiB, interrupted and resumed', async (t) => {
  const name = 'parallel.bin';
  const size = 64 * MiB;
  const file = randomFile(name, size);
  const feedBackParameter = { case: name };
  const options = {
    endpoint: `${base}/api/upload/tus`,
    parallelUploads: 4,
    headers: { Authorization: `Bearer ${grant({ fileName: name, fileSize: size, feedBackParameter })}` },
    urlStorage: new FileUrlStorage(join(work, `${name}.urls.json`)),
  };
  const first = await runUpload(file, options, { abortAt: 0.4 });
  const [stored] = await options.urlStorage.findAllUploads();
  assert.ok(first.aborted && stored?.parallelUploadUrls?.length === 4, 'the first Upload made its 4 partial uploads');
  const offsets = await Promise.all(stored.parallelUploadUrls.map((url) => serverOffset(url, 'tus-v1')));
  const kept = offsets.reduce((sum, offset) => sum + offset, 0);
  assert.ok(kept > 0 && kept < size, `the server kept part of the partial uploads: ${offsets}`);
  await runUpload(file, options, { resume: true });
  t.diagnostic(`parallel: ${size / MiB} MiB in 4 partials, interrupted with offsets ${offsets}`);
  await checkFinished(file, name, 'tus', feedBackParameter);
});

test('ietf-draft-03 (interop version 5): 64 MiB interrupted and resumed', (t) =>
  interruptedAndResumed(t, { protocol: 'ietf-draft-03', name: 'ietf-03.bin', size: 64 * MiB, abortAt: 0.4 }));

test('ietf-draft-05 (interop version 6): 64 MiB interrupted and resumed', (t) =>
  interruptedAndResumed(t, { protocol: 'ietf-draft-05', name: 'ietf-05.bin', size: 64 * MiB, abortAt: 0.4, fileMd5: true }));

test('a business-server task resumed through its tusUrl (uploadUrl), 64 MiB, interrupted and resumed', async (t) => {
  const name = 'task.bin';
  const size = 64 * MiB;
  const file = randomFile(name, size);
  const feedBackParameter = { case: name, from: 'new/task' };
  const reply = await fetch(`${base}/api/upload/new/task`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      token,
      userId: '42',
      storePath: 'clients/tus-js/',
      fileName: name,
      fileSize: size,
      fileMd5: file.md5,
      feedBackParameter,
    }),
  });
  const created = await reply.json();
  assert.equal(created.retCode, '0', JSON.stringify(created));
  const tusUrl = created.data.tusUrl;
  assert.match(tusUrl, new RegExp(`/api/upload/tus/${created.data.taskId}\\?key=`));
  const options = { uploadUrl: tusUrl };
  const first = await runUpload(file, options, { abortAt: 0.4 });
  assert.ok(first.aborted);
  const offset = await serverOffset(tusUrl, 'tus-v1');
  assert.ok(offset > 0 && offset < size, `the server kept part of the upload: offset ${offset}`);
  const second = await runUpload(file, options);
  assert.ok(second.firstProgress >= offset, `resumed at ${second.firstProgress}, not from 0`);
  t.diagnostic(`task ${created.data.taskId}: ${size / MiB} MiB, interrupted at offset ${offset}, resumed at ${second.firstProgress}`);
  await checkFinished(file, name, 'tus', feedBackParameter);
});

test('tus-v1 and the IETF drafts: creation-with-upload and a deferred length, 16 MiB each', async (t) => {
  // A deferred length is uploaded from a Buffer: tus-js-client's source for a file stream gives
  // every slice past the end the chunk's length, so it never sees the end (clients/README.md).
  const cases = [
    { protocol: 'tus-v1', uploadDataDuringCreation: true },
    { protocol: 'tus-v1', uploadLengthDeferred: true },
    { protocol: 'ietf-draft-03', uploadDataDuringCreation: true },
    { protocol: 'ietf-draft-05', uploadLengthDeferred: true },
  ];
  for (const { protocol, ...extension } of cases) {
    const name = `${protocol}-${Object.keys(extension)[0]}.bin`;
    const file = randomFile(name, 16 * MiB);
    const feedBackParameter = { case: name };
    const fileSize = extension.uploadLengthDeferred ? null : file.size;
    await runUpload(
      file,
      {
        endpoint: `${base}/api/upload/tus`,
        protocol,
        ...extension,
        headers: { Authorization: `Bearer ${grant({ fileName: name, fileSize, feedBackParameter })}` },
      },
      { buffer: Boolean(extension.uploadLengthDeferred) },
    );
    await checkFinished(file, name, protocol.startsWith('ietf') ? 'ietf' : 'tus', feedBackParameter);
    t.diagnostic(`${name}: finished`);
  }
});
