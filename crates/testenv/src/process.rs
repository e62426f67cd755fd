//! Supervised child processes, free ports and tool lookup.

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The repository's `.tools/bin`, or `STAGETIME_TOOLS_DIR` when set.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STAGETIME_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin")
}

/// Path of an installed tool, or an error with the exact command that installs it.
pub fn tool(name: &str, installer_name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_dir().join(name);
    if path.exists() {
        return Ok(path);
    }
    bail!(
        "{} is missing. Install it with:\n    scripts/install-tools.sh {installer_name}\n(or `./taskw tools` for every tool)",
        path.display()
    )
}

/// First port of the range the harness hands out: below Linux's ephemeral range (32768 and
/// up), so neither `bind(:0)` nor an outgoing connection is ever given one of these ports.
const PORT_RANGE_START: u32 = 20_000;
/// Ports of one test binary's block (blocks by process id keep binaries apart).
const PORT_BLOCK: u32 = 2_000;
/// Blocks in the range (20000–31999).
const PORT_BLOCKS: u32 = 6;

/// A free TCP port on 127.0.0.1 that this process has not handed out before (until its block
/// of 2000 wraps). The OS never hands it out either: it lies outside the ephemeral range. So
/// a test that kills a process and restarts it on its port never finds the port taken by
/// another test's process meanwhile.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = PORT_RANGE_START + (std::process::id() % PORT_BLOCKS) * PORT_BLOCK;
    for _ in 0..PORT_BLOCK {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % PORT_BLOCK;
        let port = u16::try_from(port).context("port range")?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in 127.0.0.1:{base}..{}", base + PORT_BLOCK)
}

/// A child process that is stopped when this handle drops — or when the test binary dies,
/// because its supervising shell waits on our stdin pipe and kills the child once it closes.
pub struct Supervised {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// Shell that runs "$@" in the background, waits until its stdin closes, then kills the child
/// and removes `$CLEANUP_DIR` (if set) so nothing is left behind after the test binary exits.
const SUPERVISOR: &str = r#"
"$@" </dev/null &
child=$!
read -r _ || true
kill -KILL "$child" 2>/dev/null
wait "$child" 2>/dev/null
if [ -n "${CLEANUP_DIR:-}" ]; then rm -rf "$CLEANUP_DIR"; fi
"#;

impl Supervised {
    /// Starts `program args` with output appended to `log`; `cleanup` is removed after it stops.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("supervise")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        if let Some(dir) = cleanup {
            cmd.env("CLEANUP_DIR", dir);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            log: log.to_path_buf(),
        })
    }

    /// [`Self::spawn`] with `env` set for the program alone (through `env(1)`: the supervising
    /// shell keeps our environment).
    pub fn spawn_with_env<K: std::fmt::Display, V: std::fmt::Display>(
        name: &str,
        program: &Path,
        env: &[(K, V)],
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut full: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        full.push(program.display().to_string());
        full.extend(args.iter().cloned());
        Self::spawn(name, Path::new("env"), &full, log, None)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- {} log ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Stops the process and waits for it.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory for one process's data and logs under `target/testenv/` (removed when the
/// process stops).
pub fn scratch_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/testenv");
    std::fs::create_dir_all(&base)?;
    remove_stale(&base);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = base.join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes scratch directories of test binaries that are no longer running (a shared environment
/// lives in a static, which is never dropped, so its directories outlive the process).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
