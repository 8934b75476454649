"""The host side of `image-from-s3`: fetch, verify, decompress and `docker load`, with stdlib only.

This file is shipped as text over the SSH session's stdin (or a local process's stdin) together
with a JSON job, and run by the host's ``python3``: the host needs no AWS credentials, no AWS CLI
and not this package; only short-lived presigned URLs, ``docker``, and ``zstd`` for zstd objects.
Keep it importable on Python 3.6+ and free of third-party imports.

Modes:

- ``facts``: which images and layer chains the engine has, and whether ``zstd`` is there.
- ``load``: stream the needed objects (parallel ranged GETs, bounded memory), verify each
  object's sha256 and size and each layer's diff id while streaming, decompress, and feed
  ``docker load`` a save tar. On any mismatch ``docker load`` is killed before the tar ends, so
  the engine loads nothing, and the error names the key and both checksums.

Progress goes to stderr as ``PROGRESS <bytes downloaded>`` lines; the result is one JSON line on
stdout.

Why one file of ~500 lines: it is one cohesive program that travels as a single text blob and is
exec'd by ``python3 -c`` (:data:`deploy.images.hostrun.BOOTSTRAP`), so it cannot import siblings;
splitting it would mean shipping and assembling several files on a host that has none of this
package. Each function stays small; the sections are fetching, decompression, verification, the
tar writer for ``docker load``, and the two modes.
"""

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zlib

CHUNK = 1024 * 1024
HOLDBACK = 1024 * 1024


class LoadError(Exception):
    pass


def log_progress(n):
    sys.stderr.write("PROGRESS %d\n" % n)
    sys.stderr.flush()


# ----------------------------------------------------------------------------- facts


def docker_json(args):
    proc = subprocess.run(["docker"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise LoadError("docker %s failed: %s" % (" ".join(args[:2]), proc.stderr.decode(errors="replace").strip()))
    return proc.stdout.decode()


def facts(job):
    if shutil.which("docker") is None:
        return {"ok": False, "error": "docker is not installed or not on PATH"}
    try:
        ids = docker_json(["image", "ls", "-aq", "--no-trunc"]).split()
        images = {}
        tags = {}
        if ids:
            for info in json.loads(docker_json(["image", "inspect"] + sorted(set(ids)))):
                images[info["Id"]] = (info.get("RootFS") or {}).get("Layers") or []
                for tag in info.get("RepoTags") or []:
                    tags[tag] = info["Id"]
    except LoadError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "images": images, "tags": tags, "zstd": shutil.which("zstd") is not None}


# ----------------------------------------------------------------------------- fetching


def stream_range(url, start, end, out, attempts=4):
    """GET bytes start..end into queue ``out`` piece by piece; resume from the last byte on errors."""
    pos = start
    failures = 0
    while pos <= end:
        try:
            req = urllib.request.Request(url, headers={"Range": "bytes=%d-%d" % (pos, end)})
            with urllib.request.urlopen(req, timeout=120) as resp:
                while pos <= end:
                    piece = resp.read(min(CHUNK, end - pos + 1))
                    if not piece:
                        raise LoadError("the connection ended at byte %d of %d" % (pos, end + 1))
                    out.put(piece)
                    pos += len(piece)
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404):
                raise LoadError("HTTP %d (the presigned URL expired or the object is gone)" % exc.code)
            failures += 1
            last = exc
        except (OSError, LoadError) as exc:
            failures += 1
            last = exc
        if pos <= end and failures >= attempts:
            raise LoadError("download failed after %d attempts: %s" % (attempts, last))
        if pos <= end:
            time.sleep(0.5 * failures)


def object_size(url):
    """The object's total size from a one-byte ranged GET (a presigned URL cannot HEAD)."""
    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            content_range = resp.headers.get("Content-Range", "")
            if "/" in content_range:
                return int(content_range.rsplit("/", 1)[1])
            return int(resp.headers.get("Content-Length", "0"))
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # an empty object
            return 0
        raise LoadError("HTTP %d" % exc.code)


def fetch(url, total, range_size, parallel, counter):
    """The object's bytes in order, from up to ``parallel`` ranged GETs streaming at once.

    Each range streams into a small queue (8 pieces of 1 MiB), so memory stays bounded however
    large the ranges, and ranges can be large (fewer requests).
    """
    if total == 0:
        return
    import queue

    ranges = collections.deque((start, min(total, start + range_size) - 1) for start in range(0, total, range_size))
    active = collections.deque()
    done = object()

    def worker(start, end, out):
        try:
            stream_range(url, start, end, out)
            out.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            out.put(exc)

    def launch():
        if ranges:
            start, end = ranges.popleft()
            out = queue.Queue(maxsize=8)
            thread = threading.Thread(target=worker, args=(start, end, out), daemon=True)
            thread.start()
            active.append(out)

    for _ in range(parallel):
        launch()
    while active:
        out = active[0]
        while True:
            piece = out.get()
            if piece is done:
                break
            if isinstance(piece, BaseException):
                raise piece
            counter(len(piece))
            yield piece
        active.popleft()
        launch()


# ----------------------------------------------------------------------------- decompression


def gunzip(chunks):
    decomp = zlib.decompressobj(31)
    for chunk in chunks:
        while chunk:
            out = decomp.decompress(chunk)
            if out:
                yield out
            if decomp.eof:  # multi-member gzip (parallel compressors write one member per block)
                chunk = decomp.unused_data
                decomp = zlib.decompressobj(31)
            else:
                chunk = b""
    tail = decomp.flush()
    if tail:
        yield tail


def unzstd(chunks):
    proc = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    failure = []

    def feed():
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the reading thread
            failure.append(exc)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while True:
            out = proc.stdout.read(CHUNK)
            if not out:
                break
            yield out
    finally:
        feeder.join()
        code = proc.wait()
    if failure:
        raise failure[0]
    if code != 0:
        raise LoadError("zstd could not decompress it: %s" % proc.stderr.read().decode(errors="replace").strip())


def decompress(codec, chunks):
    if codec == "zstd":
        return unzstd(chunks)
    if codec == "gzip":
        return gunzip(chunks)
    return chunks


class Verified:
    """Compressed bytes pass through here: counted and hashed, checked against the manifest at the end."""

    def __init__(self, chunks, key, sha256, size):
        self.chunks, self.key, self.sha256, self.size = chunks, key, sha256, size
        self.sha = hashlib.sha256()
        self.count = 0

    def __iter__(self):
        for chunk in self.chunks:
            self.sha.update(chunk)
            self.count += len(chunk)
            yield chunk

    def drain(self):
        """Hash whatever the consumer left unread (after a failure, to report the checksum)."""
        try:
            for _ in self:
                pass
        except (LoadError, ValueError):
            pass

    def check(self):
        if self.size is not None and self.count != self.size:
            raise LoadError("%s is truncated: %d of %d bytes" % (self.key, self.count, self.size))
        actual = self.sha.hexdigest()
        if self.sha256 and actual != self.sha256:
            raise LoadError("%s is corrupt: sha256 %s, expected %s" % (self.key, actual, self.sha256))


class ChunkReader:
    """A read(n) file object over an iterator of chunks, hashing what passes (no quadratic copies)."""

    def __init__(self, chunks):
        self.it = iter(chunks)
        self.cur = b""
        self.pos = 0
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n=-1):
        out = []
        need = n if n is not None and n >= 0 else float("inf")
        while need > 0:
            if self.pos >= len(self.cur):
                try:
                    self.cur = next(self.it)
                except StopIteration:
                    self.cur = b""
                    break
                self.pos = 0
                continue
            take = self.cur[self.pos:self.pos + need] if need != float("inf") else self.cur[self.pos:]
            self.pos += len(take)
            need -= len(take)
            out.append(take)
        data = b"".join(out)
        self.sha.update(data)
        self.count += len(data)
        return data


# ----------------------------------------------------------------------------- docker load


class Loader:
    """`docker load` fed through its stdin; killed (never finished) when anything fails."""

    def __init__(self):
        self.proc = subprocess.Popen(["docker", "load"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        self.output.append(self.proc.stdout.read())

    def write(self, data):
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            raise LoadError("docker load stopped reading: %s" % self.proc.stderr.read().decode(errors="replace").strip())
        return len(data)

    def flush(self):
        pass

    def finish(self):
        self.proc.stdin.close()
        code = self.proc.wait()
        self.reader.join()
        if code != 0:
            raise LoadError("docker load failed: %s" % self.proc.stderr.read().decode(errors="replace").strip())
        return b"".join(self.output).decode(errors="replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def inspect_id(ref):
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def tar_header(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_padding(size):
    return b"\0" * ((512 - size % 512) % 512)


def unzstd_into(loader, source, layer):
    """zstd writes the layer straight into docker load's stdin; Python only feeds and hashes the object.

    The decompressed bytes never pass through Python: the object's sha256 (checked here) and zstd's
    own frame checksum guard the content, and docker load checks each layer's diff id itself.
    """
    loader.proc.stdin.flush()
    proc = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=loader.proc.stdin.fileno(),
                            stderr=subprocess.PIPE)
    try:
        for chunk in source:
            proc.stdin.write(chunk)
        proc.stdin.close()
        code = proc.wait()
    except BaseException as exc:
        proc.kill()
        proc.wait()
        if isinstance(exc, (OSError, LoadError)):
            source.drain()
            source.check()
            raise LoadError("%s could not be unpacked: %s" % (layer["key"], exc))
        raise
    source.check()
    if code != 0:
        raise LoadError("%s could not be unpacked (zstd: %s); its sha256 %s matches the manifest, so the layer "
                        "itself is wrong: push the image again with --force"
                        % (layer["key"], proc.stderr.read().decode(errors="replace").strip(), layer["sha256"]))


def load_layers(job, loader, counter):
    """Write a docker save tar (manifest, config, the needed layers) into ``loader``.

    The tar is written by hand (headers from tarfile, data passed straight through) so each
    decompressed chunk is hashed once and written once.
    """
    for name, text in (("manifest.json", json.dumps(job["manifest"])), (job["config_name"], job["config"])):
        data = text.encode()
        loader.write(tar_header(name, len(data)) + data + tar_padding(len(data)))
    for layer in job["layers"]:
        if layer.get("skip"):
            continue
        source = Verified(fetch(layer["url"], layer["stored_size"], job["range_size"], job["parallel"], counter),
                          layer["key"], layer["sha256"], layer["stored_size"])
        loader.write(tar_header(layer["name"], layer["size"]))
        if layer["codec"] == "zstd":
            unzstd_into(loader, source, layer)
            loader.write(tar_padding(layer["size"]))
            continue
        sha = hashlib.sha256()
        count = 0
        try:
            for chunk in decompress(layer["codec"], source):
                count += len(chunk)
                if count > layer["size"]:
                    raise LoadError("it is longer than its %d bytes" % layer["size"])
                sha.update(chunk)
                loader.write(chunk)
        except (LoadError, OSError, zlib.error) as exc:
            if isinstance(exc, LoadError) and str(exc).startswith("docker load"):
                raise
            # Unpacking failed: name the object and both checksums when the object is the cause.
            source.drain()
            source.check()
            raise LoadError("%s could not be unpacked (%s); its sha256 %s matches the manifest, so the "
                            "layer itself is wrong: push the image again with --force"
                            % (layer["key"], exc, layer["sha256"]))
        source.check()
        diff_id = "sha256:" + sha.hexdigest()
        if count != layer["size"] or diff_id != layer["diff_id"]:
            raise LoadError("%s does not decompress to its layer: sha256 %s (%d bytes), expected %s (%d bytes)"
                            % (layer["key"], diff_id, count, layer["diff_id"], layer["size"]))
        loader.write(tar_padding(layer["size"]))
    loader.write(b"\0" * 1024)  # end of archive: only once every layer has been verified


class Tee:
    """Reads decompressed archive bytes for tarfile while forwarding them to docker load.

    The last HOLDBACK bytes (they hold the end-of-archive blocks) are sent only once the whole
    object has been verified, so a corrupt archive never reaches a complete `docker load`.
    """

    def __init__(self, chunks, loader):
        self.reader = ChunkReader(chunks)
        self.loader = loader
        self.tail = b""

    def read(self, n=-1):
        data = self.reader.read(n)
        self.tail += data
        if len(self.tail) > 2 * HOLDBACK:
            self.loader.write(self.tail[:-HOLDBACK])
            self.tail = self.tail[-HOLDBACK:]
        return data

    def release(self):
        self.loader.write(self.tail)
        self.tail = b""


def load_archive(job, loader, counter):
    """Stream one `docker save | gzip` style object into ``loader``; return the image it holds."""
    archive = job["archive"]
    source = Verified(fetch(archive["url"], archive["stored_size"], job["range_size"], job["parallel"], counter),
                      archive["key"], archive.get("sha256"), archive["stored_size"])
    tee = Tee(decompress(archive["codec"], source), loader)
    small = {}
    try:
        with tarfile.open(fileobj=tee, mode="r|", bufsize=CHUNK) as tar:
            for member in tar:
                if member.isfile() and member.size <= 16 * 1024 * 1024 and (
                        member.name.endswith(".json") or member.name.startswith("blobs/")):
                    handle = tar.extractfile(member)
                    small[os.path.normpath(member.name)] = handle.read()
        while tee.read(CHUNK):
            pass
    except (tarfile.TarError, LoadError, OSError, zlib.error) as exc:
        source.drain()
        source.check()
        raise LoadError("%s is not a docker save archive it can load: %s" % (archive["key"], exc))
    source.check()
    try:
        manifest = json.loads(small["manifest.json"])[0]
        config = small[os.path.normpath(manifest["Config"])]
    except (KeyError, ValueError, IndexError) as exc:
        raise LoadError("%s holds no docker save manifest.json (%s)" % (archive["key"], exc))
    tee.release()
    return "sha256:" + hashlib.sha256(config).hexdigest(), manifest.get("RepoTags") or []


def load(job):
    downloaded = [0]

    def counter(n):
        downloaded[0] += n
        log_progress(n)

    # Refuse a truncated or swapped object before docker load starts.
    objects = [job["archive"]] if job["kind"] == "archive" else [l for l in job["layers"] if not l.get("skip")]
    for obj in objects:
        actual = object_size(obj["url"])
        if obj.get("stored_size") is not None and actual != obj["stored_size"]:
            raise LoadError("%s is truncated or replaced: %d bytes in the bucket, expected %d"
                            % (obj["key"], actual, obj["stored_size"]))
        obj["stored_size"] = actual
        if obj.get("codec") == "zstd" and shutil.which("zstd") is None:
            raise LoadError("zstd is not installed on this host (apt-get install zstd), and %s needs it"
                            % obj["key"])
    started = time.time()
    loader = Loader()
    try:
        if job["kind"] == "archive":
            expected, repo_tags = load_archive(job, loader, counter)
            expected = job.get("image_id") or expected
        else:
            load_layers(job, loader, counter)
            expected, repo_tags = job["image_id"], [job["tag"]]
        output = loader.finish()
    except BaseException:
        loader.kill()
        raise
    loaded = inspect_id(repo_tags[0]) if repo_tags else inspect_id(expected)
    if loaded != expected:
        raise LoadError("docker load gave image %s, but the bucket says %s" % (loaded, expected))
    return {"ok": True, "image_id": loaded, "repo_tags": repo_tags, "downloaded": downloaded[0],
            "seconds": time.time() - started, "output": output.strip()}


def main(job):
    try:
        result = facts(job) if job["mode"] == "facts" else load(job)
    except LoadError as exc:
        result = {"ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(json.loads(sys.stdin.read()))
