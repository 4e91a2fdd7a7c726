"""Schemathesis hooks for VaultFS (loaded by .ci/schemathesis.toml).

- `vaultfs-path`: the generator for the spec's path format. The spec's `pattern` is a necessary
  condition of the server's path rules (src/paths.rs); what a regex cannot say (NFC and
  compatibility forms, percent-decoding stages, 255-byte segments) is the format, so valid
  paths are drawn here. Paths that break the pattern are still generated as negative data.
- `vaultfs-cursor`: a listing cursor is an opaque position the server hands out; valid ones
  are drawn here (positions past every path, so they are valid for any prefix). Real ones
  are chained by the stateful phase.
- `before_call`: what the spec cannot state between fields, made true in positive cases
  only (negative cases go out as generated): a declared checksum is the body's own digest
  (raw uploads; multipart parts have none), and a raw `POST /api/v1/files/upload` names its
  `path` (a multipart one need not).
- `filter_case`: one encoder artefact, described there.
- `write_operations_forbidden`: in the read-only run (VAULTFS_ST_SCOPE=read), every request
  to an operation that needs more than `read` must be refused with 403, whatever its data.
"""

import base64
import json
import hashlib
import os

import schemathesis
from hypothesis import strategies as st
from schemathesis.core import NOT_SET

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~+=,;@()[]{}!$&'"
_UNICODE = "éüßøñçÅ日本語текстΩ"
_INNER = _SAFE + _UNICODE + " ."
_END = _SAFE + _UNICODE


@st.composite
def _segment(draw):
    body = draw(st.text(alphabet=_INNER, min_size=0, max_size=24))
    end = draw(st.sampled_from(_END))
    segment = body + end
    # `C:` as the first segment is a drive letter: refused, so not generated as valid.
    return segment


@st.composite
def _path(draw):
    segments = draw(st.lists(_segment(), min_size=1, max_size=4))
    first = segments[0]
    if len(first) >= 2 and first[1] == ":" and first[0].isascii() and first[0].isalpha():
        segments[0] = "d" + first
    return "/".join(segments)


schemathesis.openapi.format("vaultfs-path", _path())
schemathesis.openapi.format(
    "vaultfs-cursor",
    st.builds(
        lambda tag, key: base64.urlsafe_b64encode((tag + "\U0010fffd" + key).encode()).decode().rstrip("="),
        st.sampled_from(["i:", "x:"]),
        _path(),
    ),
)

# tus PATCH and creation-with-upload bodies: raw bytes.
schemathesis.openapi.media_type("application/offset+octet-stream", st.binary(max_size=4096))

_UPLOADS = {("POST", "/api/v1/files/upload"), ("PUT", "/api/v1/fs/{path}")}


def _body_bytes(case):
    body = case.body
    if body is None or body is NOT_SET:
        return b""
    data = getattr(body, "data", None)  # schemathesis' Binary (a str subclass)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return None


def _tus_create(case):
    """A positive tus creation as a client sends it: `Tus-Resumable: 1.0.0`, one of
    Upload-Length (the body's length when there is one) and Upload-Defer-Length, a valid
    `path` in Upload-Metadata, and no concatenation or checksum (their valid values name
    other uploads and digests, which a generator cannot know)."""
    headers = {k: v for k, v in (case.headers or {}).items()
               if k.lower() not in ("upload-concat", "upload-checksum", "upload-metadata",
                                    "upload-length", "upload-defer-length", "tus-resumable")}
    body = _body_bytes(case) if case.body is not NOT_SET else b""
    headers["Tus-Resumable"] = "1.0.0"
    headers["Upload-Length"] = str(len(body or b""))
    name = hashlib.sha256(repr((case.headers, body)).encode()).hexdigest()[:16]
    headers["Upload-Metadata"] = "path " + base64.b64encode(f"schemathesis/tus/{name}".encode()).decode()
    case.headers = headers
    case.query = {}


def _list_cursor(case):
    """A sorted or filtered listing's cursor names its sort (another sort's is a 400
    `cursor_sort_mismatch`): for those, the drawn plain cursor becomes one of the same sort,
    past every entry."""
    query = case.query or {}
    if not query.get("cursor"):
        return
    sort = query.get("sort") or "name"
    desc = query.get("order") == "desc"
    if sort == "name" and not desc and not query.get("filter"):
        return
    prefix = query.get("prefix") or ""
    past = {"sort": sort, "desc": desc,
            "key": -(2 ** 63) if desc else 2 ** 63 - 1,
            "path": prefix if desc else prefix + "\U0010fffd"}
    raw = ("s:" + json.dumps(past, ensure_ascii=False, separators=(",", ":"))).encode()
    query["cursor"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    case.query = query


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if (case.operation.method.upper(), case.operation.path) == ("GET", "/api/v1/list"):
        _list_cursor(case)
        return
    if (case.operation.method.upper(), case.operation.path) == ("POST", "/api/v1/tus/"):
        _tus_create(case)
        return
    if (case.operation.method.upper(), case.operation.path) == ("PATCH", "/api/v1/tus/{id}"):
        # A client's PATCH: the checksum is of the body it sends (a generated digest would
        # be a 460), and the length was fixed at creation.
        headers = {k: v for k, v in (case.headers or {}).items()
                   if k.lower() not in ("upload-checksum", "upload-length")}
        body = _body_bytes(case) if case.body is not NOT_SET else b""
        headers["Upload-Checksum"] = "sha256 " + base64.b64encode(hashlib.sha256(body or b"").digest()).decode()
        case.headers = headers
        return
    if (case.operation.method.upper(), case.operation.path) not in _UPLOADS:
        return
    headers = case.headers if case.headers is not None else {}
    names = {k.lower(): k for k in headers}
    media_type = (case.media_type or "").lower()
    # Without a body nothing says multipart on the wire: the server sees a raw upload.
    multipart = media_type.startswith("multipart/") and case.body is not NOT_SET
    body = _body_bytes(case)
    for name in ("x-checksum-sha256", "content-digest"):
        if name not in names:
            continue
        if multipart or body is None:
            del headers[names[name]]
        elif name == "x-checksum-sha256":
            headers[names[name]] = hashlib.sha256(body).hexdigest()
        else:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            headers[names[name]] = f"sha-256=:{digest}:"
    case.headers = headers
    if case.operation.path == "/api/v1/files/upload" and not multipart:
        query = case.query if case.query is not None else {}
        if not query.get("path"):
            query["path"] = "schemathesis/raw"
        case.query = query


def _has_control(text):
    return any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in text)


@schemathesis.hook
def filter_case(context, case):
    """Drop negative multipart uploads whose only trick is a part name with control characters:
    the multipart encoder leaves such a part out, so the request that goes out is a valid one
    and the verdict would be about the encoder, not the server (which refuses such names)."""
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive:
        return True
    if case.operation.path != "/api/v1/files/upload" or not isinstance(case.body, dict):
        return True
    if not (case.media_type or "").lower().startswith("multipart/"):
        return True
    return not any(isinstance(k, str) and _has_control(k) for k in case.body)


_ALLOWED_FOR_READ = {"open", "signed", "scope:read"}


@schemathesis.check
def write_operations_forbidden(ctx, response, case):
    if os.environ.get("VAULTFS_ST_SCOPE") != "read":
        return None
    access = case.operation.definition.raw.get("x-vaultfs-access")
    if access in _ALLOWED_FOR_READ:
        return None
    if response.request.method.upper() != case.operation.method.upper():
        return None  # a probe with another method (unsupported_method): 405 is its answer
    sent = response.request.headers.get("Authorization", "")
    if sent != "Bearer " + os.environ.get("VAULTFS_ST_TOKEN", ""):
        return None  # the ignored_auth probes: without (or with a made-up) token, 401
    if response.status_code == 403:
        return None
    body = {}
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - any non-JSON answer is a failure below
        pass
    # A negative path parameter that no route matches never reaches the authorization layer.
    if response.status_code == 404 and body.get("error", {}).get("message") == "no such route":
        return None
    raise AssertionError(
        f"{case.operation.method.upper()} {case.operation.path} ({access}) answered "
        f"{response.status_code} to a read-only token, not 403"
    )
