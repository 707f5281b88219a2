//! Progress a person can follow: a bar with rows/s and ETA on a terminal (`indicatif`), one
//! structured line per batch otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Where a migration reports.
pub trait Progress {
    /// A line of its own (a phase starts or ends, a decision).
    fn note(&mut self, line: &str);
    /// A pass over a table starts: `what` (backfill, sweep, verify), `total` rows expected.
    fn start(&mut self, table: &str, what: &str, total: u64);
    /// A batch of the pass is done: `rows` read, `written` shadows written.
    fn batch(&mut self, rows: u64, written: u64);
    /// The pass is done.
    fn finish(&mut self);
}

/// A bar on a terminal, lines otherwise.
pub fn for_terminal_or_lines() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar { bar: None })
    } else {
        Box::new(Lines::default())
    }
}

/// The terminal bar.
struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn start(&mut self, table: &str, what: &str, total: u64) {
        let bar = ProgressBar::new(total.max(1));
        let style = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} rows, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(format!("{what} {table}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    fn batch(&mut self, rows: u64, _written: u64) {
        if let Some(b) = &self.bar {
            if b.position() + rows > b.length().unwrap_or(0) {
                b.set_length(b.position() + rows);
            }
            b.inc(rows);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// One line per batch on standard output.
#[derive(Default)]
struct Lines {
    table: String,
    what: String,
    total: u64,
    done: u64,
    written: u64,
    batches: u64,
    started: Option<Instant>,
}

impl Lines {
    fn line(&self, rows: u64) -> String {
        let secs = self
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0)
            .max(1e-3);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 && self.total > self.done {
            format!("{:.0}s", (self.total - self.done) as f64 / rate)
        } else {
            "0s".to_owned()
        };
        format!(
            "migrate: table={} pass={} batch={} rows={rows} done={} of={} written={} rate={rate:.0}/s eta={eta}",
            self.table, self.what, self.batches, self.done, self.total, self.written
        )
    }
}

impl Progress for Lines {
    fn note(&mut self, line: &str) {
        println!("{line}");
        let _ = std::io::stdout().flush();
    }

    fn start(&mut self, table: &str, what: &str, total: u64) {
        *self = Lines {
            table: table.to_owned(),
            what: what.to_owned(),
            total,
            started: Some(Instant::now()),
            ..Lines::default()
        };
    }

    fn batch(&mut self, rows: u64, written: u64) {
        self.done += rows;
        self.written += written;
        self.batches += 1;
        println!("{}", self.line(rows));
        let _ = std::io::stdout().flush();
    }

    fn finish(&mut self) {
        if self.started.is_some() {
            println!(
                "migrate: table={} pass={} finished: {} row(s) read, {} written",
                self.table, self.what, self.done, self.written
            );
            self.started = None;
        }
    }
}

/// Collects what would be printed (tests).
#[derive(Debug, Default)]
pub struct Recorded {
    /// Every note and pass, in order.
    pub lines: Vec<String>,
}

impl Progress for Recorded {
    fn note(&mut self, line: &str) {
        self.lines.push(line.to_owned());
    }
    fn start(&mut self, table: &str, what: &str, total: u64) {
        self.lines.push(format!("start {what} {table} {total}"));
    }
    fn batch(&mut self, rows: u64, written: u64) {
        self.lines.push(format!("batch {rows} {written}"));
    }
    fn finish(&mut self) {
        self.lines.push("finish".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_line_carries_rate_and_eta() {
        let mut l = Lines::default();
        l.start("public.t", "backfill", 1000);
        l.done = 500;
        l.written = 499;
        l.batches = 5;
        let line = l.line(100);
        for part in [
            "table=public.t",
            "pass=backfill",
            "batch=5",
            "rows=100",
            "done=500",
            "of=1000",
            "written=499",
            "rate=",
            "eta=",
        ] {
            assert!(line.contains(part), "{line}");
        }
    }
}
