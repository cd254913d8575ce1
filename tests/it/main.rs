//! Integration tests against real components: an in-process hickory DNS server and tonic
//! pods on loopback. One binary, one module per topic.
//!
//! A test must be able to fail for the regression it names:
//!
//! 1. **A setting's test fails if the setting is ignored**: its bound excludes the default.
//!    Set the value far from the default and bound it on the side the default would cross: a
//!    lower bound when the value is above the default (a lower bound does not flake on a
//!    loaded machine), or an interval so long that only the behaviour under test can act
//!    within the test.
//! 2. **Timing logic that needs no real I/O runs on tokio's paused clock**, in the unit tests
//!    beside it in `src/`; here, only what needs sockets.
//! 3. **Wait with [`support::eventually`], never a bare sleep**: poll the condition with a
//!    deadline. A sleep is only a measuring window (calls counted over 5 s); "nothing
//!    happens" is `!eventually(window, || it happened)`.
//!
//! Check a new test against the breakage it names: break the library that way, see the test
//! fail, and restore it.

mod balanced;
mod discovery;
mod dns_faults;
mod external_dns;
mod grpcio_pods;
mod health;
mod hostile_dns;
mod hostile_pods;
mod lifecycle;
mod retries;
mod settings;
mod subsetting;
mod support;
mod tls;
