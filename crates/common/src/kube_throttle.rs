//! A client-side rate limit for Kubernetes calls, as client-go has one (QPS and burst) and kube-rs
//! does not: a token bucket in front of every request of one client, so a 256-run stage, a
//! re-list or a burst of reconciles never floods the API server. Time spent waiting for a token
//! is counted in `stagetime_kube_throttled_seconds_total`.

use std::{
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll, ready},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// Requests of one client may go at `qps` per second on average, `burst` at once.
#[derive(Clone, Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token at `now`, or tells how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// Seconds every client of this process waited for a token.
pub fn throttled() -> &'static Counter<f64> {
    static COUNTER: OnceLock<Counter<f64>> = OnceLock::new();
    COUNTER.get_or_init(Counter::default)
}

/// Registers [`throttled`] as `stagetime_kube_throttled_seconds_total`.
pub fn register(registry: &mut prometheus_client::registry::Registry) {
    registry.register(
        "stagetime_kube_throttled",
        "Seconds Kubernetes calls waited for the client-side rate limit (--kube-qps, --kube-burst)",
        throttled().clone(),
    );
}

/// The layer that puts a [`Bucket`] in front of a service.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLayer {
    /// Average requests per second.
    pub qps: f64,
    /// Requests at once.
    pub burst: u32,
}

impl<S> tower::Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            bucket: Bucket::new(self.qps, self.burst, Instant::now()),
            token: false,
            sleep: None,
            waiting_since: None,
        }
    }
}

/// A service whose requests wait for a token. kube's client drives it through one buffer
/// worker, so one bucket paces every request of the client.
pub struct Throttle<S> {
    inner: S,
    bucket: Bucket,
    /// A token taken and not yet spent on a call.
    token: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting_since: Option<Instant>,
}

impl<S, R> tower::Service<R> for Throttle<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.token {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let now = Instant::now();
            match self.bucket.take(now) {
                Ok(()) => {
                    self.token = true;
                    if let Some(since) = self.waiting_since.take() {
                        throttled().inc_by(now.saturating_duration_since(since).as_secs_f64());
                    }
                }
                Err(wait) => {
                    self.waiting_since.get_or_insert(now);
                    self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10.0, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        assert!(bucket.take(start + Duration::from_millis(150)).is_err());
        // A long pause refills to the burst, never beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }
}
