//! Helpers the integration tests share.

pub(crate) mod sqlite;
