//! Metrics as JSON lines in the run folder: one object per line, flushed as written, so a
//! killed run keeps everything up to its last step and plots can be drawn while it trains.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Map, Value};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending. When resuming at `resume_step`, lines from steps after it
    /// (written by the killed process after its last checkpoint) are dropped first, so the log
    /// reads as one uninterrupted run.
    pub fn open(path: &Path, resume_step: Option<u64>) -> anyhow::Result<Self> {
        if let Some(step) = resume_step {
            if path.exists() {
                let kept: Vec<String> = read_lines(path)?
                    .into_iter()
                    .filter(|line| {
                        serde_json::from_str::<Value>(line)
                            .ok()
                            .and_then(|v| v.get("step").and_then(Value::as_u64))
                            .is_some_and(|s| s <= step)
                    })
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                std::fs::write(path, text)
                    .with_context(|| format!("rewriting metrics log {}", path.display()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening metrics log {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("writing metrics log {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics log (blank or unparsable lines are skipped: a line cut short by a
/// kill must not make the whole log unreadable).
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Value>> {
    Ok(read_lines(path)?
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let file =
        File::open(path).with_context(|| format!("reading metrics log {}", path.display()))?;
    BufReader::new(file)
        .lines()
        .map(|l| l.with_context(|| format!("reading metrics log {}", path.display())))
        .collect()
}

/// The `(step, value)` series of `key` over records whose `kind` is `kind`.
pub fn series(records: &[Value], kind: &str, key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

/// Named scalar results of one step; the loop averages them over the logging window.
#[derive(Clone, Debug, Default)]
pub struct StepRecord(pub BTreeMap<&'static str, f64>);

impl StepRecord {
    pub fn add(&mut self, key: &'static str, value: f64) {
        self.0.insert(key, value);
    }

    /// 1 or 0, so that a logging window's mean is the share of its steps where `happened`.
    pub fn add_share(&mut self, key: &'static str, happened: bool) {
        self.add(key, f64::from(u8::from(happened)));
    }
}

/// Averages the window's records; `f` also gets its std and the share of positive values.
pub fn summarise(window: &[StepRecord]) -> Map<String, Value> {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for record in window {
        for (k, v) in &record.0 {
            let e = sums.entry(k).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    let mut line: Map<String, Value> = sums
        .iter()
        .map(|(k, (s, n))| (k.to_string(), json!(s / *n as f64)))
        .collect();
    let fs: Vec<f64> = window
        .iter()
        .filter_map(|r| r.0.get("f").copied())
        .collect();
    if !fs.is_empty() {
        let (_, std) = crate::eval::mean_and_population_std(&fs);
        line.insert("f_std".into(), json!(std));
        line.insert(
            "f_positive_ratio".into(),
            json!(fs.iter().filter(|f| **f > 0.0).count() as f64 / fs.len() as f64),
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_lines_after_the_checkpoint() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None)?;
        for step in 1..=5 {
            log.write(&json!({"kind": "train", "step": step, "loss": 1.0 / step as f64}))?;
        }
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)?
            .write_all(b"{\"kind\":\"tra")?; // a line cut by a kill
        let mut log = MetricsLog::open(&path, Some(3))?;
        log.write(&json!({"kind": "train", "step": 4, "loss": 0.2}))?;
        let records = read_records(&path)?;
        let steps: Vec<_> = series(&records, "train", "loss")
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(steps, [1.0, 2.0, 3.0, 4.0]);
        Ok(())
    }

    #[test]
    fn a_window_averages_each_key_over_the_steps_that_logged_it() {
        let mut window = Vec::new();
        for (loss, f) in [(1.0, Some(0.3)), (3.0, Some(-0.1)), (2.0, None)] {
            let mut record = StepRecord::default();
            record.add("loss", loss);
            record.add_share("clamped", loss > 1.5);
            if let Some(f) = f {
                record.add("f", f);
            }
            window.push(record);
        }
        let line = summarise(&window);
        let get = |k: &str| line.get(k).and_then(Value::as_f64).unwrap();
        assert!((get("loss") - 2.0).abs() < 1e-12);
        assert!((get("clamped") - 2.0 / 3.0).abs() < 1e-12);
        // f only on two steps: its mean, population std and share of positives are over those two.
        assert!((get("f") - 0.1).abs() < 1e-12);
        assert!((get("f_std") - 0.2).abs() < 1e-12);
        assert!((get("f_positive_ratio") - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_window_without_f_has_no_f_statistics() {
        let mut record = StepRecord::default();
        record.add("loss", 1.0);
        let line = summarise(&[record]);
        assert!(line.contains_key("loss"));
        assert!(!line.contains_key("f_std") && !line.contains_key("f_positive_ratio"));
    }
}
