//! The picker, reached by the microbenchmarks in `bench/pick` through the hidden `__bench`
//! feature. Not part of the API: it may change or go in any release.

use std::{collections::BTreeSet, fmt, net::SocketAddr, sync::Arc};

use super::{breaker::Outcome, dial::Connections, picker};
use crate::{Config, endpoint::EndpointTemplate};

/// A load-aware channel's picker with the default settings, without the task that follows
/// discovery.
pub struct Picker(Arc<picker::Picker>, Arc<EndpointTemplate>);

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Picker {
    /// A picker holding `pods` pods, at [`addr`]`(0..pods)`, with lazy connections (no pod
    /// needs to listen). Call it inside a tokio runtime: each connection spawns its task.
    pub fn new(pods: usize) -> Self {
        let config = Config::default();
        let picker = Self(
            Arc::new(picker::Picker::new(config.balance().picker())),
            Arc::new(config.template()),
        );
        picker.hold(&(0..pods).map(addr).collect());
        picker
    }

    /// Picks a pod for one call.
    pub fn pick(&self) -> Option<Pick> {
        self.0.pick(None).map(Pick)
    }

    /// Makes it hold exactly `set`, as the channel does on every change of the serving set.
    pub fn hold(&self, set: &BTreeSet<SocketAddr>) {
        self.0.hold(set, |a| {
            Some(Connections::new(self.1.clone(), a).expect("a valid address"))
        });
    }
}

/// The `i`th address of a benchmark's pods: `10.0.0.1:8080` onwards.
pub fn addr(i: usize) -> SocketAddr {
    let ip = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 1)) + i as u32;
    SocketAddr::from((std::net::Ipv4Addr::from(ip), 8080))
}

/// One call's hold on its pod; dropped, it counts as a cancelled call.
#[derive(Debug)]
pub struct Pick(picker::Pick);

impl Pick {
    /// Records the call as a success.
    pub fn succeed(self) {
        self.0.finish(Outcome::Success);
    }
}
