//! The edgegate core: everything the gateway decides, with none of the I/O.
//!
//! This crate does **no networking, reads no clock, draws no randomness and logs nothing**. A host
//! (one thin crate per edge runtime) implements the small traits in [`ports`] and hands each
//! request to [`Gateway::handle`], which runs the phases of [`phases`] in order:
//!
//! authenticate → validate → admit → route → call upstream → guard → record.
//!
//! Errors are one type, [`Error`], mapped to HTTP in one place. Providers live one per file in
//! [`providers`] and are sans-IO as well: they build requests, read responses and decode streams
//! with pure step functions.

pub mod admin;
pub mod audit;
pub mod cache;
pub mod chat;
pub mod dialect;
pub mod embeddings;
pub mod error;
pub mod feedback;
pub mod firewall;
pub mod gateway;
pub mod health;
pub mod jwt;
pub mod ledger;
pub mod metrics;
pub mod phases;
pub mod policy;
pub mod ports;
pub mod prices;
pub mod providers;
pub mod routing;
pub mod snapshot;
pub mod sse;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tokenizer;
pub mod traces;

pub use error::{Error, ErrorKind, Retry, Side};
pub use gateway::{Body, Gateway, MAX_HEADER_BYTES, MAX_HEADERS, MAX_REQUEST_BYTES, Unreadable};
pub use policy::Policy;
pub use ports::{ByteStream, Host};
