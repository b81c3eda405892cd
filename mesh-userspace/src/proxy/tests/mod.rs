//! Proxy behaviour over real loopback sockets with a fixed original-destination table: routing
//! by subset, fault injection, retries, no-endpoint replies, and config reloads racing requests.
//!
//! Shared backends, proxies and clients are in `fixtures`; each other module is one concern.

mod downstream;
mod drain;
mod fixtures;
mod protocol;
mod routing;
mod source_limits;
mod telemetry;
mod upstream;
