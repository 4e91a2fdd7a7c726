-- Prefix filters on the event log (long-polls and feeds with `prefix=`): byte-order ranges
-- on path and source path, so a rare prefix is found without reading the seq window.
CREATE INDEX events_path_bytes ON events (path COLLATE "C", seq);
CREATE INDEX events_from_path_bytes ON events (from_path COLLATE "C", seq) WHERE from_path IS NOT NULL
