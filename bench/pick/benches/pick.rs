//! The cost of one pick and its release through the load-aware picker, beside tower's p2c
//! balancer over as many always-ready services, and the cost of a change of the serving set.
//!
//! `cargo bench -p bench-pick`. Times are per pick (per thread, with two threads picking at
//! once); the allocation columns come from divan's `AllocProfiler`. The pods' connections are
//! lazy and never dialed: only the picker is measured.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::pin,
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Duration,
};

use divan::{AllocProfiler, Bencher};
use k8s_headless_svc::__bench::{Picker, addr};
use tower::{
    Service,
    balance::p2c::Balance,
    discover::ServiceList,
    load::{CompleteOnResponse, PeakEwma},
};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const PODS: &[usize] = &[3, 100, 1_000, 10_000];

fn main() {
    divan::main();
}

/// A runtime for the pods' lazy connections to spawn their tasks on; it is never driven.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// A pick, and the call's success recorded through its guard: what every call does.
#[divan::bench(args = PODS, threads = [1, 2])]
fn picker_pick_and_finish(bencher: Bencher, pods: usize) {
    let rt = runtime();
    let _rt = rt.enter();
    let picker = Picker::new(pods);
    bencher.bench(|| picker.pick().expect("a pod").succeed());
}

/// A pick whose guard is dropped unfinished (a cancelled call).
#[divan::bench(args = PODS, threads = [1, 2])]
fn picker_pick_and_drop(bencher: Bencher, pods: usize) {
    let rt = runtime();
    let _rt = rt.enter();
    let picker = Picker::new(pods);
    bencher.bench(|| drop(picker.pick().expect("a pod")));
}

/// A service that is always ready and answers at once.
#[derive(Clone, Copy, Debug)]
struct AlwaysReady;

impl Service<()> for AlwaysReady {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(()))
    }
}

type P2c = Balance<ServiceList<Vec<PeakEwma<AlwaysReady, CompleteOnResponse>>>, ()>;

/// tower's p2c over `n` always-ready services, each measured by Peak-EWMA (the picker's
/// default measure, with its default round trip and decay), every service already discovered.
fn p2c(n: usize) -> P2c {
    let services = (0..n)
        .map(|_| {
            PeakEwma::new(
                AlwaysReady,
                Duration::from_millis(1),
                1e9,
                CompleteOnResponse::default(),
            )
        })
        .collect();
    let mut balance = Balance::new(ServiceList::new(services));
    call(&mut balance);
    balance
}

/// `poll_ready`, `call`, and the response future polled to its end (which releases the load
/// handle).
fn call(balance: &mut P2c) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let response = pin!(balance.call(()));
    assert!(response.poll(&mut cx).is_ready());
}

/// tower's p2c with one caller, owned by it: no lock.
#[divan::bench(args = PODS)]
fn tower_p2c(bencher: Bencher, pods: usize) {
    let mut balance = p2c(pods);
    bencher.bench_local(|| call(&mut balance));
}

/// tower's p2c shared by two threads behind a mutex (a `Balance` takes `&mut self`).
#[divan::bench(args = PODS, threads = [1, 2])]
fn tower_p2c_shared(bencher: Bencher, pods: usize) {
    let balance = Mutex::new(p2c(pods));
    bencher.bench(|| call(&mut balance.lock().unwrap()));
}

/// A change of the serving set, one pod swapped for another, as the channel applies it.
#[divan::bench(args = [100, 1_000, 10_000])]
fn picker_one_pod_changes(bencher: Bencher, pods: usize) {
    let rt = runtime();
    let _rt = rt.enter();
    let picker = Picker::new(pods);
    let before: BTreeSet<_> = (0..pods).map(addr).collect();
    let mut after = before.clone();
    after.remove(&addr(pods / 2));
    after.insert(addr(pods));
    let mut flip = false;
    bencher.bench_local(|| {
        flip = !flip;
        picker.hold(if flip { &after } else { &before });
    });
}

/// One read of the monotonic clock, which a pick and its finish each make once: the floor
/// under the picker's time on this machine.
#[divan::bench]
fn clock_read() -> std::time::Instant {
    std::time::Instant::now()
}
