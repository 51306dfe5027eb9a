//! The server as it is deployed: systemd socket activation, PROXY headers
//! from trusted proxies, and the HAProxy set-up of docs/DEPLOY.md.

mod activation;
mod deploy;
mod docs;
mod proxy;
