//! The OCI image as `./taskw image` builds it: pushed to a registry on loopback, pulled back and
//! inspected (user, entrypoint, platform, labels, exactly the expected files, no shell), then run
//! with podman + runc: every binary's `--help`, and the server started from the image against the
//! test Redis with the image's own health check (`stagetime health`) run inside the container.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use stagetime_testenv::{
    TestEnv,
    process::{Supervised, free_port, scratch_dir, tool},
    wait_for,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const BINARIES: [&str; 6] = [
    "stagetime",
    "stagetime-server",
    "stagetime-creator",
    "stagetime-informer",
    "stagetime-operator",
    "stagetime-web",
];

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Podman with its own storage, runtime and registry configuration in a scratch directory (vfs
/// storage, runc, cgroupfs, ulimits this machine allows), so the test touches nothing global.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n",
                dir.display()
            ),
        )?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{}/events.log\"\n",
                dir.display()
            ),
        )?;
        std::fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            );
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "--all", "--force"]).output();
        // vfs layers are plain directories; podman removes them with its images.
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_holds_every_binary_and_runs_them_with_podman() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let crane = tool("crane", "crane")?;
    let scratch = scratch_dir("image")?;

    // A registry on loopback, as `./taskw up` starts one.
    let port = free_port()?;
    let registry = format!("127.0.0.1:{port}");
    let mut serve = Supervised::spawn(
        "registry",
        &crane,
        &[
            "registry".into(),
            "serve".into(),
            "--address".into(),
            registry.clone(),
        ],
        &scratch.join("registry.log"),
        None,
    )?;
    wait_for("the registry", Duration::from_secs(20), || {
        let ok = Command::new(&crane)
            .args(["catalog", "--insecure", &registry])
            .output()
            .is_ok_and(|o| o.status.success());
        async move { ok.then_some(()) }
    })
    .await
    .map_err(|e| e.context(serve.log_tail()))?;

    // `./taskw image` (the task runs exactly this script).
    let built = run(Command::new("scripts/image.sh")
        .current_dir(ROOT)
        .env("STAGETIME_REGISTRY", &registry))?;
    let stdout = String::from_utf8(built.stdout)?;
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split_whitespace().collect();
    let [_, reference, size, user] = fields[..] else {
        anyhow::bail!("unexpected last line of image.sh: {last:?}");
    };
    let size: u64 = size.trim_start_matches("size=").parse()?;
    assert_eq!(user, "user=65532:65532");
    assert!(
        reference.starts_with(&format!("{registry}/stagetime@sha256:")),
        "{reference}"
    );

    // Pulled back: configuration and manifest as the registry serves them.
    let config: serde_json::Value = serde_json::from_slice(
        &run(Command::new(&crane).args(["config", "--insecure", reference]))?.stdout,
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(
        &run(Command::new(&crane).args(["manifest", "--insecure", reference]))?.stdout,
    )?;
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/stagetime-server"])
    );
    let head = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(ROOT))?;
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        String::from_utf8(head.stdout)?.trim()
    );
    for label in ["title", "version", "created", "source", "licenses"] {
        assert!(
            labels[format!("org.opencontainers.image.{label}")].is_string(),
            "label {label} missing: {labels}"
        );
    }
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers.len(), 1, "one layer, no base image: {manifest}");

    // Exactly the expected files, all root-owned, binaries executable, no shell.
    let export = scratch.join("fs.tar");
    run(Command::new(&crane).args([
        "export",
        "--insecure",
        reference,
        &export.display().to_string(),
    ]))?;
    let listing = run(Command::new("tar").args(["-tvf", &export.display().to_string()]))?;
    let listing = String::from_utf8(listing.stdout)?;
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect();
    let mut expected: BTreeSet<String> = BINARIES
        .iter()
        .map(|b| format!("usr/local/bin/{b}"))
        .collect();
    expected.extend(
        [
            "etc/passwd",
            "etc/group",
            "etc/ssl/certs/ca-certificates.crt",
        ]
        .map(String::from),
    );
    assert_eq!(files, expected, "files in the image:\n{listing}");
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "not root-owned: {line}");
        if line.contains("usr/local/bin/") && line.starts_with('-') {
            assert!(line.starts_with("-rwxr-xr-x"), "not executable: {line}");
        }
    }
    println!(
        "image {reference}: {:.1} MiB compressed, user 65532:65532",
        size as f64 / f64::from(1 << 20)
    );

    // Run it: podman + runc, the image pulled from the loopback registry.
    let podman = Podman::new(&scratch)?;
    run(podman
        .cmd()
        .args(["pull", "--quiet", "--tls-verify=false", reference]))?;
    for binary in BINARIES {
        let out = run(podman.cmd().args([
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--entrypoint",
            &format!("/usr/local/bin/{binary}"),
            reference,
            "--help",
        ]))?;
        let help = String::from_utf8(out.stdout)?;
        assert!(help.contains("Usage:"), "{binary} --help:\n{help}");
        println!("in the image: {binary} --help ok");
    }
    let whoami = run(podman.cmd().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/stagetime",
        reference,
        "--version",
    ]))?;
    assert!(String::from_utf8(whoami.stdout)?.starts_with("stagetime "));

    // The server from the image, host network (loopback only) to reach the test Redis, and its
    // health check from inside the container.
    let api = free_port()?;
    let admin = free_port()?;
    let name = format!("stagetime-server-{api}");
    run(podman.cmd().args([
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--env",
        &format!("REDIS_URL={}", env.redis.url()),
        "--env",
        &format!("REDIS_PREFIX={}", env.redis_prefix("image")),
        reference,
        "--bind",
        "127.0.0.1",
        "--port",
        &api.to_string(),
        "--admin-addr",
        &format!("127.0.0.1:{admin}"),
        "--auth",
        "none",
    ]))?;
    let health = |address: String| {
        podman
            .cmd()
            .args([
                "exec",
                &name,
                "/usr/local/bin/stagetime",
                "health",
                "--admin",
                &address,
            ])
            .output()
    };
    let ready = wait_for("the server's health check", Duration::from_secs(30), || {
        let ok = health(format!("127.0.0.1:{admin}")).is_ok_and(|o| o.status.success());
        async move { ok.then_some(()) }
    })
    .await;
    if let Err(error) = ready {
        let logs = podman.cmd().args(["logs", &name]).output()?;
        anyhow::bail!("{error}\n{}", String::from_utf8_lossy(&logs.stderr));
    }
    // The check can fail: nothing answers on the API port's neighbour.
    let dead = health(format!("127.0.0.1:{}", free_port()?))?;
    assert!(!dead.status.success(), "health of a closed port passed");
    println!("in the image: stagetime-server ready, `stagetime health` ok");
    run(podman.cmd().args(["rm", "--force", &name]))?;
    serve.stop();
    Ok(())
}
