-- The snapshot is rewritten on every state change (~2 KB of JSON for the order saga). With the
-- default storage (EXTENDED) and toast_tuple_target (~2 KB) a row that size is pglz-compressed on
-- every update and decompressed on every load, which showed as pglz_compress/pglz_decompress in
-- the benchmark's Postgres profile (docs/benchmarks.md). Raising the table's toast_tuple_target
-- keeps rows up to ~8 KB inline and uncompressed: no compression, no TOAST table round trip.
-- Larger snapshots are still compressed and moved out of line as before.
alter table workflows set (toast_tuple_target = 8160);
