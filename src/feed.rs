//! The `balance_channel` feeder: diffs each snapshot against what tonic's balancer holds and
//! sends only the changes.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};
use tonic::transport::{Endpoint, channel::Change};

use crate::{
    endpoint::EndpointTemplate,
    snapshot::{Edit, Endpoints, diff},
};

/// Feeds `tx` until the snapshots or the balancer go away.
///
/// It never blocks discovery: the refresh loop only publishes snapshots. When tonic's queue is
/// full (an idle client drains nothing, grpc-rust #1581), what is not sent stays as the diff
/// between `held` and the latest snapshot, so the backlog never grows past one set's size and
/// stale intermediate states are skipped.
pub(crate) async fn feed(
    mut snapshots: watch::Receiver<Endpoints>,
    tx: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    template: Arc<EndpointTemplate>,
) {
    let mut held = BTreeSet::new();
    loop {
        let desired = snapshots.borrow_and_update().clone();
        let blocked = match push(&tx, &mut held, &desired, &template) {
            Ok(blocked) => blocked,
            Err(Closed) => return,
        };
        if blocked {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                permit = tx.reserve() => match permit {
                    Ok(permit) => drop(permit),
                    Err(_) => return,
                },
            }
        } else if snapshots.changed().await.is_err() {
            return;
        }
    }
}

struct Closed;

/// Sends what fits of `held → desired`, removals first. An address is held once its Insert
/// was accepted. Returns whether the queue was full.
fn push(
    tx: &mpsc::Sender<Change<SocketAddr, Endpoint>>,
    held: &mut BTreeSet<SocketAddr>,
    desired: &BTreeSet<SocketAddr>,
    template: &EndpointTemplate,
) -> Result<bool, Closed> {
    for edit in diff(held, desired).edits() {
        let change = match edit {
            Edit::Insert(addr) => match template.endpoint(addr) {
                Ok(endpoint) => Change::Insert(addr, endpoint),
                Err(e) => {
                    tracing::warn!(endpoint = %addr, "cannot make an endpoint: {e}");
                    continue;
                }
            },
            Edit::Remove(addr) => Change::Remove(addr),
        };
        match tx.try_send(change) {
            Ok(()) => match edit {
                Edit::Insert(addr) => {
                    held.insert(addr);
                }
                Edit::Remove(addr) => {
                    held.remove(&addr);
                }
            },
            Err(TrySendError::Full(_)) => {
                tracing::debug!(
                    queued = tx.max_capacity(),
                    "change queue full; holding the rest"
                );
                return Ok(true);
            }
            Err(TrySendError::Closed(_)) => return Err(Closed),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::plain_template as template;

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn drain(rx: &mut mpsc::Receiver<Change<SocketAddr, Endpoint>>) -> Vec<String> {
        let mut out = vec![];
        while let Ok(change) = rx.try_recv() {
            out.push(match change {
                Change::Insert(a, ep) => format!("+{a} {}", ep.uri()),
                Change::Remove(a) => format!("-{a}"),
            });
        }
        out
    }

    #[test]
    fn full_queue_keeps_the_rest_as_a_diff() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut held = BTreeSet::new();
        let t = template();
        let first = set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        assert!(matches!(push(&tx, &mut held, &first, &t), Ok(true)));
        assert_eq!(held, set(&["10.0.0.1:80", "10.0.0.2:80"]));
        // The set changes again before anything drains: 10.0.0.3 never needs sending.
        let second = set(&["10.0.0.2:80"]);
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(true)));
        assert_eq!(
            drain(&mut rx),
            [
                "+10.0.0.1:80 http://10.0.0.1:80/",
                "+10.0.0.2:80 http://10.0.0.2:80/"
            ]
        );
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(false)));
        assert_eq!(drain(&mut rx), ["-10.0.0.1:80"]);
        assert_eq!(held, second);
        // Steady: nothing sent.
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(false)));
        assert!(drain(&mut rx).is_empty());
    }
}
