-- The leader publishes its repair and reconciliation summaries (JSON) in
-- cell_meta for standbys' CellStatus. SQLite does not enforce the declared
-- VARCHAR(255) of cell_meta.value, so nothing changes here; the MySQL
-- migration of the same number widens the column to TEXT.
SELECT 1;
