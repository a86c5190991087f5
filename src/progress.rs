//! Progress on long work: a bar on a terminal (nothing otherwise), fed from
//! a byte counter the blocking stages bump; and the [`Meter`] that carries
//! that counter and the cancel flag into a job.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often the display is refreshed.
const TICK: Duration = Duration::from_millis(200);

/// What a running job reports through and listens to.
#[derive(Clone, Default)]
pub struct Meter {
    /// Bytes done so far, for the progress display.
    pub bytes: Arc<AtomicU64>,
    /// Set to ask the job to stop; it cleans up and fails with `Interrupted`.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
    /// A restore counts the data it hands on (decrypted, decompressed)
    /// rather than the stored bytes it fetches: the bar's total is then the
    /// size people know their database or files by.
    pub count_plaintext: bool,
}

pub struct Progress {
    pub counter: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A display for `label`; `total` bytes when known. Hidden unless stderr
    /// is a terminal and `enabled`.
    pub fn start(label: &str, total: Option<u64>, enabled: bool) -> Progress {
        Progress::start_finishing(label, total, enabled, "finishing")
    }

    /// [`Progress::start`], saying `finishing` once every byte is read: a
    /// full bar that stays while pg_restore builds indexes looks hung.
    pub fn start_finishing(
        label: &str,
        total: Option<u64>,
        enabled: bool,
        finishing: &str,
    ) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress {
                counter,
                bar: None,
                ticker: None,
            };
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                // `wide_bar` takes what the terminal has left, so the line
                // fits an 80-column terminal instead of wrapping every tick.
                ProgressStyle::with_template(
                    "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}",
                )
                .expect("valid template"),
            ),
        };
        bar.set_message(label.to_string());
        let (c, b) = (counter.clone(), bar.clone());
        // Short: it replaces the label on the bar's line.
        let finishing = format!("{label}: all read; {finishing}");
        let ticker = tokio::spawn(async move {
            let mut said = false;
            loop {
                let done = c.load(Ordering::Relaxed);
                b.set_position(done);
                // A full bar that does not go away looks hung; say why.
                if !said && total.is_some_and(|t| done >= t) {
                    b.set_message(finishing.clone());
                    said = true;
                }
                b.tick();
                tokio::time::sleep(TICK).await;
            }
        });
        Progress {
            counter,
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub fn finish(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1.2 GiB`, for plans and summaries.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
