-- Level listings (issue 22): the files directly in one folder, in the order of each sortable
-- column, with the path as the tiebreak a cursor continues from. The folder of a path is
-- `rtrim(path, replace(path, '/', ''))` (everything up to its last '/', or '' at the root),
-- written the same way on both engines and in the queries so the planner matches it. The
-- first index also finds the sub-folders of a folder, one seek each
CREATE INDEX files_level_name ON files (rtrim(path, replace(path, '/', '')), path);
CREATE INDEX files_level_size ON files (rtrim(path, replace(path, '/', '')), size, path);
CREATE INDEX files_level_modified ON files (rtrim(path, replace(path, '/', '')), modified_at, path);
CREATE INDEX files_level_version ON files (rtrim(path, replace(path, '/', '')), version, path)
