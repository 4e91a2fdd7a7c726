#!/usr/bin/env python3
"""Drives real S3 clients against a running VaultFS S3 listener (called by tests/s3.rs).

Usage: clients.py CHECK   with CHECK one of: aws, boto3, rclone, s3cmd, minio, denied,
revoked, tls, commit.

Environment:
  S3_ENDPOINT            http://127.0.0.1:PORT or https://localhost:PORT
  S3_CA                  CA bundle for https (the throwaway certificate), optional
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   a read,write token's key pair
  S3_PREFIXED_KEY / S3_PREFIXED_SECRET        (denied) a token limited to shared/allowed/
  S3_BIN                 the virtualenv's bin directory
  S3_WORK                a scratch directory
  S3_TAG                 a suffix making bucket names unique per run
  S3_NATIVE / S3_TOKEN   (commit) the native API's base URL and a bearer token for it

Every check raises (non-zero exit) on the first failure and prints what it verified.
"""

import base64
import filecmp
import hashlib
import io
import zlib
import json
import os
import random
import subprocess
import sys
import urllib.parse
import urllib.request
import ssl

ENDPOINT = os.environ["S3_ENDPOINT"]
CA = os.environ.get("S3_CA") or None
KEY = os.environ["AWS_ACCESS_KEY_ID"]
SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]
BIN = os.environ["S3_BIN"]
WORK = os.environ["S3_WORK"]
TAG = os.environ.get("S3_TAG", "t")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
if CA:
    os.environ["AWS_CA_BUNDLE"] = CA


def log(msg):
    print(msg, flush=True)


def run(args, ok=True, env=None, capture=True):
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    p = subprocess.run(args, capture_output=capture, text=True, env=full_env, timeout=600)
    if ok and p.returncode != 0:
        raise SystemExit(f"FAILED ({p.returncode}): {' '.join(args)}\n{p.stdout}\n{p.stderr}")
    if not ok and p.returncode == 0:
        raise SystemExit(f"expected failure but succeeded: {' '.join(args)}\n{p.stdout}")
    return p


def data(n, seed):
    rnd = random.Random(seed)
    return rnd.randbytes(n)


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def same_trees(a, b):
    for root, _dirs, files in os.walk(a):
        for name in files:
            pa = os.path.join(root, name)
            pb = os.path.join(b, os.path.relpath(pa, a))
            if not os.path.exists(pb) or not filecmp.cmp(pa, pb, shallow=False):
                raise SystemExit(f"tree differs at {os.path.relpath(pa, a)}")
    na = sum(len(f) for _, _, f in os.walk(a))
    nb = sum(len(f) for _, _, f in os.walk(b))
    if na != nb:
        raise SystemExit(f"tree sizes differ: {na} vs {nb}")


def make_tree(root, n, seed):
    for i in range(n):
        sub = f"d{i % 7}/e{i % 3}" if i % 2 else f"d{i % 5}"
        write(os.path.join(root, sub, f"file-{i:03}.bin"), data(100 + (i * 37) % 5000, seed + i))


def aws(*args, ok=True):
    cmd = [f"{BIN}/aws", "--endpoint-url", ENDPOINT, "--output", "json", *args]
    if args[0] == "s3" and args[1] in ("cp", "sync", "mv"):
        cmd.append("--no-progress")
    return run(cmd, ok=ok)


def check_aws():
    b = f"aws-{TAG}"
    w = os.path.join(WORK, "aws")
    os.makedirs(w, exist_ok=True)
    aws("s3", "mb", f"s3://{b}")
    ls = aws("s3", "ls").stdout
    assert b in ls, ls
    small = os.path.join(w, "small.txt")
    write(small, b"hello from aws s3 cp\n")
    big = os.path.join(w, "big.bin")
    write(big, data(64 * 1024 * 1024, 1))
    aws("s3", "cp", small, f"s3://{b}/one/small.txt")
    aws("s3", "cp", big, f"s3://{b}/one/big.bin")
    aws("s3", "cp", f"s3://{b}/one/small.txt", small + ".back")
    aws("s3", "cp", f"s3://{b}/one/big.bin", big + ".back")
    assert filecmp.cmp(small, small + ".back", shallow=False)
    assert filecmp.cmp(big, big + ".back", shallow=False)
    head = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "one/big.bin").stdout)
    assert head["ETag"].strip('"').endswith("-8"), head  # 64 MiB in 8 MiB parts
    head = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "one/small.txt").stdout)
    assert head["ETag"].strip('"') == hashlib.md5(open(small, "rb").read()).hexdigest(), head
    log("aws: cp small + 64 MiB multipart, byte-exact, MD5 and multipart ETags")

    tree = os.path.join(w, "tree")
    make_tree(tree, 200, 100)
    aws("s3", "sync", tree, f"s3://{b}/tree")
    down = os.path.join(w, "down")
    aws("s3", "sync", f"s3://{b}/tree", down)
    same_trees(tree, down)
    # A second sync has nothing to do.
    again = aws("s3", "sync", tree, f"s3://{b}/tree").stdout
    assert "upload:" not in again, again
    log("aws: sync of 200 files up and down, byte-exact; re-sync uploads nothing")

    listing = aws("s3", "ls", "--recursive", "--page-size", "7", f"s3://{b}/tree/").stdout
    lines = [l for l in listing.splitlines() if l.strip()]
    assert len(lines) == 200, len(lines)
    pages = json.loads(aws("s3api", "list-objects-v2", "--bucket", b, "--prefix", "tree/",
                           "--delimiter", "/", "--max-items", "1000").stdout)
    prefixes = sorted(p["Prefix"] for p in pages.get("CommonPrefixes", []))
    assert prefixes == [f"tree/d{i}/" for i in range(7)], prefixes
    v1 = json.loads(run([f"{BIN}/aws", "--endpoint-url", ENDPOINT, "--output", "json", "s3api",
                         "list-objects", "--bucket", b, "--prefix", "tree/", "--page-size", "9"]).stdout)
    assert len(v1["Contents"]) == 200, len(v1["Contents"])
    log("aws: ls with pagination (page size 7), v2 delimiter, v1 marker pagination")

    # Conditional puts.
    aws("s3api", "put-object", "--bucket", b, "--key", "cond.txt", "--body", small, "--if-none-match", "*")
    p = aws("s3api", "put-object", "--bucket", b, "--key", "cond.txt", "--body", small, "--if-none-match", "*", ok=False)
    assert "PreconditionFailed" in p.stderr, p.stderr
    etag = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "cond.txt").stdout)["ETag"]
    aws("s3api", "put-object", "--bucket", b, "--key", "cond.txt", "--body", big + ".back", "--if-match", etag)
    p = aws("s3api", "put-object", "--bucket", b, "--key", "cond.txt", "--body", small, "--if-match", etag, ok=False)
    assert "PreconditionFailed" in p.stderr, p.stderr
    log("aws: s3api conditional puts (If-None-Match: *, If-Match) accept and refuse")

    # Copies.
    aws("s3api", "copy-object", "--bucket", b, "--key", "copy.txt", "--copy-source", f"{b}/one/small.txt")
    h1 = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "copy.txt").stdout)
    assert h1["ETag"] == head["ETag"], (h1, head)
    aws("s3api", "copy-object", "--bucket", b, "--key", "copy.txt", "--copy-source", f"{b}/copy.txt",
        "--metadata-directive", "REPLACE", "--metadata", "mtime=1234567890", "--content-type", "text/plain")
    h2 = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "copy.txt").stdout)
    assert h2["Metadata"].get("mtime") == "1234567890", h2
    assert h2["ContentType"] == "text/plain", h2
    p = aws("s3api", "copy-object", "--bucket", b, "--key", "copy2.txt", "--copy-source", f"{b}/copy.txt",
            "--copy-source-if-match", '"0000"', ok=False)
    assert "PreconditionFailed" in p.stderr, p.stderr
    p = aws("s3api", "get-object", "--bucket", b, "--key", "nope", os.path.join(w, "nope"), ok=False)
    assert "NoSuchKey" in p.stderr, p.stderr
    p = aws("s3api", "delete-bucket", "--bucket", b, ok=False)
    assert "BucketNotEmpty" in p.stderr, p.stderr
    log("aws: s3api copy, self-copy with REPLACE, copy precondition, NoSuchKey, BucketNotEmpty")

    aws("s3", "rm", "--recursive", f"s3://{b}/tree")
    left = aws("s3", "ls", "--recursive", f"s3://{b}/tree/", ok=False)
    assert left.stdout.strip() == "", left.stdout
    aws("s3", "rm", "--recursive", f"s3://{b}")
    aws("s3", "rb", f"s3://{b}")
    log("aws: rm --recursive, rb")


def boto_client(key=KEY, secret=SECRET):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        verify=CA if CA else None,
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))


def urlopen(req):
    ctx = ssl.create_default_context(cafile=CA) if CA else None
    return urllib.request.urlopen(req, context=ctx, timeout=60)


def check_boto3():
    from botocore.exceptions import ClientError
    s3 = boto_client()
    b = f"boto-{TAG}"
    s3.create_bucket(Bucket=b)
    s3.head_bucket(Bucket=b)
    # Presigned PUT and GET with plain urllib.
    body = data(300_000, 7)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "pre/signed.bin"}, ExpiresIn=600)
    with urlopen(urllib.request.Request(url, data=body, method="PUT")) as r:
        assert r.status == 200, r.status
    url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "pre/signed.bin"}, ExpiresIn=600)
    with urlopen(url) as r:
        assert r.read() == body
    sig = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["X-Amz-Signature"][0]
    bad = url.replace(sig, ("1" if sig[0] == "0" else "0") + sig[1:])
    try:
        urlopen(bad)
        raise SystemExit("a tampered presigned URL was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    log("boto3: presigned PUT and GET with urllib; a tampered signature is refused (403)")

    # Names with spaces and unicode, listed with EncodingType=url.
    names = ["dir with space/ünïcødé + plus.txt", "dir with space/a&b=c?.txt", "日本/ファイル.txt"]
    for i, n in enumerate(names):
        s3.put_object(Bucket=b, Key=n, Body=data(10 + i, i))
    got = s3.list_objects_v2(Bucket=b, EncodingType="url")
    keys = [urllib.parse.unquote_plus(o["Key"]) for o in got["Contents"]]
    for n in names:
        assert n in keys, (n, keys)
    auto = [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]]
    for n in names:
        assert n in auto, (n, auto)
    for i, n in enumerate(names):
        assert s3.get_object(Bucket=b, Key=n)["Body"].read() == data(10 + i, i)
    log("boto3: names with spaces, '+', '&' and unicode round-trip; list_objects_v2 EncodingType=url")

    # Checksums: CRC32 sent by default is verified and stored; a wrong one is BadDigest.
    r = s3.put_object(Bucket=b, Key="sum.bin", Body=body, ChecksumAlgorithm="CRC32")
    crc = r.get("ChecksumCRC32")
    assert crc, r
    h = s3.head_object(Bucket=b, Key="sum.bin", ChecksumMode="ENABLED")
    assert h.get("ChecksumCRC32") == crc, h
    wrong = {"ChecksumCRC32": "AAAAAA==", "ChecksumCRC32C": "AAAAAA==",
             "ChecksumCRC64NVME": "AAAAAAAAAAA=", "ChecksumSHA1": "A" * 27 + "=",
             "ChecksumSHA256": "A" * 43 + "=", "ContentMD5": "A" * 22 + "=="}
    for name, value in wrong.items():
        try:
            s3.put_object(Bucket=b, Key="bad.bin", Body=b"abc", **{name: value})
            raise SystemExit(f"a wrong {name} was accepted")
        except ClientError as e:
            assert e.response["Error"]["Code"] == "BadDigest", (name, e.response)
    assert s3.list_objects_v2(Bucket=b, Prefix="bad.bin")["KeyCount"] == 0
    r = s3.put_object(Bucket=b, Key="sha.bin", Body=body, ChecksumAlgorithm="SHA256")
    assert r["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode(), r
    # A streamed body: over HTTPS botocore sends it aws-chunked with the CRC32 in a trailer.
    want = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    r = s3.put_object(Bucket=b, Key="trailer.bin", Body=io.BytesIO(body), ChecksumAlgorithm="CRC32")
    assert r["ChecksumCRC32"] == want, (r, want)
    h = s3.head_object(Bucket=b, Key="trailer.bin", ChecksumMode="ENABLED")
    assert h["ChecksumCRC32"] == want, h
    log("boto3: CRC32/SHA256 (also as a trailer) verified, stored, returned with ChecksumMode; "
        "a wrong CRC32, CRC32C, CRC64NVME, SHA1, SHA256 or Content-MD5 is BadDigest, nothing stored")

    # Range, conditions, response overrides.
    g = s3.get_object(Bucket=b, Key="sum.bin", Range="bytes=10-19")
    assert g["Body"].read() == body[10:20] and g["ContentRange"] == f"bytes 10-19/{len(body)}"
    etag = g["ETag"]
    try:
        s3.get_object(Bucket=b, Key="sum.bin", IfNoneMatch=etag)
        raise SystemExit("If-None-Match did not answer 304")
    except ClientError as e:
        assert e.response["Error"]["Code"] in ("304", "NotModified"), e.response
    g = s3.get_object(Bucket=b, Key="sum.bin", ResponseContentType="text/x-test",
                      ResponseContentDisposition="attachment; filename=x")
    assert g["ContentType"] == "text/x-test" and g["ContentDisposition"] == "attachment; filename=x", g
    s3.put_object(Bucket=b, Key="meta.txt", Body=b"m", Metadata={"colour": "blue"},
                  ContentType="text/plain", CacheControl="max-age=60", ContentDisposition="inline")
    h = s3.head_object(Bucket=b, Key="meta.txt")
    assert h["Metadata"] == {"colour": "blue"} and h["CacheControl"] == "max-age=60", h
    assert h["ContentType"] == "text/plain" and h["ContentDisposition"] == "inline", h
    log("boto3: Range, If-None-Match 304, response-* overrides, user metadata and stored headers")

    # Multipart with parts out of order, parallel-style, ListParts, ListMultipartUploads.
    up = s3.create_multipart_upload(Bucket=b, Key="mpu.bin")["UploadId"]
    p1, p2 = data(5 * 1024 * 1024, 11), data(1234, 12)
    e2 = s3.upload_part(Bucket=b, Key="mpu.bin", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    e1 = s3.upload_part(Bucket=b, Key="mpu.bin", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    parts = s3.list_parts(Bucket=b, Key="mpu.bin", UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2], parts
    ups = s3.list_multipart_uploads(Bucket=b).get("Uploads", [])
    assert any(u["UploadId"] == up for u in ups), ups
    try:
        s3.head_object(Bucket=b, Key="mpu.bin")
        raise SystemExit("a multipart object was visible before Complete")
    except ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
    try:
        s3.complete_multipart_upload(Bucket=b, Key="mpu.bin", UploadId=up, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"00000000000000000000000000000000"'}]})
        raise SystemExit("a wrong part ETag was accepted")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidPart", e.response
    r = s3.complete_multipart_upload(Bucket=b, Key="mpu.bin", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    want = hashlib.md5(hashlib.md5(p1).digest() + hashlib.md5(p2).digest()).hexdigest() + "-2"
    assert r["ETag"].strip('"') == want, (r["ETag"], want)
    assert s3.get_object(Bucket=b, Key="mpu.bin")["Body"].read() == p1 + p2
    try:
        s3.list_parts(Bucket=b, Key="mpu.bin", UploadId=up)
        raise SystemExit("a completed upload still lists")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchUpload", e.response
    up = s3.create_multipart_upload(Bucket=b, Key="aborted.bin")["UploadId"]
    s3.upload_part(Bucket=b, Key="aborted.bin", UploadId=up, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=b, Key="aborted.bin", UploadId=up)
    log("boto3: multipart out of order, ListParts, ListMultipartUploads, invisible before Complete, "
        "InvalidPart, md5-of-md5s-N ETag, Abort")

    # UploadPartCopy.
    up = s3.create_multipart_upload(Bucket=b, Key="pcopy.bin")["UploadId"]
    c = s3.upload_part_copy(Bucket=b, Key="pcopy.bin", UploadId=up, PartNumber=1,
                            CopySource={"Bucket": b, "Key": "sum.bin"}, CopySourceRange="bytes=0-99")
    s3.complete_multipart_upload(Bucket=b, Key="pcopy.bin", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": c["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=b, Key="pcopy.bin")["Body"].read() == body[:100]
    log("boto3: UploadPartCopy with a range")

    # delete_objects, verbose and quiet.
    keys = [f"del/{i}" for i in range(5)]
    for k in keys:
        s3.put_object(Bucket=b, Key=k, Body=b"d")
    r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys[:3]]})
    assert sorted(d["Key"] for d in r["Deleted"]) == keys[:3], r
    r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys[3:]] + [{"Key": "del/none"}], "Quiet": True})
    assert not r.get("Deleted") and not r.get("Errors"), r
    left = s3.list_objects_v2(Bucket=b, Prefix="del/").get("KeyCount")
    assert left == 0, left
    v = s3.get_bucket_versioning(Bucket=b)
    assert "Status" not in v, v
    s3.get_bucket_location(Bucket=b)
    try:
        s3.get_bucket_acl(Bucket=b)
        raise SystemExit("GetBucketAcl answered")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NotImplemented", e.response
    try:
        s3.head_bucket(Bucket=f"nosuch-{TAG}")
        raise SystemExit("a missing bucket answered")
    except ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchBucket"), e.response
    log("boto3: delete_objects verbose and quiet, versioning, location, NotImplemented, NoSuchBucket")


def check_rclone():
    w = os.path.join(WORK, "rclone")
    b = f"rclone-{TAG}"
    env = {
        "RCLONE_CONFIG_VFS_TYPE": "s3",
        "RCLONE_CONFIG_VFS_PROVIDER": "Other",
        "RCLONE_CONFIG_VFS_ACCESS_KEY_ID": KEY,
        "RCLONE_CONFIG_VFS_SECRET_ACCESS_KEY": SECRET,
        "RCLONE_CONFIG_VFS_ENDPOINT": ENDPOINT,
        "RCLONE_CONFIG_VFS_REGION": "us-east-1",
        "RCLONE_CONFIG_VFS_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG": os.path.join(w, "none.conf"),
        # rclone 1.60 fails on AWS_CA_BUNDLE ("transport unsupported type"); it takes --ca-cert.
        "AWS_CA_BUNDLE": None,
    }
    base = ["rclone", "--s3-upload-concurrency", "8", "--s3-chunk-size", "5M",
            "--s3-upload-cutoff", "5M", "--retries", "1", "--low-level-retries", "2"]
    if CA:
        base += ["--ca-cert", CA]
    src = os.path.join(w, "src")
    make_tree(src, 40, 500)
    write(os.path.join(src, "large.bin"), data(23 * 1024 * 1024, 9))
    os.utime(os.path.join(src, "d1", "file-000.bin") if os.path.exists(os.path.join(src, "d1", "file-000.bin")) else os.path.join(src, "d0", "file-000.bin"), (1_600_000_000, 1_600_000_000))
    run(base + ["mkdir", f"vfs:{b}"], env=env)
    run(base + ["copy", src, f"vfs:{b}/tree"], env=env)
    run(base + ["check", src, f"vfs:{b}/tree"], env=env)
    listed = json.loads(run(base + ["lsjson", "-R", "--files-only", f"vfs:{b}/tree"], env=env).stdout)
    remote = {e["Path"]: e for e in listed}
    for root, _d, files in os.walk(src):
        for name in files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, src)
            rt = remote[rel]["ModTime"]
            from datetime import datetime
            got = datetime.fromisoformat(rt.replace("Z", "+00:00")).timestamp()
            if abs(got - os.path.getmtime(p)) > 0.01:
                raise SystemExit(f"mtime of {rel} not preserved: {rt} vs {os.path.getmtime(p)}")
    log("rclone: copy (23 MiB multipart, upload concurrency 8) and check; mtime preserved")
    # A changed mtime alone is set on the server by a self-copy with REPLACE.
    target = os.path.join(src, "d0", "file-000.bin")
    os.utime(target, (1_700_000_000, 1_700_000_000))
    run(base + ["sync", src, f"vfs:{b}/tree"], env=env)
    one = json.loads(run(base + ["lsjson", f"vfs:{b}/tree/d0/file-000.bin"], env=env).stdout)[0]
    from datetime import datetime
    assert abs(datetime.fromisoformat(one["ModTime"].replace("Z", "+00:00")).timestamp() - 1_700_000_000) < 0.01, one
    os.remove(os.path.join(src, "d0", "file-000.bin"))
    run(base + ["sync", src, f"vfs:{b}/tree"], env=env)
    run(base + ["check", src, f"vfs:{b}/tree"], env=env)
    back = os.path.join(w, "back")
    run(base + ["copy", f"vfs:{b}/tree", back], env=env)
    same_trees(src, back)
    run(base + ["delete", f"vfs:{b}/tree"], env=env)
    left = run(base + ["lsf", "-R", f"vfs:{b}"], env=env).stdout.strip()
    assert left == "", left
    log("rclone: sync (mtime update, deletion), check, copy back byte-exact, delete")


def check_s3cmd():
    w = os.path.join(WORK, "s3cmd")
    os.makedirs(w, exist_ok=True)
    u = urllib.parse.urlparse(ENDPOINT)
    cfg = os.path.join(w, "s3cfg")
    with open(cfg, "w") as f:
        f.write("[default]\n")
        f.write(f"access_key = {KEY}\nsecret_key = {SECRET}\n")
        f.write(f"host_base = {u.netloc}\nhost_bucket = {u.netloc}\n")
        f.write(f"use_https = {'True' if u.scheme == 'https' else 'False'}\n")
        f.write("signature_v2 = False\nbucket_location = us-east-1\n")
        if CA:
            f.write(f"ca_certs_file = {CA}\ncheck_ssl_certificate = True\n")
    b = f"s3cmd-{TAG}"
    s = [f"{BIN}/s3cmd", "-c", cfg]
    run(s + ["mb", f"s3://{b}"])
    small = os.path.join(w, "small.txt")
    write(small, b"s3cmd small\n")
    big = os.path.join(w, "big.bin")
    write(big, data(20 * 1024 * 1024, 5))  # above s3cmd's 15 MiB multipart threshold
    run(s + ["put", small, f"s3://{b}/x/small.txt"])
    run(s + ["put", big, f"s3://{b}/x/big.bin"])
    for name, local in (("small.txt", small), ("big.bin", big)):
        out = os.path.join(w, name + ".back")
        p = run(s + ["get", "--force", f"s3://{b}/x/{name}", out])
        assert "MD5 signatures do not match" not in (p.stdout + p.stderr), p.stderr
        assert filecmp.cmp(local, out, shallow=False)
    ls = run(s + ["ls", f"s3://{b}/x/"]).stdout
    assert "small.txt" in ls and "big.bin" in ls, ls
    info = run(s + ["info", f"s3://{b}/x/small.txt"]).stdout
    assert hashlib.md5(open(small, "rb").read()).hexdigest() in info, info
    run(s + ["del", "--recursive", "--force", f"s3://{b}"])
    run(s + ["rb", f"s3://{b}"])
    log("s3cmd: mb, put (small + 20 MiB multipart), get with MD5 check, ls, info MD5, del, rb")


def minio_client(key=KEY, secret=SECRET):
    from minio import Minio
    import urllib3
    u = urllib.parse.urlparse(ENDPOINT)
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=CA) if CA else None
    return Minio(u.netloc, access_key=key, secret_key=secret, secure=u.scheme == "https",
                 region="us-east-1", http_client=http)


def check_minio():
    w = os.path.join(WORK, "minio")
    os.makedirs(w, exist_ok=True)
    m = minio_client()
    b = f"minio-{TAG}"
    m.make_bucket(b)
    assert m.bucket_exists(b)
    big = os.path.join(w, "big.bin")
    write(big, data(12 * 1024 * 1024, 3))
    m.fput_object(b, "m/big.bin", big, part_size=5 * 1024 * 1024)
    out = os.path.join(w, "big.back")
    m.fget_object(b, "m/big.bin", out)
    assert filecmp.cmp(big, out, shallow=False)
    small = os.path.join(w, "small.txt")
    write(small, b"minio small")
    m.fput_object(b, "m/small.txt", small)
    m.fget_object(b, "m/small.txt", small + ".back")
    assert filecmp.cmp(small, small + ".back", shallow=False)
    names = sorted(o.object_name for o in m.list_objects(b, prefix="m/", recursive=True))
    assert names == ["m/big.bin", "m/small.txt"], names
    m.remove_object(b, "m/big.bin")
    m.remove_object(b, "m/small.txt")
    m.remove_bucket(b)
    log("minio-py: make_bucket, fput_object (multipart + small), fget_object byte-exact, list, remove")


def check_denied():
    """A token limited to shared/allowed/ is refused elsewhere through every client."""
    from botocore.exceptions import ClientError
    pkey, psecret = os.environ["S3_PREFIXED_KEY"], os.environ["S3_PREFIXED_SECRET"]
    w = os.path.join(WORK, "denied")
    f = os.path.join(w, "f.txt")
    write(f, b"prefixed")
    env = {"AWS_ACCESS_KEY_ID": pkey, "AWS_SECRET_ACCESS_KEY": psecret}
    a = [f"{BIN}/aws", "--endpoint-url", ENDPOINT]
    run(a + ["s3", "cp", "--no-progress", f, "s3://shared/allowed/aws.txt"], env=env)
    p = run(a + ["s3", "cp", "--no-progress", f, "s3://shared/other/aws.txt"], ok=False, env=env)
    assert "AccessDenied" in p.stderr, p.stderr
    p = run(a + ["s3", "ls", "s3://shared/other/"], ok=False, env=env)
    buckets = run(a + ["s3", "ls"], env=env).stdout.split()
    assert buckets[-1:] == ["shared"] and "elsewhere" not in buckets, buckets
    log("denied/aws: write inside the prefix works, outside AccessDenied; ls shows only 'shared'")

    s3 = boto_client(pkey, psecret)
    s3.put_object(Bucket="shared", Key="allowed/boto.txt", Body=b"b")
    for op in (lambda: s3.put_object(Bucket="shared", Key="other/boto.txt", Body=b"b"),
               lambda: s3.get_object(Bucket="elsewhere", Key="secret.txt"),
               lambda: s3.list_objects_v2(Bucket="elsewhere"),
               lambda: s3.delete_object(Bucket="elsewhere", Key="secret.txt")):
        try:
            op()
            raise SystemExit("a prefixed token reached outside its prefix (boto3)")
        except ClientError as e:
            assert e.response["Error"]["Code"] in ("AccessDenied", "NoSuchBucket", "403", "404"), e.response
    names = [bk["Name"] for bk in s3.list_buckets()["Buckets"]]
    assert names == ["shared"], names
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="shared").get("Contents", [])]
    assert all(k.startswith("allowed/") for k in keys) and keys, keys
    log("denied/boto3: put/get/list/delete outside refused; ListBuckets and listings narrowed")

    env_r = {
        "RCLONE_CONFIG_P_TYPE": "s3", "RCLONE_CONFIG_P_PROVIDER": "Other",
        "RCLONE_CONFIG_P_ACCESS_KEY_ID": pkey, "RCLONE_CONFIG_P_SECRET_ACCESS_KEY": psecret,
        "RCLONE_CONFIG_P_ENDPOINT": ENDPOINT, "RCLONE_CONFIG_P_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG": os.path.join(w, "none.conf"), "AWS_CA_BUNDLE": None,
    }
    r = ["rclone", "--retries", "1", "--low-level-retries", "1"] + (["--ca-cert", CA] if CA else [])
    run(r + ["copyto", f, "p:shared/allowed/rclone.txt"], env=env_r)
    run(r + ["copyto", f, "p:shared/other/rclone.txt"], ok=False, env=env_r)
    run(r + ["cat", "p:elsewhere/secret.txt"], ok=False, env=env_r)
    log("denied/rclone: inside works, outside refused")

    u = urllib.parse.urlparse(ENDPOINT)
    cfg = os.path.join(w, "s3cfg")
    with open(cfg, "w") as c:
        c.write(f"[default]\naccess_key = {pkey}\nsecret_key = {psecret}\nhost_base = {u.netloc}\n"
                f"host_bucket = {u.netloc}\nuse_https = {'True' if u.scheme == 'https' else 'False'}\n"
                "signature_v2 = False\n" + (f"ca_certs_file = {CA}\n" if CA else ""))
    s = [f"{BIN}/s3cmd", "-c", cfg]
    run(s + ["put", f, "s3://shared/allowed/s3cmd.txt"])
    run(s + ["put", f, "s3://shared/other/s3cmd.txt"], ok=False)
    run(s + ["get", "--force", "s3://elsewhere/secret.txt", os.path.join(w, "x")], ok=False)
    log("denied/s3cmd: inside works, outside refused")

    from minio.error import S3Error
    m = minio_client(pkey, psecret)
    m.fput_object("shared", "allowed/minio.txt", f)
    for op in (lambda: m.fput_object("shared", "other/minio.txt", f),
               lambda: m.fget_object("elsewhere", "secret.txt", os.path.join(w, "y"))):
        try:
            op()
            raise SystemExit("a prefixed token reached outside its prefix (minio)")
        except S3Error as e:
            assert e.code in ("AccessDenied", "NoSuchBucket", "NoSuchKey"), e.code
    log("denied/minio-py: inside works, outside refused")


def check_revoked():
    """The token behind AWS_ACCESS_KEY_ID was revoked: its key pair no longer signs."""
    from botocore.exceptions import ClientError
    try:
        boto_client().list_buckets()
        raise SystemExit("a revoked token's key pair still works")
    except ClientError as e:
        assert e.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied"), e.response
    log("revoked: the key pair of a revoked token is refused")


def native(method, path, body=None):
    """A native API call (commit): (status, JSON answer)."""
    req = urllib.request.Request(os.environ["S3_NATIVE"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if os.environ.get("S3_TOKEN"):
        req.add_header("authorization", "Bearer " + os.environ["S3_TOKEN"])
    try:
        with urlopen(req) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def check_commit():
    """x-vaultfs-commit (issue 21): PutObject and CompleteMultipartUpload stage into an open
    commit, nothing is visible until the native finish, then every object is there with the
    ETag, user metadata and Content-Type the S3 calls were answered with."""
    from botocore.exceptions import ClientError
    s3 = boto_client()
    b = f"commit-{TAG}"
    s3.create_bucket(Bucket=b)
    status, c = native("POST", "/api/v1/commits", {"ttl": "10m"})
    assert status == 201, (status, c)
    commit = c["id"]
    target = {"id": commit}

    def add_header(request, **_):
        request.headers["x-vaultfs-commit"] = target["id"]
    for op in ("PutObject", "CompleteMultipartUpload"):
        s3.meta.events.register(f"before-sign.s3.{op}", add_header)

    one, two = data(70_000, 21), data(1_000, 22)
    r1 = s3.put_object(Bucket=b, Key="rel/one.bin", Body=one, Metadata={"build": "42"},
                       ContentType="application/x-one")
    r2 = s3.put_object(Bucket=b, Key="rel/two.txt", Body=two, ChecksumAlgorithm="SHA256")
    assert r1["ETag"].strip('"') == hashlib.md5(one).hexdigest(), r1
    up = s3.create_multipart_upload(Bucket=b, Key="rel/mpu.bin")["UploadId"]
    p1, p2 = data(5 * 1024 * 1024, 23), data(321, 24)
    e1 = s3.upload_part(Bucket=b, Key="rel/mpu.bin", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part(Bucket=b, Key="rel/mpu.bin", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    r3 = s3.complete_multipart_upload(Bucket=b, Key="rel/mpu.bin", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.list_objects_v2(Bucket=b, Prefix="rel/")["KeyCount"] == 0
    for k in ("rel/one.bin", "rel/two.txt", "rel/mpu.bin"):
        try:
            s3.head_object(Bucket=b, Key=k)
            raise SystemExit(f"{k} was visible before the commit's finish")
        except ClientError as e:
            assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
    status, staged = native("GET", f"/api/v1/commits/{commit}")
    assert status == 200, (status, staged)
    log("commit: PutObject x2 and CompleteMultipartUpload staged with x-vaultfs-commit; "
        "nothing listed or readable before the finish")

    status, done = native("POST", f"/api/v1/commits/{commit}/finish", {})
    assert status == 200, (status, done)
    assert sorted(f["path"] for f in done["files"]) == [f"{b}/rel/mpu.bin", f"{b}/rel/one.bin",
                                                          f"{b}/rel/two.txt"], done
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="rel/")["Contents"])
    assert listed == ["rel/mpu.bin", "rel/one.bin", "rel/two.txt"], listed
    g = s3.get_object(Bucket=b, Key="rel/one.bin")
    assert g["Body"].read() == one
    assert g["ETag"] == r1["ETag"] and g["Metadata"] == {"build": "42"}, g
    assert g["ContentType"] == "application/x-one", g
    h = s3.head_object(Bucket=b, Key="rel/two.txt", ChecksumMode="ENABLED")
    assert h["ETag"] == r2["ETag"] and h["ChecksumSHA256"] == r2["ChecksumSHA256"], (h, r2)
    g = s3.get_object(Bucket=b, Key="rel/mpu.bin")
    assert g["Body"].read() == p1 + p2 and g["ETag"] == r3["ETag"], g
    assert g["ETag"].strip('"').endswith("-2"), g
    log("commit: after the native finish all three are listed, with their bytes, ETags "
        "(MD5, md5-of-md5s-2), user metadata, Content-Type and stored SHA256")

    # A finished commit takes no more; an unknown one is NoSuchCommit; nothing lands.
    for cid, code, http in ((commit, "CommitClosed", 409),
                            ("0123456789abcdef0123456789abcdef", "NoSuchCommit", 404)):
        target["id"] = cid
        try:
            s3.put_object(Bucket=b, Key="rel/late.bin", Body=b"late")
            raise SystemExit(f"a put into {code} was accepted")
        except ClientError as e:
            assert e.response["Error"]["Code"] == code, e.response
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == http, e.response
    assert "rel/late.bin" not in [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]]
    log("commit: a finished commit is CommitClosed (409), an unknown one NoSuchCommit (404)")


def make_cert(cert, key):
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key + ".new",
         "-out", cert + ".new", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    os.replace(key + ".new", key)
    os.replace(cert + ".new", cert)


def served_cert(port):
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port))))


def check_tls():
    """HTTPS on the main listener too, and a renewed certificate is served without a restart."""
    import time
    main = os.environ["S3_MAIN"]
    with urlopen(main + "/healthz") as r:
        assert r.status == 200, r.status
    port = urllib.parse.urlparse(ENDPOINT).port
    cert, key = CA, os.environ["S3_TLS_KEY"]
    pem = lambda p: ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(open(p).read()))
    assert served_cert(port) == pem(cert)
    old = pem(cert)
    time.sleep(1.1)  # a new modification time
    make_cert(cert, key)
    new = pem(cert)
    assert new != old
    for _ in range(100):
        if served_cert(port) == new:
            break
        time.sleep(0.1)
    else:
        raise SystemExit("the renewed certificate was not served within 10 s")
    boto_client().list_buckets()
    with urlopen(main + "/healthz") as r:
        assert r.status == 200, r.status
    log("tls: main listener serves HTTPS; a renewed certificate is served on both without a restart")


if __name__ == "__main__":
    checks = {"aws": check_aws, "boto3": check_boto3, "rclone": check_rclone,
              "s3cmd": check_s3cmd, "minio": check_minio, "denied": check_denied,
              "revoked": check_revoked, "tls": check_tls, "commit": check_commit}
    checks[sys.argv[1]]()
    print(f"PASS {sys.argv[1]}")
