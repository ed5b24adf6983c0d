//! Wake-up pushes for sleeping devices through an operator webhook.
//!
//! When an envelope lands in a mailbox with no live subscription and a
//! registered token, the relay POSTs the token (raw bytes, nothing else: no
//! sender, no size, no content) to the configured URL. Tokens are coalesced:
//! a burst of envelopes within the window produces one call per token.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::error::{RelayError, Result};

/// Sends coalesced webhook calls.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone)]
struct Target {
    host_port: String,
    host: String,
    path: String,
}

fn parse(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| RelayError::Config("webhook must be http://".into()))?;
    let (hp, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:80")
    };
    let host = hp.to_owned();
    Ok(Target {
        host_port,
        host,
        path: path.to_owned(),
    })
}

impl Notifier {
    /// Starts the coalescing task.
    pub fn start(url: &str, window: Duration, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let target = parse(url)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut pending = HashSet::new();
                pending.insert(first);
                // Coalesce everything that arrives within the window.
                let deadline = tokio::time::sleep(window);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        t = rx.recv() => match t {
                            Some(t) => { pending.insert(t); }
                            None => break,
                        },
                    }
                }
                for token in pending {
                    let target = target.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), post(&target, &token))
                            .await
                        {
                            Ok(Ok(())) => {
                                metrics.push_webhooks.fetch_add(1, Relaxed);
                            }
                            _ => tracing::warn!("push webhook call failed"),
                        }
                    });
                }
            }
        });
        Ok(Arc::new(Self { tx }))
    }

    /// Queues a wake-up for `token`.
    pub fn notify(&self, token: Vec<u8>) {
        let _ = self.tx.send(token);
    }
}

async fn post(t: &Target, token: &[u8]) -> Result<()> {
    let mut s = TcpStream::connect(&t.host_port).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.path,
        t.host,
        token.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(token).await?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).await?;
    if &status[9..10] != b"2" {
        return Err(RelayError::Io(std::io::Error::other(
            "webhook answered non-2xx",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse("http://127.0.0.1:8080/push").unwrap();
        assert_eq!(t.host_port, "127.0.0.1:8080");
        assert_eq!(t.path, "/push");
        assert_eq!(parse("http://h").unwrap().host_port, "h:80");
        assert!(parse("https://h/").is_err());
    }
}
