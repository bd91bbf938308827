"""Runs one SQL text in DuckDB over a given list of Parquet files (a Delta table's live
files, hive-partitioned by date and hour), as the view `spans`. Used by `runledger bench`
to time DuckDB on exactly the files and the query that runledger reads and runs.

Usage: duckdb_query.py FILES_LIST SQL_FILE REPEATS
Prints JSON: {"times_ms": [...], "rows": [...first 100 rows as lists...], "threads": n}
"""
import json
import sys
import time

import duckdb


def main():
    files_list, sql_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    files = [line.strip() for line in open(files_list) if line.strip()]
    sql = open(sql_file).read()
    con = duckdb.connect()
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW spans AS SELECT * FROM read_parquet([{quoted}], "
        "hive_partitioning = true, hive_types_autocast = false)"
    )
    times = []
    rows = []
    for _ in range(repeats):
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append((time.perf_counter() - started) * 1000.0)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(json.dumps({"times_ms": times, "rows": [list(map(str, r)) for r in rows[:100]], "threads": threads}))


if __name__ == "__main__":
    main()
