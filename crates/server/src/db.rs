//! One SQL dialect over the two chat databases: embedded SQLite (the default) and
//! PostgreSQL (`server.database = "postgres"`, several instances on one database).
//!
//! Every query of the server is written once, in the subset both understand:
//! numbered placeholders `?1`, `?2` … (turned into `$1`, `$2` … for PostgreSQL),
//! `INSERT … ON CONFLICT … DO NOTHING/UPDATE`, `RETURNING`, `COALESCE`, integers as
//! 64-bit numbers (`BIGINT` in the PostgreSQL schema, 0/1 for booleans). Each
//! backend has its own schema (`store::SCHEMA`, `store::PG_SCHEMA`).
//!
//! The calls are blocking, like rusqlite's: they run on tokio's blocking pool
//! ([`crate::store::Store::call`]). PostgreSQL's client is tokio-postgres, driven
//! from the blocking thread with the runtime's handle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::rusqlite;

/// A value going into or coming out of a query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Turns a Rust value into a query parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Query parameters: `params![a, b]` (any [`ToValue`]).
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($p:expr),+ $(,)?) => { &[$($crate::db::ToValue::to_value(&$p)),+] as &[$crate::db::Value] };
}
pub(crate) use params;

/// Reads a column into a Rust value.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self, DbError>;
}

fn wrong_type(want: &str, got: &Value) -> DbError {
    DbError::other(format!("column type: expected {want}, found {got:?}"))
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(wrong_type("an integer", other)),
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        let i = i64::from_value(v)?;
        u32::try_from(i).map_err(|_| DbError::other(format!("{i} does not fit in u32")))
    }
}
impl FromValue for usize {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        let i = i64::from_value(v)?;
        usize::try_from(i).map_err(|_| DbError::other(format!("{i} does not fit in usize")))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(wrong_type("a number", other)),
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(wrong_type("text", other)),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(wrong_type("bytes", other)),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

/// A column index (0-based), like rusqlite's `RowIndex`.
pub(crate) trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row {
    /// Column `i` (0-based) as a `T`.
    pub(crate) fn get<I: RowIndex, T: FromValue>(&self, i: I) -> Result<T, DbError> {
        let i = i.index();
        let v = self
            .0
            .get(i)
            .ok_or_else(|| DbError::other(format!("no column {i}")))?;
        T::from_value(v)
    }
}

/// Query parameters: `params![…]`, or an array of one type (`[id]`).
pub(crate) trait Params {
    fn into_values(self) -> Vec<Value>;
}
impl<T: ToValue> Params for &[T] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue> Params for &Vec<T> {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// `Result` with a [`DbError`].
pub(crate) type Result<T, E = DbError> = std::result::Result<T, E>;

/// `.optional()` on a single-row result: no row is `None`, like rusqlite's.
pub(crate) trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NoRows => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement to run (rusqlite's shape; SQLite caches the prepared statement,
/// PostgreSQL too, by its text).
pub(crate) struct Stmt<'d, 'a> {
    db: &'d Db<'a>,
    sql: String,
}

impl Stmt<'_, '_> {
    pub(crate) fn execute<P: Params>(&mut self, p: P) -> Result<usize> {
        self.db.execute(&self.sql, p)
    }
    pub(crate) fn query_map<T, P: Params>(
        &mut self,
        p: P,
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        Ok(self
            .db
            .query(&self.sql, p)?
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .into_iter())
    }
}

/// What went wrong, as far as callers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A `UNIQUE` or primary key constraint refused the row.
    Unique,
    /// A single-row query found none.
    NoRows,
    /// The database is not reachable (connection lost or refused).
    Unavailable,
    /// A foreign key constraint refused the row.
    ForeignKey,
    /// Anything else.
    Other,
}

/// A database error, with the backend's message.
#[derive(Debug, Clone)]
pub(crate) struct DbError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DbError {
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        let kind = match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                match f.extended_code {
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => ErrorKind::Unique,
                    rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKey,
                    _ => ErrorKind::Other,
                }
            }
            _ => ErrorKind::Other,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let kind = match e.code() {
            _ if e.is_closed() => ErrorKind::Unavailable,
            // Class 08 (connection exception) and 57 (operator intervention:
            // the server shutting down, a terminated backend).
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57") => {
                ErrorKind::Unavailable
            }
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => ErrorKind::Unique,
            Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => ErrorKind::ForeignKey,
            _ => ErrorKind::Other,
        };
        // The server's own message ("duplicate key value violates …") is in the
        // DbError source, not in tokio-postgres's Display ("db error").
        let message = match e.as_db_error() {
            Some(db) => format!("postgres: {}", db.message()),
            None => format!("postgres: {e}"),
        };
        Self { kind, message }
    }
}

/// A PostgreSQL connection with its prepared statements.
pub(crate) struct PgConn {
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    runtime: tokio::runtime::Handle,
    /// The connection's driver task ends when the connection is lost.
    pub(crate) closed: tokio::sync::watch::Receiver<bool>,
}

impl PgConn {
    /// Connects with `config`, over TLS when the server offers it (`sslmode=prefer`,
    /// the default) or must (`sslmode=require`), the certificate verified against
    /// the system's roots. Runs on the runtime; the connection's driver is a task
    /// on it.
    pub(crate) async fn connect(
        config: &tokio_postgres::Config,
        tls: &tokio_postgres_rustls::MakeRustlsConnect,
    ) -> Result<Self, DbError> {
        let (client, connection) = config.connect(tls.clone()).await?;
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection lost");
            }
            let _ = closed_tx.send(true);
        });
        Ok(Self {
            client,
            statements: HashMap::new(),
            runtime: tokio::runtime::Handle::current(),
            closed,
        })
    }

    /// Whether the connection is gone (the store then reconnects).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed() || *self.closed.borrow()
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let translated = to_postgres(sql);
        let s = self.runtime.block_on(self.client.prepare(&translated))?;
        if self.statements.len() >= 256 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize, DbError> {
        let s = self.statement(sql)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let n = self.runtime.block_on(self.client.execute(&s, &refs))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let s = self.statement(sql)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = self.runtime.block_on(self.client.query(&s, &refs))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, PgValue>(i).map(|v| v.0))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
                    .map_err(DbError::from)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.runtime.block_on(self.client.batch_execute(sql))?;
        Ok(())
    }
}

/// The TLS connector for PostgreSQL: rustls (aws-lc-rs), server certificates
/// verified by the platform's verifier (the system's roots).
pub(crate) fn postgres_tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_platform_verifier()
        .map_err(|e| format!("TLS roots: {e}"))?
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Whether the connection settings reach the server only through this machine
/// (a Unix socket or a loopback address): plain TCP is then not exposed.
pub(crate) fn postgres_is_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts.iter().all(|h| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        })
}

/// `?1` → `$1` (and a bare `?` → the next number), outside string literals.
pub(crate) fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut in_string = false;
    let mut next = 1;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\'' {
                in_string = false;
            }
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                out.push(c);
            }
            '?' => {
                out.push('$');
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(format!("an integer parameter for a {ty} column").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A column read from PostgreSQL, as a [`Value`].
struct PgValue(Value);

impl<'a> tokio_postgres::types::FromSql<'a> for PgValue {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        let v = match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            _ => Value::Text(String::from_sql(ty, raw)?),
        };
        Ok(PgValue(v))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        use tokio_postgres::types::{FromSql, Type};
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::FLOAT8
                | Type::FLOAT4
                | Type::BYTEA
        ) || <String as FromSql>::accepts(ty)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    Pg(RefCell<&'a mut PgConn>),
}

/// A connection as the server's queries see it (borrowed for one
/// [`crate::store::Store::call`]).
pub(crate) struct Db<'a> {
    conn: Conn<'a>,
    in_tx: Cell<bool>,
}

impl<'a> Db<'a> {
    pub(crate) fn sqlite(conn: &'a rusqlite::Connection) -> Self {
        Self {
            conn: Conn::Sqlite(conn),
            in_tx: Cell::new(false),
        }
    }

    pub(crate) fn postgres(conn: &'a mut PgConn) -> Self {
        Self {
            conn: Conn::Pg(RefCell::new(conn)),
            in_tx: Cell::new(false),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.conn {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Pg(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection (for the SQLite outbox, which shares it).
    pub(crate) fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.conn {
            Conn::Sqlite(c) => Some(c),
            Conn::Pg(_) => None,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, DbError> {
        let params = &params.into_values()[..];
        match &self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params.iter()))?),
            Conn::Pg(c) => c.borrow_mut().execute(sql, params),
        }
    }

    /// Every row of a query.
    pub(crate) fn query<P: Params>(&self, sql: &str, params: P) -> Result<Vec<Row>, DbError> {
        let params = &params.into_values()[..];
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(sqlite_value(r.get_ref(i)?));
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Conn::Pg(c) => c.borrow_mut().query(sql, params),
        }
    }

    /// Every row, each mapped by `f`.
    pub(crate) fn query_map<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row mapped by `f`, `None` when there is none.
    pub(crate) fn query_opt<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match self.query(sql, params)?.first() {
            Some(r) => f(r).map(Some),
            None => Ok(None),
        }
    }

    /// The first row mapped by `f`; [`ErrorKind::NoRows`] when there is none
    /// (`.optional()` turns that into `None`).
    pub(crate) fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, params, f)?.ok_or_else(|| DbError {
            kind: ErrorKind::NoRows,
            message: format!("no row for: {}", first_line(sql)),
        })
    }

    /// A statement, rusqlite's way (`prepare_cached(sql)?.execute(params)`).
    pub(crate) fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_, 'a>> {
        Ok(Stmt {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// The id given to the row the last `INSERT` on this connection added.
    pub(crate) fn last_insert_rowid(&self) -> Result<i64> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.last_insert_rowid()),
            Conn::Pg(_) => self.query_row("SELECT lastval()", [0_i64; 0], |r| r.get(0)),
        }
    }

    /// Whether the query returns a row.
    pub(crate) fn exists<P: Params>(&self, sql: &str, params: P) -> Result<bool, DbError> {
        Ok(!self.query(sql, params)?.is_empty())
    }

    /// Several statements without parameters.
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(c) => c.borrow_mut().batch(sql),
        }
    }

    /// Starts a transaction, rolled back unless [`Tx::commit`] is called. SQLite
    /// takes the write lock at once (`BEGIN IMMEDIATE`): every transaction here
    /// writes.
    pub(crate) fn transaction(&self) -> Result<Tx<'_, 'a>, DbError> {
        if self.in_tx.get() {
            return Err(DbError::other("a transaction is already open"));
        }
        match self.backend() {
            Backend::Sqlite => self.execute_batch("BEGIN IMMEDIATE")?,
            Backend::Postgres => self.execute_batch("BEGIN")?,
        }
        self.in_tx.set(true);
        Ok(Tx {
            db: self,
            done: false,
        })
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}

/// An open transaction; derefs to its [`Db`].
pub(crate) struct Tx<'t, 'a> {
    db: &'t Db<'a>,
    done: bool,
}

impl<'a> std::ops::Deref for Tx<'_, 'a> {
    type Target = Db<'a>;
    fn deref(&self) -> &Db<'a> {
        self.db
    }
}

impl Tx<'_, '_> {
    pub(crate) fn commit(mut self) -> Result<(), DbError> {
        self.done = true;
        self.db.in_tx.set(false);
        if let Err(e) = self.db.execute_batch("COMMIT") {
            let _ = self.db.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for Tx<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            self.db.in_tx.set(false);
            if let Err(e) = self.db.execute_batch("ROLLBACK") {
                tracing::debug!(error = %e, "rollback");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_strings() {
        assert_eq!(
            to_postgres("SELECT ?1, '?2', ?12 WHERE a = ? AND b = ?"),
            "SELECT $1, '?2', $12 WHERE a = $1 AND b = $2"
        );
    }

    #[test]
    fn sqlite_round_trip_and_rollback() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let db = Db::sqlite(&conn);
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
            .unwrap();
        {
            let tx = db.transaction().unwrap();
            tx.execute(
                "INSERT INTO t (v, n) VALUES (?1, ?2)",
                params!["a", Option::<i64>::None],
            )
            .unwrap();
        }
        assert_eq!(db.query("SELECT * FROM t", params![]).unwrap().len(), 0);
        let tx = db.transaction().unwrap();
        let id: i64 = tx
            .query_row(
                "INSERT INTO t (v, n) VALUES (?1, ?2) RETURNING id",
                params!["a", 5_i64],
                |r| r.get(0),
            )
            .unwrap();
        tx.commit().unwrap();
        let (v, n): (String, Option<i64>) = db
            .query_row("SELECT v, n FROM t WHERE id = ?1", params![id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((v.as_str(), n), ("a", Some(5)));
        let e = db
            .execute("INSERT INTO t (id, v) VALUES (?1, 'b')", params![id])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unique);
    }
}
