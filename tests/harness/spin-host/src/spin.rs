//! The Spin 3.x interfaces a spin-sdk 5 component imports, implemented over local SQLite files
//! and (outbound Redis) a real Redis server, plus the outbound-host allow-list. Semantics follow Spin's documentation: a store or database
//! label the component did not declare is `access-denied`; a declared label other than `default`
//! needs runtime configuration this host does not have, so it is `no-such-store`/`-database`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Resource;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::St;
use crate::manifest::{AllowedHost, App};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

wasmtime::component::bindgen!({
    inline: r#"
        package fermyon:spin@2.0.0;

        interface key-value {
            resource store {
                open: static func(label: string) -> result<store, error>;
                get: func(key: string) -> result<option<list<u8>>, error>;
                set: func(key: string, value: list<u8>) -> result<_, error>;
                delete: func(key: string) -> result<_, error>;
                exists: func(key: string) -> result<bool, error>;
                get-keys: func() -> result<list<string>, error>;
            }
            variant error {
                store-table-full,
                no-such-store,
                access-denied,
                other(string)
            }
        }

        interface sqlite {
            resource connection {
                open: static func(database: string) -> result<connection, error>;
                execute: func(statement: string, parameters: list<value>) -> result<query-result, error>;
            }
            variant error {
                no-such-database,
                access-denied,
                invalid-connection,
                database-full,
                io(string)
            }
            record query-result {
                columns: list<string>,
                rows: list<row-result>,
            }
            record row-result {
                values: list<value>
            }
            variant value {
                integer(s64),
                real(f64),
                text(string),
                blob(list<u8>),
                null
            }
        }

        interface variables {
            get: func(name: string) -> result<string, error>;
            variant error {
                invalid-name(string),
                undefined(string),
                provider(string),
                other(string),
            }
        }

        interface redis {
            variant error {
                invalid-address,
                too-many-connections,
                type-error,
                other(string),
            }
            resource connection {
                open: static func(address: string) -> result<connection, error>;
                publish: func(channel: string, payload: payload) -> result<_, error>;
                get: func(key: string) -> result<option<payload>, error>;
                set: func(key: string, value: payload) -> result<_, error>;
                incr: func(key: string) -> result<s64, error>;
                del: func(keys: list<string>) -> result<u32, error>;
                sadd: func(key: string, values: list<string>) -> result<u32, error>;
                smembers: func(key: string) -> result<list<string>, error>;
                srem: func(key: string, values: list<string>) -> result<u32, error>;
                execute: func(command: string, arguments: list<redis-parameter>) -> result<list<redis-result>, error>;
            }
            type payload = list<u8>;
            variant redis-parameter {
                int64(s64),
                binary(payload)
            }
            variant redis-result {
                nil,
                status(string),
                int64(s64),
                binary(payload)
            }
        }

        world spin-host {
            import key-value;
            import redis;
            import sqlite;
            import variables;
        }
    "#,
    imports: { default: trappable },
    with: {
        "fermyon:spin/key-value.store": KvStore,
        "fermyon:spin/sqlite.connection": SqlConnection,
        "fermyon:spin/redis.connection": RedisConnection,
    },
});

use fermyon::spin::{key_value, redis as spin_redis, sqlite, variables};

/// An open key-value store (a label the component declared).
pub struct KvStore {
    label: String,
}

/// An open SQLite connection; one per `open`, as Spin gives each instance its own.
pub struct SqlConnection {
    conn: rusqlite::Connection,
}

/// An open connection to a Redis server, as outbound Redis gives one per `open`.
pub struct RedisConnection {
    conn: redis::Connection,
}

/// State shared by all requests: the key-value file and the SQLite database path.
pub struct Shared {
    allowed: Vec<AllowedHost>,
    kv: Mutex<rusqlite::Connection>,
    sqlite_path: PathBuf,
    key_value_stores: Vec<String>,
    sqlite_databases: Vec<String>,
    variables: std::collections::HashMap<String, String>,
}

impl Shared {
    /// Opens (creating) the state files in `dir`, as `spin up` does under `.spin/`.
    pub fn open(dir: &Path, app: &App) -> Result<Self, BoxError> {
        let kv = rusqlite::Connection::open(dir.join("sqlite_key_value.db"))?;
        kv.execute_batch("CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))")?;
        Ok(Shared {
            allowed: app.allowed_outbound_hosts.clone(),
            kv: Mutex::new(kv),
            sqlite_path: dir.join("sqlite_db.db"),
            key_value_stores: app.key_value_stores.clone(),
            sqlite_databases: app.sqlite_databases.clone(),
            variables: app.variables.clone(),
        })
    }

    /// Writes a key (used to seed stores, like `spin up --key-value`).
    pub fn kv_set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), BoxError> {
        let kv = self.kv.lock().map_err(|_| "key-value lock poisoned")?;
        kv.execute("INSERT OR REPLACE INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)", rusqlite::params![store, key, value])?;
        Ok(())
    }

    fn kv<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T, key_value::Error> {
        let kv = self.kv.lock().map_err(|_| key_value::Error::Other("key-value lock poisoned".into()))?;
        f(&kv).map_err(|e| key_value::Error::Other(e.to_string()))
    }
}

impl key_value::Host for St {}

impl key_value::HostStore for St {
    fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<KvStore>, key_value::Error>> {
        if !self.shared.key_value_stores.contains(&label) {
            return Ok(Err(key_value::Error::AccessDenied));
        }
        if label != "default" {
            return Ok(Err(key_value::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(KvStore { label })?))
    }

    fn get(&mut self, store: Resource<KvStore>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let label = self.table.get(&store)?.label.clone();
        Ok(self.shared.kv(|c| {
            use rusqlite::OptionalExtension;
            c.query_row("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2", [&label, &key], |r| r.get(0)).optional()
        }))
    }

    fn set(&mut self, store: Resource<KvStore>, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), key_value::Error>> {
        let label = self.table.get(&store)?.label.clone();
        Ok(self.shared.kv(|c| {
            c.execute("INSERT OR REPLACE INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)", rusqlite::params![label, key, value])
                .map(drop)
        }))
    }

    fn delete(&mut self, store: Resource<KvStore>, key: String) -> wasmtime::Result<Result<(), key_value::Error>> {
        let label = self.table.get(&store)?.label.clone();
        Ok(self.shared.kv(|c| c.execute("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2", [&label, &key]).map(drop)))
    }

    fn exists(&mut self, store: Resource<KvStore>, key: String) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let label = self.table.get(&store)?.label.clone();
        Ok(self.shared.kv(|c| {
            c.query_row("SELECT COUNT(*) FROM spin_key_value WHERE store = ?1 AND key = ?2", [&label, &key], |r| r.get::<_, i64>(0))
                .map(|n| n > 0)
        }))
    }

    fn get_keys(&mut self, store: Resource<KvStore>) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let label = self.table.get(&store)?.label.clone();
        Ok(self.shared.kv(|c| {
            let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            stmt.query_map([&label], |r| r.get(0))?.collect()
        }))
    }

    fn drop(&mut self, store: Resource<KvStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl sqlite::Host for St {}

fn sql_io(e: rusqlite::Error) -> sqlite::Error {
    sqlite::Error::Io(e.to_string())
}

impl sqlite::HostConnection for St {
    fn open(&mut self, database: String) -> wasmtime::Result<Result<Resource<SqlConnection>, sqlite::Error>> {
        if !self.shared.sqlite_databases.contains(&database) {
            return Ok(Err(sqlite::Error::AccessDenied));
        }
        if database != "default" {
            return Ok(Err(sqlite::Error::NoSuchDatabase));
        }
        let conn = match rusqlite::Connection::open(&self.shared.sqlite_path) {
            Ok(c) => c,
            Err(e) => return Ok(Err(sql_io(e))),
        };
        // Concurrent instances wait for each other's write transactions instead of failing.
        let _ = conn.busy_timeout(Duration::from_secs(10));
        Ok(Ok(self.table.push(SqlConnection { conn })?))
    }

    fn execute(
        &mut self,
        conn: Resource<SqlConnection>,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> wasmtime::Result<Result<sqlite::QueryResult, sqlite::Error>> {
        let conn = &self.table.get(&conn)?.conn;
        Ok(run(conn, &statement, parameters).map_err(sql_io))
    }

    fn drop(&mut self, conn: Resource<SqlConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

fn run(conn: &rusqlite::Connection, statement: &str, parameters: Vec<sqlite::Value>) -> rusqlite::Result<sqlite::QueryResult> {
    use rusqlite::types::{Value as V, ValueRef};
    let mut stmt = conn.prepare(statement)?;
    let params: Vec<V> = parameters
        .into_iter()
        .map(|p| match p {
            sqlite::Value::Integer(i) => V::Integer(i),
            sqlite::Value::Real(f) => V::Real(f),
            sqlite::Value::Text(s) => V::Text(s),
            sqlite::Value::Blob(b) => V::Blob(b),
            sqlite::Value::Null => V::Null,
        })
        .collect();
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let width = columns.len();
    let mut rows = Vec::new();
    let mut cursor = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = cursor.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                ValueRef::Integer(i) => sqlite::Value::Integer(i),
                ValueRef::Real(f) => sqlite::Value::Real(f),
                ValueRef::Text(t) => sqlite::Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => sqlite::Value::Blob(b.to_vec()),
                ValueRef::Null => sqlite::Value::Null,
            });
        }
        rows.push(sqlite::RowResult { values });
    }
    Ok(sqlite::QueryResult { columns, rows })
}

impl spin_redis::Host for St {}

fn redis_error(e: redis::RedisError) -> spin_redis::Error {
    match e.kind() {
        redis::ErrorKind::UnexpectedReturnType => spin_redis::Error::TypeError,
        _ => spin_redis::Error::Other(e.to_string()),
    }
}

/// Flattens a reply into outbound Redis results: an array becomes its elements, one level deep.
fn redis_results(value: redis::Value, out: &mut Vec<spin_redis::RedisResult>) {
    use spin_redis::RedisResult as R;
    match value {
        redis::Value::Nil => out.push(R::Nil),
        redis::Value::Int(i) => out.push(R::Int64(i)),
        redis::Value::BulkString(b) => out.push(R::Binary(b)),
        redis::Value::SimpleString(s) => out.push(R::Status(s)),
        redis::Value::Okay => out.push(R::Status("OK".into())),
        redis::Value::Array(items) | redis::Value::Set(items) => items.into_iter().for_each(|v| redis_results(v, out)),
        other => out.push(R::Status(format!("{other:?}"))),
    }
}

impl St {
    fn redis<T: redis::FromRedisValue>(&mut self, conn: &Resource<RedisConnection>, cmd: redis::Cmd) -> wasmtime::Result<Result<T, spin_redis::Error>> {
        let conn = &mut self.table.get_mut(conn)?.conn;
        Ok(cmd.query(conn).map_err(redis_error))
    }
}

impl spin_redis::HostConnection for St {
    fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<RedisConnection>, spin_redis::Error>> {
        let Ok(url) = address.parse::<http::Uri>() else { return Ok(Err(spin_redis::Error::InvalidAddress)) };
        let scheme = url.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = url.host().unwrap_or("").to_owned();
        let port = url.port_u16().unwrap_or(6379);
        if !self.shared.allowed.iter().any(|a| a.allows(&scheme, &host, port)) {
            eprintln!("spin-test-host: denied outbound Redis connection to {address} (not in allowed_outbound_hosts)");
            return Ok(Err(spin_redis::Error::InvalidAddress));
        }
        let opened = redis::Client::open(address.as_str()).and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)));
        match opened {
            Ok(conn) => Ok(Ok(self.table.push(RedisConnection { conn })?)),
            Err(e) => Ok(Err(redis_error(e))),
        }
    }

    fn publish(&mut self, c: Resource<RedisConnection>, channel: String, payload: Vec<u8>) -> wasmtime::Result<Result<(), spin_redis::Error>> {
        self.redis::<i64>(&c, redis::cmd("PUBLISH").arg(channel).arg(payload).clone()).map(|r| r.map(drop))
    }

    fn get(&mut self, c: Resource<RedisConnection>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_redis::Error>> {
        self.redis(&c, redis::cmd("GET").arg(key).clone())
    }

    fn set(&mut self, c: Resource<RedisConnection>, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), spin_redis::Error>> {
        self.redis(&c, redis::cmd("SET").arg(key).arg(value).clone())
    }

    fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> wasmtime::Result<Result<i64, spin_redis::Error>> {
        self.redis(&c, redis::cmd("INCR").arg(key).clone())
    }

    fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> wasmtime::Result<Result<u32, spin_redis::Error>> {
        self.redis(&c, redis::cmd("DEL").arg(keys).clone())
    }

    fn sadd(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> wasmtime::Result<Result<u32, spin_redis::Error>> {
        self.redis(&c, redis::cmd("SADD").arg(key).arg(values).clone())
    }

    fn smembers(&mut self, c: Resource<RedisConnection>, key: String) -> wasmtime::Result<Result<Vec<String>, spin_redis::Error>> {
        self.redis(&c, redis::cmd("SMEMBERS").arg(key).clone())
    }

    fn srem(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> wasmtime::Result<Result<u32, spin_redis::Error>> {
        self.redis(&c, redis::cmd("SREM").arg(key).arg(values).clone())
    }

    fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<spin_redis::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<spin_redis::RedisResult>, spin_redis::Error>> {
        let mut cmd = redis::cmd(&command);
        for a in arguments {
            match a {
                spin_redis::RedisParameter::Int64(i) => cmd.arg(i),
                spin_redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        Ok(self.redis::<redis::Value>(&c, cmd)?.map(|v| {
            let mut out = Vec::new();
            redis_results(v, &mut out);
            out
        }))
    }

    fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl variables::Host for St {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        let valid = name.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
            && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !valid {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        Ok(self.shared.variables.get(&name).cloned().ok_or(variables::Error::Undefined(name)))
    }
}

/// Enforces `allowed_outbound_hosts`, then sends with wasmtime's default client.
pub struct AllowHooks {
    allowed: Arc<Vec<AllowedHost>>,
}

impl AllowHooks {
    pub fn new(allowed: Vec<AllowedHost>) -> Self {
        AllowHooks { allowed: Arc::new(allowed) }
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for AllowHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !self.allowed.iter().any(|a| a.allows(&scheme, &host, port)) {
            eprintln!("spin-test-host: denied outbound request to {scheme}://{host}:{port} (not in allowed_outbound_hosts)");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
}
