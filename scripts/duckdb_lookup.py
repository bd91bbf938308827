"""Times DuckDB looking up runs in the same Parquet files that runledger reads: for each run
id, every span of the run; for each external ref, every span of the run that left it. Used by
`runledger bench lookup` as the baseline.

Usage: duckdb_lookup.py FILES_LIST KEYS_JSON
KEYS_JSON: {"run_ids": [...], "refs": [...]}
Prints JSON: {"run_ms": [...], "run_rows": [...], "ref_ms": [...], "ref_rows": [...], "threads": n}
"""
import json
import sys
import time

import duckdb


def main():
    files_list, keys_file = sys.argv[1], sys.argv[2]
    files = [line.strip() for line in open(files_list) if line.strip()]
    keys = json.load(open(keys_file))
    con = duckdb.connect()
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW spans AS SELECT * FROM read_parquet([{quoted}], "
        "hive_partitioning = true, hive_types_autocast = false)"
    )
    out = {"run_ms": [], "run_rows": [], "ref_ms": [], "ref_rows": []}
    for run_id in keys["run_ids"]:
        started = time.perf_counter()
        # Fetched as Arrow, every column, as runledger reads them.
        rows = con.execute("SELECT * FROM spans WHERE run_id = ?", [run_id]).to_arrow_table()
        out["run_ms"].append((time.perf_counter() - started) * 1000.0)
        out["run_rows"].append(rows.num_rows)
    for ref in keys["refs"]:
        started = time.perf_counter()
        rows = con.execute(
            "SELECT * FROM spans WHERE run_id IN "
            "(SELECT run_id FROM spans WHERE external_ref = ?)",
            [ref],
        ).to_arrow_table()
        out["ref_ms"].append((time.perf_counter() - started) * 1000.0)
        out["ref_rows"].append(rows.num_rows)
    out["threads"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
