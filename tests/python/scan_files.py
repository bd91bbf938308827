"""Reads every Parquet file on disk under a directory, whether or not a Delta table still
references it, and prints what they hold as JSON: proof that erased or expired rows are gone
from the disk, not only from the table."""
import glob
import json
import os
import sys

import pyarrow.parquet as pq


def main():
    root = sys.argv[1]
    files = []
    run_ids = set()
    text = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)):
        table = pq.read_table(path)
        ids = table.column("run_id").to_pylist()
        run_ids.update(ids)
        meta = pq.ParquetFile(path).metadata
        codecs = {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
        files.append({
            "path": os.path.relpath(path, root),
            "rows": table.num_rows,
            "sorted_by_run": ids == sorted(ids),
            "codecs": sorted(codecs),
        })
        if len(sys.argv) > 2 and sys.argv[2] == "--text":
            text.append(json.dumps(table.to_pylist(), default=str))
    print(json.dumps({"files": files, "run_ids": sorted(run_ids), "text": "\n".join(text)}))


if __name__ == "__main__":
    main()
