//! SQLite for tests of the audit log: `rusqlite` behind the core's `Sql` port.

use std::rc::Rc;

use edgegate_core::audit::{Sql, SqlValue};
use edgegate_core::{Error, ErrorKind};
use rusqlite::types::Value as Lite;

/// An SQLite connection.
pub(crate) struct Db(pub(crate) rusqlite::Connection);

impl Sql for Db {
    fn run(&self, statement: &str, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>, Error> {
        let fail = |e: rusqlite::Error| Error::new(ErrorKind::StoreUnavailable, e.to_string());
        let params: Vec<Lite> = params
            .into_iter()
            .map(|p| match p {
                SqlValue::Null => Lite::Null,
                SqlValue::Int(i) => Lite::Integer(i),
                SqlValue::Text(t) => Lite::Text(t),
            })
            .collect();
        let mut stmt = self.0.prepare(statement).map_err(fail)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |row| {
                (0..columns)
                    .map(|i| {
                        Ok(match row.get::<_, Lite>(i)? {
                            Lite::Integer(n) => SqlValue::Int(n),
                            Lite::Text(t) => SqlValue::Text(t),
                            _ => SqlValue::Null,
                        })
                    })
                    .collect::<Result<Vec<_>, rusqlite::Error>>()
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }
}

/// A fresh in-memory database.
pub(crate) fn db() -> Rc<Db> {
    Rc::new(Db(rusqlite::Connection::open_in_memory().unwrap_or_else(|e| unreachable!("{e}"))))
}
