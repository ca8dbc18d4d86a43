//! The `sshwarden run` processes of one test, whichever their source: each
//! worker's command line, stdout (its commands), stderr (its JSON logs) and
//! `/metrics`; the scratch directory they write to; the waits on what they
//! issued; and, when the test fails, the report with every worker's tails.
//! The Kinesis and Kafka harnesses build on this and add their source.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    free_addr, metrics_page, read_json_lines, report_failure, sample_sum, sshwarden_bin,
    tail_lines, Deadline, Expected, Tally, MAX_WAIT, POLL,
};

/// One `sshwarden run` process; killed when dropped.
pub struct Worker {
    pub id: String,
    pub child: Child,
    pub status: Option<ExitStatus>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub metrics: SocketAddr,
    pub started: Instant,
}

impl Worker {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The JSON commands printed so far (a torn last line is left out).
    pub fn commands(&self) -> Vec<Value> {
        read_json_lines(&self.stdout)
    }

    pub fn logs(&self) -> Vec<Value> {
        read_json_lines(&self.stderr)
    }

    /// Log lines with this message, in order.
    pub fn logs_with(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    /// The `/metrics` page; fails the test when the worker does not serve it.
    pub fn metrics(&self) -> String {
        let (status, body) = super::http_get(&format!("http://{}/metrics", self.metrics))
            .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}", self.id));
        assert_eq!(status, 200, "/metrics of {}: {body}", self.id);
        body
    }

    /// The sum of a metric's samples (0 when absent or unreachable).
    pub fn metric(&self, name: &str) -> f64 {
        sample_sum(&metrics_page(self.metrics), name, &[])
    }

    /// The sum of a metric's samples with the label `label` (`kind="decode"`).
    pub fn metric_where(&self, name: &str, label: &str) -> f64 {
        sample_sum(&metrics_page(self.metrics), name, &[label])
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("wait"));
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.pid());
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(POLL / 2);
        }
    }

    pub fn tails(&self, lines: usize) -> String {
        format!(
            "----- worker {} (pid {}, {:?}, up {:.1?}) stdout {}:\n{}\n----- stderr {}:\n{}\n",
            self.id,
            self.pid(),
            self.status,
            self.started.elapsed(),
            self.stdout.display(),
            tail_lines(&self.stdout, lines / 4),
            self.stderr.display(),
            tail_lines(&self.stderr, lines),
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One test's workers and scratch directory. When the test fails, it
/// prints which test, after how long, its `resources` and every worker's
/// tails, and keeps the directory; it kills every worker when dropped.
pub struct Workers {
    pub label: String,
    pub dir: tempfile::TempDir,
    pub started: Instant,
    /// What the report names besides the files: stream and lease table,
    /// topic and group.
    pub resources: String,
    pub workers: Vec<Worker>,
    /// `--policy` of the workers spawned next: `seed` (what the rule-level
    /// truth models) unless a test needs another.
    pub policy: &'static str,
    /// Appended to the workers' config file (a `[fleet]` section, say).
    pub config_extra: &'static str,
}

impl Drop for Workers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            report_failure(
                &self.label,
                self.started,
                &self.resources,
                &mut self.dir,
                self.workers.iter().map(|w| w.tails(40)),
            );
        } else {
            self.log("passed");
        }
    }
}

impl Workers {
    /// `kind` names the scratch directory (`sshwarden-it-<kind>-<label>-…`).
    pub fn new(kind: &str, label: &str, resources: String) -> Workers {
        Workers {
            label: label.to_owned(),
            dir: tempfile::Builder::new()
                .prefix(&format!("sshwarden-it-{kind}{label}-"))
                .tempdir()
                .unwrap(),
            started: Instant::now(),
            resources,
            workers: Vec::new(),
            policy: "seed",
            config_extra: "",
        }
    }

    pub fn log(&self, what: impl std::fmt::Display) {
        eprintln!(
            "[{} +{:>6.2}s] {what}",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Starts `sshwarden run` as `worker_id` with no cooldown, no blast
    /// radius, 10 s to shut down and metrics on a free port, then
    /// `run_args` (the source's, and any other); a clean environment but
    /// for PATH, SSHWARDEN_LOG=info and `env` (which may override it).
    /// Returns the worker's index; a worker id may be started again.
    pub fn spawn(&mut self, worker_id: &str, run_args: &[&str], env: &[(&str, &str)]) -> usize {
        let metrics = free_addr();
        let n = self.workers.len();
        let stdout = self
            .dir
            .path()
            .join(format!("{n}-{worker_id}.stdout.jsonl"));
        let stderr = self
            .dir
            .path()
            .join(format!("{n}-{worker_id}.stderr.jsonl"));
        let metrics_arg = metrics.to_string();
        // The harness stamps traffic up to a minute and a half ahead of the
        // wall clock (so that a test's windows are aligned and none is late
        // by the idle clock when it is written): allow that much skew ahead
        // of the arrival time instead of the default minute, or those
        // events would be clamped into earlier windows.
        let config = self.dir.path().join("harness.toml");
        std::fs::write(
            &config,
            format!("[input]\nmax_future_skew_secs = 300\n{}", self.config_extra),
        )
        .unwrap();
        let config_arg = config.to_string_lossy().into_owned();
        // The seed policy: what the rule-level truth (loadgen's) models, so
        // these tests check delivery and checkpoints against exact commands.
        let mut args: Vec<&str> = vec![
            "--config",
            &config_arg,
            "--policy",
            self.policy,
            "--blast-radius-max",
            "0",
            "--cooldown-secs",
            "0",
            "run",
            "--worker-id",
            worker_id,
            "--shutdown-secs",
            "10",
            "--metrics-addr",
            &metrics_arg,
        ];
        args.extend_from_slice(run_args);
        let mut cmd = Command::new(sshwarden_bin());
        cmd.args(&args)
            .env_clear()
            .env("SSHWARDEN_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().expect("spawn sshwarden run");
        self.log(format_args!(
            "started worker {worker_id} (pid {}), metrics on {metrics}",
            child.id()
        ));
        self.workers.push(Worker {
            id: worker_id.to_owned(),
            child,
            status: None,
            stdout,
            stderr,
            metrics,
            started: Instant::now(),
        });
        n
    }

    /// Every worker's commands, by worker index.
    pub fn outputs(&self) -> Vec<Vec<Value>> {
        self.workers.iter().map(Worker::commands).collect()
    }

    /// Fails the test when a worker it did not stop has exited.
    pub fn check_running(&mut self) {
        for w in &mut self.workers {
            if w.status.is_none() {
                if let Some(s) = w.exited() {
                    panic!("worker {} exited unexpectedly: {s}", w.id);
                }
            }
        }
    }

    /// Waits (at most MAX_WAIT, for `what`) until worker `w` has issued
    /// `n` commands.
    pub fn wait_commands_from(&mut self, w: usize, n: usize, what: &str) {
        let d = Deadline::new(what, MAX_WAIT);
        while self.workers[w].commands().len() < n {
            self.check_running();
            d.check(|| format!("fewer than {n}"));
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every expected command was issued by some worker.
    pub fn wait_for_commands(&mut self, expected: &[Expected]) -> Tally {
        let d = Deadline::new(format!("{} expected commands", expected.len()), MAX_WAIT);
        loop {
            self.check_running();
            let t = Tally::new(expected, &self.outputs());
            let missing = t.missing(expected);
            if missing.is_empty() {
                return t;
            }
            d.check(|| {
                format!(
                    "{} of {} missing, e.g. {:?}",
                    missing.len(),
                    expected.len(),
                    &missing[..missing.len().min(5)]
                )
            });
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the `readers` counted the [`super::END_MARKER`] of every
    /// one of `shards` (shards, or partitions as `topic/N`) more than
    /// `before` times (the undecodable records written before it): then
    /// every record before the marker was read and its commands delivered.
    pub fn wait_end_markers(&mut self, readers: &[usize], shards: &[String], before: usize) {
        let d = Deadline::new(
            format!("the end markers of {shards:?} to be read"),
            MAX_WAIT,
        );
        loop {
            self.check_running();
            let pages: Vec<String> = readers
                .iter()
                .map(|&w| metrics_page(self.workers[w].metrics))
                .collect();
            let counted = super::end_markers_counted(&pages, shards);
            if counted.values().all(|&n| n > before as f64) {
                self.log(format_args!("read to the end of {shards:?}"));
                return;
            }
            d.check(|| format!("end markers counted: {counted:?}"));
            std::thread::sleep(POLL);
        }
    }
}
