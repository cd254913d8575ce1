//! Discovery: what DNS lists for each Service, kept fresh in the background.
//!
//! ```text
//! refresh.rs ── one task drives every Service's loop: ask, schedule, publish, sleep
//!   resolve.rs   asks hickory (resolve/client.rs) and screens each answer (resolve/screen.rs)
//!   families.rs  which address families to ask
//!   schedule.rs  when to ask again and what to publish, on a grid shared by every Service
//!   answer.rs    the vocabulary the three share: questions and what they answered
//! ```
//!
//! The listed set each loop publishes is a snapshot ([`crate::snapshot`]) that the health gate
//! and the observation API read; discovery knows nothing of tonic.

mod answer;
pub(crate) mod families;
pub(crate) mod refresh;
pub(crate) mod resolve;
pub(crate) mod schedule;

pub use answer::IpFamily;
pub use refresh::DiscoveryStatus;
pub use resolve::DnsTransport;
#[cfg(fuzzing)]
pub use resolve::fuzz_screen;
