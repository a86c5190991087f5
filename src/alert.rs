//! Alerts to webhooks: a failed backup, a breached RPO, a failed drill, WAL
//! archiving lagging behind the RPO target.
//!
//! Sending never blocks a job: [`Alerter::send`] only queues, and each
//! delivery runs on its own task with retries and backoff. The webhook URL
//! is a secret (anyone holding a Slack incoming-webhook URL can post to the
//! channel), so logs name a webhook by its position and host only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Webhook, WebhookFormat, WebhookUrl};

/// Attempts per delivery; the waits between them double from
/// [`first_backoff`].
const ATTEMPTS: u32 = 5;
/// Alerts waiting to be sent; beyond this new ones are dropped (and logged),
/// because a stuck receiver must not grow the daemon without bound.
const QUEUE: usize = 256;
/// Deliveries in flight at once (each may be sleeping between retries).
const INFLIGHT: usize = 16;
/// How long shutdown waits for deliveries still being retried.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    BackupFailed,
    RpoBreached,
    DrillFailed,
    WalArchiveLagging,
    WalSpoolFilling,
}

impl Event {
    /// The snake_case name, as in the webhook body and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::BackupFailed => "backup_failed",
            Event::RpoBreached => "rpo_breached",
            Event::DrillFailed => "drill_failed",
            Event::WalArchiveLagging => "wal_archive_lagging",
            Event::WalSpoolFilling => "wal_spool_filling",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Event::BackupFailed => "backup failed",
            Event::RpoBreached => "RPO breached",
            Event::DrillFailed => "restore drill failed",
            Event::WalArchiveLagging => "WAL archiving lagging",
            Event::WalSpoolFilling => "WAL spool filling",
        }
    }
}

/// The generic JSON body, documented in docs/operations.md ("Alerts").
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub source: &'static str,
    pub event: Event,
    pub policy: String,
    pub host: String,
    pub at: DateTime<Utc>,
    /// One sentence for a human.
    pub summary: String,
    /// Run id, backup id, drill id, ages: whatever the event has.
    pub details: serde_json::Value,
}

impl Alert {
    pub fn new(event: Event, policy: &str, summary: String, details: serde_json::Value) -> Alert {
        Alert {
            source: "drctl",
            event,
            policy: policy.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            at: Utc::now(),
            summary,
            details,
        }
    }

    fn body(&self, format: WebhookFormat) -> serde_json::Value {
        match format {
            WebhookFormat::Generic => serde_json::to_value(self).expect("alert serialises"),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    ":rotating_light: drctl on {}: {} for policy {}: {}",
                    self.host,
                    self.event.describe(),
                    self.policy,
                    self.summary
                ),
            }),
        }
    }
}

/// A cheap handle for queueing alerts.
#[derive(Clone)]
pub struct Alerter {
    tx: Option<mpsc::Sender<Alert>>,
}

/// Owns the delivery tasks; [`Dispatcher::finish`] flushes them at shutdown.
pub struct Dispatcher {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Alerter {
    /// Starts the delivery task. With no webhooks, alerts are only logged.
    pub fn start(hooks: Vec<Webhook>) -> (Alerter, Dispatcher) {
        if hooks.is_empty() {
            return (Alerter { tx: None }, Dispatcher { task: None });
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(deliver_all(hooks, rx));
        (Alerter { tx: Some(tx) }, Dispatcher { task: Some(task) })
    }

    /// Queues `alert` for every webhook; returns at once.
    pub fn send(&self, alert: Alert) {
        tracing::warn!(
            event = "alert_raised",
            alert = alert.event.as_str(),
            policy = %alert.policy,
            summary = %alert.summary,
            "alert"
        );
        if let Some(tx) = &self.tx
            && let Err(e) = tx.try_send(alert)
        {
            tracing::error!(error = %e, "Alert queue is full or closed; this alert is dropped (see the log line above).");
        }
    }
}

impl Dispatcher {
    /// Waits (at most [`FLUSH_TIMEOUT`]) for queued alerts to be delivered.
    /// Every [`Alerter`] handle must have been dropped first.
    pub async fn finish(self) {
        if let Some(task) = self.task
            && tokio::time::timeout(FLUSH_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("Gave up waiting for webhook deliveries at shutdown.");
        }
    }
}

fn first_backoff() -> Duration {
    // Tests shorten the wait; production starts at one second.
    std::env::var("DRCTL_ALERT_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

async fn deliver_all(hooks: Vec<Webhook>, mut rx: mpsc::Receiver<Alert>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("drctl/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the HTTP client for alerts; alerts are only logged.");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    let mut inflight = JoinSet::new();
    while let Some(alert) = rx.recv().await {
        for (n, hook) in hooks.iter().enumerate() {
            // Bounded: a receiver that is down holds up new deliveries (which
            // then wait in the queue, dropped beyond QUEUE) rather than
            // growing the daemon.
            while inflight.len() >= INFLIGHT {
                inflight.join_next().await;
            }
            inflight.spawn(deliver(client.clone(), n + 1, hook.clone(), alert.clone()));
        }
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
}

async fn deliver(client: reqwest::Client, n: usize, hook: Webhook, alert: Alert) {
    let url = match &hook.url {
        WebhookUrl::Literal(u) => u.clone(),
        WebhookUrl::Env(var) => match std::env::var(var) {
            Ok(u) => u,
            Err(_) => {
                tracing::error!(webhook = n, variable = %var, "Webhook URL variable is not set; alert not sent.");
                return;
            }
        },
    };
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(unparseable URL)".into());
    let body = alert.body(hook.format);
    let mut wait = first_backoff();
    for attempt in 1..=ATTEMPTS {
        let outcome = client.post(&url).json(&body).send().await;
        let problem = match outcome {
            Ok(r) if r.status().is_success() => {
                tracing::info!(event = "alert_delivered", webhook = n, host = %host, alert = alert.event.as_str(), policy = %alert.policy, "alert delivered");
                return;
            }
            // A 4xx other than 429 will not get better by retrying.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::error!(webhook = n, host = %host, status = %r.status(), "Webhook refused the alert; check its URL and format.");
                return;
            }
            Ok(r) => format!("HTTP {}", r.status()),
            // reqwest's error text can include the URL; keep only its kind.
            Err(e) if e.is_timeout() => "timed out".to_string(),
            Err(e) if e.is_connect() => "could not connect".to_string(),
            Err(_) => "request failed".to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::error!(webhook = n, host = %host, attempts = ATTEMPTS, problem = %problem, "Giving up on an alert.");
            return;
        }
        tracing::warn!(webhook = n, host = %host, attempt, problem = %problem, "Alert delivery failed; retrying.");
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_body_is_one_text_field() {
        let a = Alert::new(
            Event::BackupFailed,
            "orders-db",
            "pg_dump exited 1".into(),
            serde_json::json!({}),
        );
        let slack = a.body(WebhookFormat::Slack);
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("backup failed for policy orders-db: pg_dump exited 1"));
        assert_eq!(slack.as_object().unwrap().len(), 1);
        let generic = a.body(WebhookFormat::Generic);
        assert_eq!(generic["event"], "backup_failed");
        assert_eq!(generic["policy"], "orders-db");
    }
}
