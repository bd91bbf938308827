"""Reads a runledger span table with engines other than runledger: the `deltalake` package
into pyarrow, then DuckDB over the same Arrow data. Prints the rows and DuckDB's answers as
JSON."""
import datetime
import json
import sys

import duckdb
from deltalake import DeltaTable


def plain(value):
    if isinstance(value, datetime.datetime):
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (value - epoch) // datetime.timedelta(microseconds=1)
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: v for k, v in value}
    return value


def main():
    table = DeltaTable(sys.argv[1])
    arrow = table.to_pyarrow_table()
    rows = [{k: plain(v) for k, v in row.items()} for row in arrow.to_pylist()]
    con = duckdb.connect()
    con.register("spans", arrow)
    duck = con.execute(
        "SELECT count(*), count(DISTINCT run_id), sum(input_tokens) FROM spans").fetchone()
    print(json.dumps({
        "version": table.version(),
        "partition_columns": table.metadata().partition_columns,
        "files": table.file_uris(),
        "rows": rows,
        "duckdb": {"count": duck[0], "runs": duck[1], "input_tokens": duck[2]},
    }))


if __name__ == "__main__":
    main()
