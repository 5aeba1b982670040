-- The leader publishes its repair and reconciliation summaries (JSON) in
-- cell_meta for standbys' CellStatus: values outgrow 255 characters. A
-- VARCHAR, not TEXT: sqlx's Any driver reads MySQL TEXT as bytes.
ALTER TABLE cell_meta MODIFY value VARCHAR(8192) NOT NULL;
