//! The subset of sqlx's query API that `sql_rows!` uses, over a synchronous `rusqlite`
//! connection, so that the same row code (`sql/rows.rs`, `commits/rows.rs`) runs on the
//! committer's own thread ([`super::committer`]) without a thread hand-off per statement.
//!
//! Every method is an `async fn` that finishes without waiting: the statement runs when the
//! future is first polled. The committer polls each write's future once
//! ([`super::committer`]'s `ready`); nothing here may ever return `Pending`.
//!
//! Binding follows sqlx's SQLite driver: a parameter named `$N` (or `?N`) takes the N-th bound
//! value, wherever and however often it appears in the statement.

use std::marker::PhantomData;

use rusqlite::types::{Value, ValueRef};

/// What went wrong: SQLite's error, or a value of the wrong type or a missing column.
#[derive(Debug)]
pub(crate) enum Error {
    Sqlite(rusqlite::Error),
    Decode(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Sqlite(e) => write!(f, "{e}"),
            Error::Decode(what) => write!(f, "decoding a row: {what}"),
        }
    }
}

/// The driver's marker type (the `Database` of [`Executor`]).
#[derive(Debug)]
pub(crate) struct SyncSqlite;

/// Mirrors `sqlx::Database` for the one type `sql_rows!` names through it.
pub(crate) trait Database {
    type Arguments<'q>;
}

impl Database for SyncSqlite {
    type Arguments<'q> = ();
}

/// Mirrors `sqlx::Executor`: what a query runs on (a mutable borrow of the connection).
pub(crate) trait Executor<'e> {
    type Database;
    fn connection(self) -> &'e mut rusqlite::Connection;
}

impl<'e> Executor<'e> for &'e mut rusqlite::Connection {
    type Database = SyncSqlite;
    fn connection(self) -> &'e mut rusqlite::Connection {
        self
    }
}

/// A value `bind` accepts.
pub(crate) trait Arg {
    fn into_value(self) -> Value;
}

impl Arg for i64 {
    fn into_value(self) -> Value {
        Value::Integer(self)
    }
}

impl Arg for bool {
    fn into_value(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Arg for String {
    fn into_value(self) -> Value {
        Value::Text(self)
    }
}

impl Arg for &str {
    fn into_value(self) -> Value {
        Value::Text(self.to_string())
    }
}

impl Arg for &String {
    fn into_value(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Arg for Vec<u8> {
    fn into_value(self) -> Value {
        Value::Blob(self)
    }
}

impl<T: Arg> Arg for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, Arg::into_value)
    }
}

/// A value a column decodes to.
pub(crate) trait Decode: Sized {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error>;
}

fn mismatch(want: &str, got: ValueRef<'_>) -> Error {
    Error::Decode(format!("wanted {want}, found {:?}", got.data_type()))
}

impl Decode for i64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error> {
        match value {
            ValueRef::Integer(n) => Ok(n),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl Decode for bool {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error> {
        i64::decode(value).map(|n| n != 0)
    }
}

impl Decode for String {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error> {
        match value {
            ValueRef::Text(t) => String::from_utf8(t.to_vec())
                .map_err(|_| Error::Decode("text that is not UTF-8".into())),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Decode for Vec<u8> {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error> {
        match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
            other => Err(mismatch("a blob", other)),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(value: ValueRef<'_>) -> Result<Self, Error> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::decode(other).map(Some),
        }
    }
}

/// One result row, owned.
#[derive(Debug)]
pub(crate) struct Row {
    columns: std::sync::Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// Column `name`, decoded (like `sqlx::Row::try_get` by name).
    pub(crate) fn try_get<T: Decode, I: AsRef<str>>(&self, name: I) -> Result<T, Error> {
        let name = name.as_ref();
        let i = self
            .columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::Decode(format!("no column {name}")))?;
        self.at(i)
    }

    fn at<T: Decode>(&self, i: usize) -> Result<T, Error> {
        let value = self
            .values
            .get(i)
            .ok_or_else(|| Error::Decode(format!("no column {i}")))?;
        T::decode(ValueRef::from(value))
    }
}

/// A row decoded as a tuple (for `query_as`).
pub(crate) trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, Error>;
}

impl<A: Decode, B: Decode> FromRow for (A, B) {
    fn from_row(row: &Row) -> Result<Self, Error> {
        Ok((row.at(0)?, row.at(1)?))
    }
}

impl<A: Decode, B: Decode, C: Decode> FromRow for (A, B, C) {
    fn from_row(row: &Row) -> Result<Self, Error> {
        Ok((row.at(0)?, row.at(1)?, row.at(2)?))
    }
}

impl<A: Decode, B: Decode, C: Decode, D: Decode> FromRow for (A, B, C, D) {
    fn from_row(row: &Row) -> Result<Self, Error> {
        Ok((row.at(0)?, row.at(1)?, row.at(2)?, row.at(3)?))
    }
}

/// What `execute` reports (nothing the row code reads).
#[derive(Debug)]
pub(crate) struct Done;

/// Runs `sql` with `args` bound by their `$N` names; every row it returns (none are kept
/// when `keep` is false).
fn run(
    conn: &mut rusqlite::Connection,
    sql: &str,
    args: Vec<Value>,
    keep: bool,
) -> Result<Vec<Row>, Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    for i in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(i)
            .and_then(|name| name.get(1..))
            .and_then(|digits| digits.parse::<usize>().ok())
            .unwrap_or(i);
        let value = n
            .checked_sub(1)
            .and_then(|k| args.get(k))
            .ok_or_else(|| Error::Decode(format!("no value bound for parameter {n}")))?;
        stmt.raw_bind_parameter(i, value)?;
    }
    let columns: std::sync::Arc<[String]> = stmt
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let width = columns.len();
    let mut out = Vec::new();
    {
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            if keep {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(Value::from(row.get_ref(i)?));
                }
                out.push(Row {
                    columns: std::sync::Arc::clone(&columns),
                    values,
                });
            }
        }
    }
    drop(stmt);
    Ok(out)
}

/// `sqlx::query`.
pub(crate) fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
        _db: PhantomData,
    }
}

/// `sqlx::query_scalar`.
pub(crate) fn query_scalar<O: Decode>(sql: &str) -> QueryScalar<'_, O> {
    QueryScalar {
        inner: query(sql),
        _out: PhantomData,
    }
}

/// `sqlx::query_as` (tuples only).
pub(crate) fn query_as<O: FromRow>(sql: &str) -> QueryAs<'_, O> {
    QueryAs {
        inner: query(sql),
        _out: PhantomData,
    }
}

/// Mirrors `sqlx::query::Query`, the type `sql_rows!` names for its statements.
pub(crate) mod query {
    pub(crate) use super::Query;
}

/// A statement and its bound values.
#[derive(Debug)]
pub(crate) struct Query<'q, DB = SyncSqlite, A = ()> {
    sql: &'q str,
    args: Vec<Value>,
    _db: PhantomData<(DB, A)>,
}

impl<'q, DB, A> Query<'q, DB, A> {
    pub(crate) fn bind<T: Arg>(mut self, value: T) -> Self {
        self.args.push(value.into_value());
        self
    }

    pub(crate) async fn execute<'e, E: Executor<'e>>(self, conn: E) -> Result<Done, Error> {
        run(conn.connection(), self.sql, self.args, false)?;
        Ok(Done)
    }

    pub(crate) async fn fetch_all<'e, E: Executor<'e>>(self, conn: E) -> Result<Vec<Row>, Error> {
        run(conn.connection(), self.sql, self.args, true)
    }

    pub(crate) async fn fetch_optional<'e, E: Executor<'e>>(
        self,
        conn: E,
    ) -> Result<Option<Row>, Error> {
        Ok(run(conn.connection(), self.sql, self.args, true)?
            .into_iter()
            .next())
    }

    pub(crate) async fn fetch_one<'e, E: Executor<'e>>(self, conn: E) -> Result<Row, Error> {
        run(conn.connection(), self.sql, self.args, true)?
            .into_iter()
            .next()
            .ok_or(Error::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }
}

/// A statement whose first column is the answer.
#[derive(Debug)]
pub(crate) struct QueryScalar<'q, O> {
    inner: Query<'q>,
    _out: PhantomData<O>,
}

impl<'q, O: Decode> QueryScalar<'q, O> {
    pub(crate) fn bind<T: Arg>(mut self, value: T) -> Self {
        self.inner = self.inner.bind(value);
        self
    }

    pub(crate) async fn fetch_all<'e, E: Executor<'e>>(self, conn: E) -> Result<Vec<O>, Error> {
        let rows = self.inner.fetch_all(conn).await?;
        rows.iter().map(|r| r.at(0)).collect()
    }

    pub(crate) async fn fetch_optional<'e, E: Executor<'e>>(
        self,
        conn: E,
    ) -> Result<Option<O>, Error> {
        match self.inner.fetch_optional(conn).await? {
            Some(row) => row.at(0).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn fetch_one<'e, E: Executor<'e>>(self, conn: E) -> Result<O, Error> {
        self.inner.fetch_one(conn).await?.at(0)
    }
}

/// A statement whose rows decode as tuples.
#[derive(Debug)]
pub(crate) struct QueryAs<'q, O> {
    inner: Query<'q>,
    _out: PhantomData<O>,
}

impl<'q, O: FromRow> QueryAs<'q, O> {
    pub(crate) fn bind<T: Arg>(mut self, value: T) -> Self {
        self.inner = self.inner.bind(value);
        self
    }

    pub(crate) async fn fetch_all<'e, E: Executor<'e>>(self, conn: E) -> Result<Vec<O>, Error> {
        let rows = self.inner.fetch_all(conn).await?;
        rows.iter().map(O::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a sync_sql future waited"),
        }
    }

    #[test]
    fn binds_by_the_number_in_the_name_like_sqlx() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let row = ready(
            query("SELECT $2 AS b, $1 AS a, $1 + 1 AS a1, $3 AS n")
                .bind(41_i64)
                .bind("two")
                .bind(None::<String>)
                .fetch_one(&mut conn),
        )
        .unwrap();
        assert_eq!(row.try_get::<String, _>("b").unwrap(), "two");
        assert_eq!(row.try_get::<i64, _>("a").unwrap(), 41);
        assert_eq!(row.try_get::<i64, _>("a1").unwrap(), 42);
        assert_eq!(row.try_get::<Option<String>, _>("n").unwrap(), None);
        assert!(
            row.try_get::<i64, _>("b").is_err(),
            "text is not an integer"
        );
        assert!(row.try_get::<i64, _>("missing").is_err());
    }

    #[test]
    fn scalars_tuples_and_missing_values() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        ready(query("CREATE TABLE t (k INTEGER, v TEXT)").execute(&mut conn)).unwrap();
        for (k, v) in [(1_i64, "a"), (2, "b")] {
            ready(
                query("INSERT INTO t (k, v) VALUES ($1, $2)")
                    .bind(k)
                    .bind(v)
                    .execute(&mut conn),
            )
            .unwrap();
        }
        let all: Vec<(i64, String)> =
            ready(query_as("SELECT k, v FROM t ORDER BY k").fetch_all(&mut conn)).unwrap();
        assert_eq!(all, vec![(1, "a".to_string()), (2, "b".to_string())]);
        let none: Option<i64> = ready(
            query_scalar("SELECT k FROM t WHERE v = $1")
                .bind("zzz")
                .fetch_optional(&mut conn),
        )
        .unwrap();
        assert_eq!(none, None);
        let returned: i64 = ready(
            query_scalar("UPDATE t SET k = k + 10 WHERE v = $1 RETURNING k")
                .bind("b")
                .fetch_one(&mut conn),
        )
        .unwrap();
        assert_eq!(returned, 12);
        // A parameter with no value bound is an error, not a NULL.
        assert!(ready(query("SELECT $1, $2").bind(1_i64).fetch_all(&mut conn)).is_err());
    }
}
