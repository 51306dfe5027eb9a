//! The core (`Manager`, `Admission`, `Handler`) through its public API,
//! with handlers of the tests' own: no file server.

mod departures;
mod live_changes;
mod manager;
mod parking;
mod races;
