"""Drives tuspy against a VaultFS server (tests/tus.rs).

usage: tuspy_upload.py ENDPOINT FILE VAULTFS_PATH STORE_JSON [STOP_AT]

Uploads FILE in 4 MiB chunks with a sha1 Upload-Checksum on every PATCH, storing the upload
URL in STORE_JSON (tuspy's FileStorage). With STOP_AT, stops once that many bytes are
acknowledged and exits: the interruption. Run again without it to resume from the stored
URL. Prints one JSON line: the upload URL and the offset the run started and ended at.
"""
import json
import sys

from tusclient import client
from tusclient.storage import filestorage

endpoint, path, target, store = sys.argv[1:5]
stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else None

tus = client.TusClient(endpoint)
uploader = tus.uploader(
    file_path=path,
    chunk_size=4 * 1024 * 1024,
    metadata={"path": target},
    store_url=True,
    url_storage=filestorage.FileStorage(store),
    upload_checksum=True,
)
started_at = uploader.offset
uploader.upload(stop_at=stop_at)
print(json.dumps({"url": uploader.url, "started_at": started_at, "offset": uploader.offset}))
