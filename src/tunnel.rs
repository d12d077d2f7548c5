//! Upgraded connections (WebSocket): which upgrades may pass, and the byte pipe after the
//! upstream switched protocols.
//!
//! After a `101` tokengate relays bytes it no longer reads, so only protocols a client may
//! legitimately use through an auth proxy pass: `upgrades` (WebSocket by default). Any other
//! `Upgrade` (`h2c` above all: the upstream would then take HTTP/2 requests through the
//! tunnel that tokengate never checked, with whatever identity headers they carry) is
//! stripped with the other hop-by-hop headers, and the request goes on as a plain one. An
//! allowed upgrade on a connection that cannot be upgraded (HTTP/1.0) is refused before it
//! goes upstream.
//!
//! A tunnel keeps its client connection's place in `limits.max_connections` until it ends,
//! and is closed after `timeouts.tunnel_idle_seconds` without a byte either way.

use crate::error::Rejection;
use http::header::{CONNECTION, UPGRADE};
use http::{request, HeaderMap, HeaderValue};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Checks per idle period: a quiet tunnel is closed between one and 1¼ periods after its
/// last byte (as the connection watchdog does it).
const CHECKS: u32 = 4;

/// The protocol a request may upgrade to, if it asks for one that `allowed` lets through.
/// An upgrade not allowed is `None` (the request goes on without it).
pub fn requested(
    parts: &request::Parts,
    allowed: &[String],
) -> Result<Option<HeaderValue>, Rejection> {
    let upgradable = parts
        .extensions
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some();
    protocol(&parts.headers, upgradable, allowed)
}

/// `requested`, for a connection that can be upgraded or not.
fn protocol(
    headers: &HeaderMap,
    upgradable: bool,
    allowed: &[String],
) -> Result<Option<HeaderValue>, Rejection> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !asks {
        return Ok(None);
    }
    let mut protocols = headers.get_all(UPGRADE).iter();
    let (Some(protocol), None) = (protocols.next(), protocols.next()) else {
        return Ok(None);
    };
    // One protocol, with or without a version (`websocket`, `foo/2`).
    let name = protocol
        .as_bytes()
        .split(|&b| b == b'/')
        .next()
        .unwrap_or_default();
    if protocol.as_bytes().contains(&b',')
        || !allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(name.trim_ascii()))
    {
        return Ok(None);
    }
    if !upgradable {
        return Err(Rejection::BadRequest("This connection cannot be upgraded."));
    }
    Ok(Some(protocol.clone()))
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A side closed (or failed).
    Closed,
    /// Neither side sent a byte for the idle limit.
    Idle,
}

/// Relays bytes both ways between the upgraded client and upstream connections until
/// either side closes or neither sends a byte for `idle`. `_slot` (the client connection's
/// place under `limits.max_connections`) is held until then.
pub async fn relay<C, U, S>(client: C, upstream: U, idle: Duration, _slot: S) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU32::new(0));
    let mut client = Counted {
        io: client,
        activity: Arc::clone(&activity),
    };
    let mut upstream = Counted {
        io: upstream,
        activity: Arc::clone(&activity),
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
            Ended::Closed
        }
        () = quiet_for(&activity, idle) => {
            tracing::debug!("tunnel closed after its idle limit");
            Ended::Idle
        }
    }
}

/// Resolves once `activity` has not moved for a whole `idle` period.
async fn quiet_for(activity: &AtomicU32, idle: Duration) {
    let mut tick = tokio::time::interval(idle / CHECKS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut seen, mut quiet) = (activity.load(Relaxed), 0);
    loop {
        tick.tick().await;
        let now = activity.load(Relaxed);
        if now == seen {
            quiet += 1;
            if quiet >= CHECKS {
                return;
            }
        } else {
            (seen, quiet) = (now, 0);
        }
    }
}

/// A connection whose reads count as activity.
struct Counted<T> {
    io: T,
    activity: Arc<AtomicU32>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.fetch_add(1, Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut builder = Request::get("/ws");
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0.headers
    }

    #[test]
    fn only_allowed_protocols_upgrade() {
        let allowed = vec!["websocket".to_owned()];
        let ask = |upgrade: &str| {
            protocol(
                &headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", upgrade)]),
                true,
                &allowed,
            )
        };
        assert_eq!(ask("websocket").unwrap().unwrap(), "websocket");
        assert_eq!(ask("WebSocket").unwrap().unwrap(), "WebSocket");
        for stripped in ["h2c", "websocket, h2c", "h2c, websocket", "tls/1.0", ""] {
            assert_eq!(ask(stripped).unwrap(), None, "{stripped}");
        }
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(protocol(&no_connection, true, &allowed).unwrap(), None);
        let asked = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            protocol(&asked, false, &allowed),
            Err(Rejection::BadRequest("This connection cannot be upgraded."))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_after_its_idle_limit() {
        let (client, mut far_client) = tokio::io::duplex(64);
        let (upstream, _far_upstream) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(40), ()));
        // Traffic keeps it open.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            tokio::io::AsyncWriteExt::write_all(&mut far_client, b"x")
                .await
                .unwrap();
        }
        assert!(!relay.is_finished());
        assert_eq!(relay.await.unwrap(), Ended::Idle);
        let quiet = started.elapsed() - Duration::from_secs(100);
        assert!(
            quiet >= Duration::from_secs(40) && quiet <= Duration::from_secs(50),
            "closed {quiet:?} after the last byte"
        );
    }
}
