//! `stagetime`: submit revision runs in the original JSON format, and get, list or watch them.
//!
//! Exit codes: 0 success (for `watch`: the run succeeded, possibly with allowed failures);
//! 1 the watched run ended Failed or Cancelled; 2 invalid input; 3 not found; 4 server
//! unavailable or any other error.
#![forbid(unsafe_code)]

mod table;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{Parser, Subcommand};
use stagetime_proto::client::{AuthedChannel, Connection};
use stagetime_proto::{
    revisionrun::{
        StatusGetRequest, stage_time_application_service_client::StageTimeApplicationServiceClient,
        statuses_client::StatusesClient,
    },
    stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient},
};
use tonic::Code;

/// stageTime command line.
#[derive(Parser, Debug)]
#[command(name = "stagetime", version, about)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        env = "STAGETIME_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// File holding the bearer token sent to the server.
    #[arg(long = "token-file", env = "STAGETIME_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to verify an https:// server with (default: the system's roots).
    #[arg(long = "ca-file", env = "STAGETIME_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a revision run from a JSON file in the original format; prints its id.
    Submit {
        /// The request file (protobuf JSON of CreateRevisionRunRequest).
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Show one revision run.
    Get {
        /// Revision run id.
        id: String,
    },
    /// One-line status by revision run id or commit id (the compatibility API).
    Status {
        /// Revision run id or commit id.
        id: String,
    },
    /// List revision runs, newest first.
    List {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this phase (queued, pending, running, succeeded, failed, cancelled, …).
        #[arg(long)]
        phase: Option<String>,
    },
    /// Cancel a revision run: running PipelineRuns are cancelled gracefully, later stages skipped.
    Cancel {
        /// Revision run id.
        id: String,
    },
    /// Retry a Failed or Cancelled revision run from its first stage that did not succeed.
    Retry {
        /// Revision run id.
        id: String,
    },
    /// Follow a revision run with a live table until it ends.
    Watch {
        /// Revision run id.
        id: String,
    },
    /// Print the step logs of a revision run's runs, stage by stage (like `tkn pr logs`).
    Logs {
        /// Revision run id.
        id: String,
        /// Only this run (its name in the revision run).
        #[arg(long)]
        run: Option<String>,
        /// Keep following until the runs have ended.
        #[arg(short, long)]
        follow: bool,
        /// Only the last lines of each step.
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Probe a service's admin endpoint (for container health checks: the image has no shell or
    /// curl). Exit 0 when it answers 200, 1 otherwise.
    Health {
        /// Admin address of the service (`host:port`, plain HTTP).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Path to probe: `/readyz` (dependencies reachable) or `/healthz` (process alive).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            let code = match error
                .downcast_ref::<tonic::Status>()
                .map(tonic::Status::code)
            {
                Some(Code::InvalidArgument) => 2,
                Some(Code::NotFound) => 3,
                _ if error.downcast_ref::<std::io::Error>().is_some()
                    || error.downcast_ref::<serde_json::Error>().is_some() =>
                {
                    2
                }
                _ => 4,
            };
            ExitCode::from(code)
        }
    }
}

impl Cli {
    fn connection(&self) -> Connection {
        Connection {
            url: self.server.clone(),
            ca_file: self.ca_file.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let connection = cli.connection();
    match cli.command {
        Command::Submit { file } => {
            let request = stagetime_proto::json::parse(&std::fs::read_to_string(&file)?)?;
            let mut client = StageTimeApplicationServiceClient::new(connection.connect().await?);
            let reply = client.create_revision_run(request).await?.into_inner();
            let id = reply
                .success
                .map(|s| String::from_utf8_lossy(&s.data).into_owned())
                .unwrap_or_default();
            println!("{id}");
        }
        Command::Get { id } => {
            let mut client = RevisionRunsClient::new(connection.connect().await?);
            let rr = client.get(pb::GetRequest { id }).await?.into_inner();
            print!("{}", table::render(&rr));
        }
        Command::Status { id } => {
            let mut client = StatusesClient::new(connection.connect().await?);
            let reply = client
                .get_status(StatusGetRequest {
                    revision_run_id: id,
                })
                .await?
                .into_inner();
            if let Some(s) = reply.status {
                println!("{}  {}  {}", s.id, s.updated, s.status);
            }
        }
        Command::List { repo, limit, phase } => {
            let phase = match phase {
                Some(name) => table::phase_by_name(&name)
                    .ok_or_else(|| anyhow::anyhow!("unknown phase {name:?}"))?,
                None => pb::Phase::Unspecified,
            };
            let mut client = RevisionRunsClient::new(connection.connect().await?);
            let page = client
                .list(pb::ListRequest {
                    repo_name: repo.unwrap_or_default(),
                    page_size: limit,
                    phase: phase as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("{:40}  {:28}  {:5}  CREATED", "ID", "PHASE", "STAGE");
            for rr in page.revision_runs {
                let stage = rr.current_stage.map_or("-".to_string(), |s| s.to_string());
                println!(
                    "{:40}  {:28}  {:5}  {}",
                    rr.id,
                    table::phase_name(rr.phase),
                    stage,
                    rr.created
                );
            }
        }
        Command::Cancel { id } => {
            let mut client = RevisionRunsClient::new(connection.connect().await?);
            let rr = client.cancel(pb::CancelRequest { id }).await?.into_inner();
            print!("{}", table::render(&rr));
        }
        Command::Retry { id } => {
            let mut client = RevisionRunsClient::new(connection.connect().await?);
            let rr = client.retry(pb::RetryRequest { id }).await?.into_inner();
            print!("{}", table::render(&rr));
        }
        Command::Watch { id } => return watch(connection.connect().await?, id).await,
        Command::Logs {
            id,
            run,
            follow,
            tail,
        } => {
            let request = pb::LogsRequest {
                id,
                run: run.unwrap_or_default(),
                follow,
                tail_lines: tail,
            };
            return logs(connection.connect().await?, request).await;
        }
        Command::Health { admin, path } => return Ok(health(&admin, &path).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// One bounded HTTP/1.1 GET; healthy only on a `200` status line within three seconds.
async fn health(admin: &str, path: &str) -> ExitCode {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0_u8; 64];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(head)) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Ok(head)) => {
            eprintln!("unhealthy: {}", head.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("unhealthy: {admin}: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: {admin}: no answer within 3 s");
            ExitCode::FAILURE
        }
    }
}

/// Prints each line as `[run/task/step] text`: every line carries where it came from, so `grep`
/// keeps it.
async fn logs(channel: AuthedChannel, request: pb::LogsRequest) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut client = RevisionRunsClient::new(channel);
    let mut stream = client.logs(request).await?.into_inner();
    let stdout = std::io::stdout();
    while let Some(line) = stream.message().await? {
        let mut out = stdout.lock();
        writeln!(
            out,
            "[{}/{}/{}] {}",
            line.run, line.task, line.step, line.line
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(channel: AuthedChannel, id: String) -> anyhow::Result<ExitCode> {
    let mut client = RevisionRunsClient::new(channel);
    let mut stream = client
        .watch(pb::WatchRequest {
            id,
            after_event_id: String::new(),
        })
        .await?
        .into_inner();
    let live = std::io::stdout().is_terminal();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        let Some(rr) = event.revision_run else {
            continue;
        };
        if live {
            // Redraw in place: clear the screen and move the cursor home.
            print!("\x1b[2J\x1b[H");
        }
        print!("{}", table::render(&rr));
        if !live {
            println!();
        }
        last = Some(rr);
    }
    let phase = last.map(|rr| pb::Phase::try_from(rr.phase).unwrap_or(pb::Phase::Unspecified));
    Ok(match phase {
        Some(pb::Phase::Succeeded | pb::Phase::SucceededWithAllowedFailures) => ExitCode::SUCCESS,
        Some(pb::Phase::Failed | pb::Phase::Cancelled) => ExitCode::from(1),
        _ => ExitCode::from(4),
    })
}
