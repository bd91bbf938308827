//! What `POST /api/v1/sql` accepts: one read-only query over the registered tables, and
//! nothing else.
//!
//! Checked twice. First on the parsed statement: exactly one `SELECT`/`WITH` query whose
//! relations are registered tables or its own CTEs: no DDL, DML, `COPY`, `SET`, `EXPLAIN`
//! of other statements, table functions or file paths as tables. Then DataFusion plans it
//! with DDL, DML and statements disallowed, and the session has no URL tables, so a path in
//! quotes cannot read a file even if the first check missed it.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectName, Query, Statement, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::QueryError;

/// Checks `sql` against the tables the caller may read.
pub fn check(sql: &str, tables: &[&str]) -> Result<(), QueryError> {
    let bad = |m: String| Err(QueryError::BadRequest(m));
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| QueryError::BadRequest(format!("SQL does not parse: {e}")))?;
    let [statement] = statements.as_slice() else {
        return bad(format!(
            "exactly one statement is allowed, found {}",
            statements.len()
        ));
    };
    let Statement::Query(query) = statement else {
        return bad("only read-only queries (SELECT or WITH ... SELECT) are allowed".into());
    };
    let mut visitor = Relations {
        allowed: tables.iter().map(|t| t.to_ascii_lowercase()).collect(),
        ctes: BTreeSet::new(),
        error: None,
    };
    let _ = query.visit(&mut visitor);
    match visitor.error {
        Some(message) => bad(message),
        None => Ok(()),
    }
}

struct Relations {
    allowed: BTreeSet<String>,
    ctes: BTreeSet<String>,
    error: Option<String>,
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [part] => part.as_ident().map(|i| i.value.to_ascii_lowercase()),
        _ => None,
    }
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_ascii_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let error = match factor {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    Some(format!("table functions are not allowed: `{name}`"))
                } else {
                    match single_name(name) {
                        Some(n) if self.allowed.contains(&n) || self.ctes.contains(&n) => None,
                        _ => Some(format!(
                            "unknown table `{name}`: the tables are {}",
                            self.allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                        )),
                    }
                }
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. } => None,
            other => Some(format!("this kind of table is not allowed: `{other}`")),
        };
        match error {
            Some(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &[&str] = &["spans", "redacted_spans", "runs"];

    #[test]
    fn read_only_queries_over_registered_tables_pass() {
        for sql in [
            "SELECT count(*) FROM spans",
            "select workflow, sum(cost_tool_usd) from SPANS group by 1",
            "WITH x AS (SELECT run_id FROM spans) SELECT count(*) FROM x JOIN runs USING (run_id)",
            "SELECT * FROM (SELECT 1 AS one) t",
        ] {
            check(sql, TABLES).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        for (sql, reason) in [
            ("DROP TABLE spans", "read-only"),
            ("CREATE TABLE t AS SELECT * FROM spans", "read-only"),
            (
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
                "read-only",
            ),
            ("INSERT INTO spans VALUES (1)", "read-only"),
            ("DELETE FROM spans", "read-only"),
            ("COPY spans TO '/tmp/x.parquet'", "read-only"),
            ("SET datafusion.execution.batch_size = 1", "read-only"),
            ("EXPLAIN ANALYZE SELECT 1", "read-only"),
            ("SELECT 1; SELECT 2", "exactly one"),
            ("SELECT * FROM raw_spans", "unknown table"),
            ("SELECT * FROM '/etc/passwd'", "unknown table"),
            ("SELECT * FROM 'data/raw/spans/x.parquet'", "unknown table"),
            ("SELECT * FROM other.schema.spans", "unknown table"),
            (
                "SELECT * FROM generate_series(1, 1000000000)",
                "table functions",
            ),
            (
                "SELECT * FROM read_parquet('/etc/passwd')",
                "table functions",
            ),
            (
                "SELECT * FROM spans WHERE run_id IN (SELECT run_id FROM raw_spans)",
                "unknown table",
            ),
            ("SELEC 1", "does not parse"),
        ] {
            let error = check(sql, TABLES).expect_err(sql).to_string();
            assert!(error.contains(reason), "{sql}: {error}");
        }
    }
}
