//! outboxd: a durable outbox sidecar for AI-agent event streams.
//!
//! Events arrive over HTTP or a Unix socket ([`ingest`]), become durable in
//! a SQLite outbox ([`outbox`]) before they are acknowledged, and are
//! reported on through [`ops`]. See ARCHITECTURE.md for the map.

pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod event;
pub mod format;
pub mod ingest;
pub mod ops;
pub mod outbox;
pub mod redact;
pub mod reload;
pub mod remote;
pub mod salvage;
pub mod secret;
pub mod send;
pub mod service;
pub mod shutdown;
pub mod sinks;
pub mod supervisor;
pub mod telemetry;
pub mod units;
