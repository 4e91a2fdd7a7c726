-- Listings without a delimiter sorted by a column other than the name (issue 22,
-- `/api/v1/list?sort=size|modified|version`): the whole store in that column's order, with
-- the path as the tiebreak a cursor continues from, so a page is an index walk instead of a
-- sort of every file. A prefix covering most of the store uses them too where the planner
-- has statistics (PostgreSQL), and a narrow prefix sorts its few files from the path range.
-- Cost: three more index entries per file write (BENCHMARKS.md, web UI).
CREATE INDEX files_sorted_size ON files (size, path);
CREATE INDEX files_sorted_modified ON files (modified_at, path);
CREATE INDEX files_sorted_version ON files (version, path)
