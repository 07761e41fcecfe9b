"""Converts keytrail's Sigma rules with pySigma's DuckDB backend and runs them over trails.

usage: run.py RULES_DIR TRAIL...

Loads every record of the trails (keytrail's ECS JSON lines) into the DuckDB table
`logs`, one column per field under its dotted ECS name (`event.action`, `pkcs11.key.label`,
...), which is how the backend names fields; lists and objects below the leaves are kept as
JSON text. `timestamp` is `@timestamp` as a TIMESTAMP, for the backend's correlation
queries. Prints one JSON object: for each rule that produces a query (by its `name`), the
query and the number of rows it returns.
"""

import json
import os
import sys
import tempfile

import duckdb
from sigma_backend_duckdb import DuckDBBackend
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.processing.pipeline import ProcessingPipeline


def flatten(value, prefix, out):
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def load(con, trails):
    rows = []
    for path in trails:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    flat = {}
                    flatten(json.loads(line), "", flat)
                    flat["timestamp"] = flat.get("@timestamp")
                    rows.append(flat)
    if not rows:
        sys.exit("no records in " + " ".join(trails))
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as tmp:
        for r in rows:
            tmp.write(json.dumps(r) + "\n")
    try:
        con.execute(
            "CREATE TABLE logs AS SELECT * FROM read_json_auto(?, format='newline_delimited', "
            "union_by_name=true, sample_size=-1)",
            [tmp.name],
        )
        con.execute(
            'ALTER TABLE logs ALTER "timestamp" TYPE TIMESTAMP USING CAST("timestamp" AS TIMESTAMP)'
        )
    finally:
        os.unlink(tmp.name)
    return len(rows)


def main():
    rules_dir, trails = sys.argv[1], sys.argv[2:]
    con = duckdb.connect()
    records = load(con, trails)
    columns = {r[0] for r in con.execute("DESCRIBE logs").fetchall()}
    # The rules name the trail's own ECS fields: no field mapping.
    backend = DuckDBBackend(processing_pipeline=ProcessingPipeline())
    result = {"records": records, "rules": {}}
    for name in sorted(os.listdir(rules_dir)):
        if not name.endswith(".yml"):
            continue
        with open(os.path.join(rules_dir, name), encoding="utf-8") as f:
            collection = SigmaCollection.from_yaml(f.read())
        queries = backend.convert(collection)
        rules = [r for r in collection if r._output]
        if len(queries) != len(rules):
            sys.exit(f"{name}: {len(rules)} rules gave {len(queries)} queries")
        for rule, query in zip(rules, queries):
            hits = len(con.execute(query).fetchall())
            result["rules"][rule.name] = {
                "file": name,
                "correlation": isinstance(rule, SigmaCorrelationRule),
                "query": query,
                "hits": hits,
            }
    result["columns"] = len(columns)
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
