"""Runs one SQL text in DuckDB over a given list of Parquet files (a Delta table's live
files, hive-partitioned by date and hour), as the view `spans`, each time it is asked. Used
by `runledger bench query` to time DuckDB on exactly the files and the query that runledger
reads and runs, taking turns with runledger run by run.

Usage: duckdb_query.py FILES_LIST SQL_FILE
Prints one JSON line when ready: {"threads": n}. Then for each line `run` on stdin, runs
the query and prints one JSON line: {"time_ms": t, "rows": [...first 100 rows as lists...]}.
Ends at the end of its input.
"""
import json
import sys
import time

import duckdb


def reply(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def main():
    files_list, sql_file = sys.argv[1], sys.argv[2]
    files = [line.strip() for line in open(files_list) if line.strip()]
    sql = open(sql_file).read()
    con = duckdb.connect()
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW spans AS SELECT * FROM read_parquet([{quoted}], "
        "hive_partitioning = true, hive_types_autocast = false)"
    )
    reply({"threads": con.execute("SELECT current_setting('threads')").fetchone()[0]})
    for line in sys.stdin:
        if line.strip() != "run":
            sys.exit(f"unknown command {line.strip()!r}: expected 'run'")
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        elapsed = (time.perf_counter() - started) * 1000.0
        reply({"time_ms": elapsed, "rows": [list(map(str, r)) for r in rows[:100]]})


if __name__ == "__main__":
    main()
