"""tuspy against fupload: an upload with sha1 Upload-Checksum on every chunk, and an upload whose
server is killed with SIGKILL mid-upload, restarted on the same config and database, and resumed
by a new tuspy Uploader from its URL storage. Each callback is received here and its signature
checked; the stored file's md5 is compared with the local file's.

This script runs the server itself, so that it can kill and restart it:

    FUPLOAD_BIN=target/debug/fupload-server FUPLOAD_CONFIG=fupload.yml FUPLOAD_URL=http://127.0.0.1:PORT \
    CALLBACK_PORT=PORT FUPLOAD_PIDFILE=server.pid [FUPLOAD_LOG=server.log] [FUPLOAD_TOKEN=cp1-secret] \
    python test_tuspy.py

FUPLOAD_PIDFILE holds the running server's pid, so that a wrapper can stop it if this script dies;
the server's log is appended to FUPLOAD_LOG if set.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage import filestorage

BASE = os.environ["FUPLOAD_URL"]
TOKEN = os.environ.get("FUPLOAD_TOKEN", "cp1-secret")
CALLBACK_PORT = int(os.environ["CALLBACK_PORT"])
MIB = 1024 * 1024

callbacks = {}
callbacks_changed = threading.Condition()


class CallbackReceiver(http.server.BaseHTTPRequestHandler):
    """Keeps every callback whose X-Fupload-Signature is the token's HMAC of the body."""

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        expected = "sha256=" + hmac.new(TOKEN.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get("x-fupload-signature", ""), expected):
            self.send_response(401)
            self.end_headers()
            return
        body = json.loads(raw)
        with callbacks_changed:
            callbacks[body["fileName"]] = body
            callbacks_changed.notify_all()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"retCode":"0"}')

    def log_message(self, *args):
        pass


def callback_for(file_name, timeout=60):
    with callbacks_changed:
        if not callbacks_changed.wait_for(lambda: file_name in callbacks, timeout):
            raise AssertionError(f"no signed callback for {file_name} within {timeout} s")
        return callbacks[file_name]


class Server:
    """The fupload process, started, killed with SIGKILL and started again on the same config."""

    def __init__(self):
        self.process = None
        self.log = open(os.environ.get("FUPLOAD_LOG", os.devnull), "ab")

    def start(self):
        self.process = subprocess.Popen(
            [os.environ["FUPLOAD_BIN"], "-c", os.environ["FUPLOAD_CONFIG"]], stderr=self.log
        )
        with open(os.environ["FUPLOAD_PIDFILE"], "w") as pidfile:
            pidfile.write(str(self.process.pid))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(BASE + "/healthz", timeout=1)
                return
            except OSError:
                assert self.process.poll() is None, "fupload exited while starting"
                assert time.monotonic() < deadline, "fupload did not answer /healthz within 30 s"
                time.sleep(0.05)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.reaped()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.reaped()

    def reaped(self):
        # The pid file names only a running server: a wrapper must never signal a reused pid.
        self.process.wait(timeout=30)
        os.remove(os.environ["FUPLOAD_PIDFILE"])


def random_file(name, size):
    path = os.path.join(WORK, name)
    md5 = hashlib.md5()
    with open(path, "wb") as out:
        for done in range(0, size, 4 * MIB):
            piece = os.urandom(min(4 * MIB, size - done))
            md5.update(piece)
            out.write(piece)
    return path, size, md5.hexdigest()


def md5_of_file(path):
    md5 = hashlib.md5()
    with open(path, "rb") as stored:
        for piece in iter(lambda: stored.read(MIB), b""):
            md5.update(piece)
    return md5.hexdigest()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def grant(file_name, file_size, feed_back_parameter):
    """A grant as docs/API.md §9.3 defines it, made here independently of the Rust code."""
    claims = {
        "userId": "43",
        "fileName": file_name,
        "fileSize": file_size,
        "fileMd5": None,
        "storePath": "clients/tuspy/",
        "feedBackParameter": feed_back_parameter,
        "expiresAt": int(time.time()) + 600,
        "grantId": secrets.token_hex(16),
    }
    encoded = b64url(json.dumps(claims).encode())
    signature = hmac.new(TOKEN.encode(), f"fupload-grant-v1.{encoded}".encode(), hashlib.sha256).digest()
    return f"{encoded}.{b64url(signature)}"


def server_offset(url):
    request = urllib.request.Request(url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return int(reply.headers["upload-offset"])


def check_finished(name, size, md5, feed_back_parameter):
    callback = callback_for(name)
    assert callback["retCode"] == "0", callback
    assert callback["protocol"] == "tus", callback
    assert callback["userId"] == "43", callback
    assert callback["fileMd5"] == md5, callback
    assert int(callback["fileSize"]) == size, callback
    assert callback["data"] == feed_back_parameter, callback
    assert md5_of_file(callback["storePath"]) == md5, f"stored file {callback['storePath']}"
    # Checked: both copies go, so the disk holds one case's files at a time.
    os.remove(callback["storePath"])
    os.remove(os.path.join(WORK, name))


def upload_with_checksums(server):
    """Every PATCH carries tuspy's sha1 Upload-Checksum, which the server checks."""
    name, size = "checksums.bin", 16 * MIB
    path, size, md5 = random_file(name, size)
    feedback = {"case": name}
    tus = tus_client.TusClient(BASE + "/api/upload/tus", headers={"Authorization": "Bearer " + grant(name, size, feedback)})
    uploader = tus.uploader(path, chunk_size=4 * MIB, upload_checksum=True)
    uploader.upload()
    assert uploader.offset == size
    check_finished(name, size, md5, feedback)


def resume_after_sigkill(server):
    """The server is killed with SIGKILL while tuspy uploads; after the restart a new Uploader
    finds the URL in its storage and goes on from the server's offset, which keeps every chunk
    the server had acknowledged."""
    name, size = "sigkill.bin", 32 * MIB
    path, size, md5 = random_file(name, size)
    feedback = {"case": name}
    storage = filestorage.FileStorage(os.path.join(WORK, "tuspy-urls.json"))
    tus = tus_client.TusClient(BASE + "/api/upload/tus", headers={"Authorization": "Bearer " + grant(name, size, feedback)})
    first = tus.uploader(path, chunk_size=MIB, upload_checksum=True, store_url=True, url_storage=storage)
    failure = []

    def upload():
        try:
            first.upload()
        except TusCommunicationError as error:
            failure.append(error)

    uploading = threading.Thread(target=upload)
    uploading.start()
    deadline = time.monotonic() + 60
    while first.url is None or server_offset(first.url) < size * 0.4:
        assert uploading.is_alive(), "the upload ended before the server was killed"
        assert time.monotonic() < deadline, "the upload did not reach 40% within 60 s"
        time.sleep(0.01)
    server.kill()
    uploading.join(timeout=30)
    assert not uploading.is_alive() and failure, "tuspy saw the connection fail"
    acknowledged = first.offset
    assert 0 < acknowledged < size, acknowledged

    server.start()
    kept = server_offset(first.url)
    assert kept >= acknowledged, f"the server lost acknowledged bytes: offset {kept} < {acknowledged}"
    second = tus.uploader(path, chunk_size=MIB, upload_checksum=True, store_url=True, url_storage=storage)
    assert second.url == first.url and second.offset == kept, (second.url, second.offset)
    second.upload()
    assert second.offset == size
    print(f"# sigkill: {size // MIB} MiB, killed with {acknowledged} bytes acknowledged, resumed at {kept}")
    check_finished(name, size, md5, feedback)


def main():
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", CALLBACK_PORT), CallbackReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    server = Server()
    passed = failed = 0
    try:
        server.start()
        for case in (upload_with_checksums, resume_after_sigkill):
            started = time.monotonic()
            try:
                case(server)
                passed += 1
                print(f"ok - {case.__name__} ({time.monotonic() - started:.1f} s)")
            except Exception:
                failed += 1
                print(f"not ok - {case.__name__}")
                traceback.print_exc()
    finally:
        server.stop()
        receiver.shutdown()
    print(f"tuspy: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="fupload-tuspy-") as WORK:
        sys.exit(main())
