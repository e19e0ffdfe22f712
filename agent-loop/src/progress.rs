//! Progress of a run: an indicatif bar on a terminal (done/total, running, mean score so
//! far, ETA), plain lines otherwise (one per finished trajectory, for logs and CI).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::ResultRecord;
use crate::run::RunObserver;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    done: usize,
    score_sum: f64,
    running: usize,
}

impl Counts {
    fn mean(&self) -> f64 {
        if self.done == 0 {
            0.0
        } else {
            self.score_sum / self.done as f64
        }
    }
}

/// The observer for a terminal (a bar) or for logs (lines on stderr).
pub fn observer_for_stderr() -> Box<dyn RunObserver> {
    if std::io::stderr().is_terminal() {
        Box::new(BarObserver::new())
    } else {
        Box::new(LineObserver::default())
    }
}

/// An indicatif progress bar on stderr.
#[derive(Debug)]
pub struct BarObserver {
    bar: ProgressBar,
    counts: Mutex<Counts>,
}

impl Default for BarObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl BarObserver {
    pub fn new() -> BarObserver {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} · ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        BarObserver {
            bar,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn refresh(&self, c: &Counts) {
        self.bar
            .set_message(format!("running {} · mean {:.3}", c.running, c.mean()));
    }
}

impl RunObserver for BarObserver {
    fn start(&self, total: usize, done: &[ResultRecord]) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = total;
        c.done = done.len();
        c.score_sum = done.iter().map(ResultRecord::score_or_zero).sum();
        self.bar.set_length(total as u64);
        self.bar.set_position(done.len() as u64);
        self.bar.reset_eta();
        self.refresh(&c);
    }

    fn trajectory_started(&self, _task_id: &str, _trajectory: u32) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running += 1;
        self.refresh(&c);
    }

    fn trajectory_finished(&self, record: &ResultRecord) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running = c.running.saturating_sub(1);
        c.done += 1;
        c.score_sum += record.score_or_zero();
        self.bar.set_position(c.done as u64);
        self.refresh(&c);
    }

    fn trajectory_abandoned(&self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running = c.running.saturating_sub(1);
        self.refresh(&c);
    }

    fn message(&self, text: &str) {
        self.bar.println(text);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// One line per finished trajectory on stderr.
#[derive(Debug, Default)]
pub struct LineObserver {
    counts: Mutex<Counts>,
}

impl RunObserver for LineObserver {
    fn start(&self, total: usize, done: &[ResultRecord]) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = total;
        c.done = done.len();
        c.score_sum = done.iter().map(ResultRecord::score_or_zero).sum();
        let _ = writeln!(
            std::io::stderr(),
            "dsbox eval: {total} trajectories planned, {} already finished",
            done.len()
        );
    }

    fn trajectory_started(&self, _task_id: &str, _trajectory: u32) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running += 1;
    }

    fn trajectory_finished(&self, r: &ResultRecord) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running = c.running.saturating_sub(1);
        c.done += 1;
        c.score_sum += r.score_or_zero();
        let score = r
            .score
            .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2}"));
        let _ = writeln!(
            std::io::stderr(),
            "[{}/{}] {}#{} score {score} ({}, {} turns, {:.1} s) · running {} · mean {:.3}",
            c.done,
            c.total,
            r.sample_id,
            r.trajectory,
            r.end_reason.as_str(),
            r.total_turns,
            r.execution_time,
            c.running,
            c.mean()
        );
    }

    fn trajectory_abandoned(&self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.running = c.running.saturating_sub(1);
    }

    fn message(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "dsbox eval: {text}");
    }
}
