//! PostgreSQL `LISTEN`/`NOTIFY` for messages between replicas: one
//! connection of its own that listens on a channel (notifications arrive on
//! the connection that listens, so the store's shared connection cannot
//! carry them) and is re-made when it drops, and `NOTIFY` through the
//! store's connection. What the messages mean is the caller's business
//! (`crate::events`).

use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::PostgresStore;
use super::rows::db;
use crate::error::Result;

/// How often the listening connection is asked a `SELECT 1`, and how long
/// the answer may take: a connection that died without a word (a NAT or a
/// failover that sent no reset) is noticed and made again within this,
/// not after TCP's keep-alive of hours.
const HEARTBEAT: Duration = Duration::from_secs(30);
const HEARTBEAT_ANSWER: Duration = Duration::from_secs(10);

/// The largest payload PostgreSQL's `NOTIFY` takes (8000 bytes in the
/// default build), less a margin.
pub const MAX_PAYLOAD: usize = 7900;

/// What the listening connection hands on.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A notification's payload.
    Message(String),
    /// The listening connection was re-made: notifications sent while it
    /// was down are lost.
    Gap,
}

impl PostgresStore {
    /// Sends `payload` to every connection listening on `channel`, this
    /// replica's included.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// Listens on `channel` until `stop`, handing every payload to `out`. A lost
/// connection is re-made (1 s, doubling to 30 s, between attempts), and a
/// [`Heard::Gap`] is handed on once it listens again.
pub fn listen(url: String, channel: String, out: mpsc::Sender<Heard>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        let mut first = true;
        loop {
            let ended = tokio::select! {
                () = stop.cancelled() => return,
                r = listen_once(&url, &channel, &out, first) => r,
            };
            match ended {
                // The receiver is gone: nobody to hand messages to.
                Ok(false) => return,
                Ok(true) => {
                    tracing::warn!(%channel, "postgresql listening connection ended; listening again");
                    wait = Duration::from_secs(1);
                }
                Err(error) => {
                    tracing::warn!(%channel, error = %crate::error::Chain(&error), "cannot listen on postgresql; retrying");
                }
            }
            first = false;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
}

/// One listening connection: `Ok(true)` when it ended, `Ok(false)` when
/// `out` was closed.
async fn listen_once(
    url: &str,
    channel: &str,
    out: &mpsc::Sender<Heard>,
    first: bool,
) -> Result<bool> {
    let (client, mut connection) = tokio_postgres::connect(url, super::tls())
        .await
        .map_err(db)?;
    let (tx, mut messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "postgresql listening connection failed");
                    return;
                }
            }
        }
    });
    // A quoted identifier: the channel name is ours, never a client's.
    let listen = client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await;
    if let Err(e) = listen {
        driver.abort();
        return Err(db(e));
    }
    if !first && out.send(Heard::Gap).await.is_err() {
        driver.abort();
        return Ok(false);
    }
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            m = messages.recv() => match m {
                Some(AsyncMessage::Notification(n)) => {
                    if out.send(Heard::Message(n.payload().to_owned())).await.is_err() {
                        driver.abort();
                        return Ok(false);
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = heartbeat.tick() => {
                let answer =
                    tokio::time::timeout(HEARTBEAT_ANSWER, client.simple_query("SELECT 1")).await;
                if !matches!(answer, Ok(Ok(_))) {
                    tracing::warn!(%channel, "the postgresql listening connection did not answer its heartbeat");
                    break;
                }
            }
        }
    }
    driver.abort();
    // Kept until here: dropping the client closes the connection.
    drop(client);
    Ok(true)
}
