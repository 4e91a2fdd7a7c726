-- tus sessions staged in the object store (S3 blob store): the multipart upload, its parts'
-- ETags, the tail object and the SHA-256 state at the last full part, as JSON (NULL: staged on
-- local disk under <data_dir>/tus/).
ALTER TABLE tus_sessions ADD COLUMN remote TEXT
