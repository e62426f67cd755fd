//! The Logs stream: a revision run's step logs, run by run in stage order, each TaskRun pod's
//! steps in the order they run, read from the Kubernetes API (`pods/log`).
//!
//! Without `follow` it sends what the pods hold now and ends. With `follow` it waits for runs
//! whose PipelineRuns do not exist yet, for pods not created yet and for steps not started yet,
//! follows running steps, and ends once every run it shows has ended (or the revision run has,
//! which leaves never-opened stages out). A run whose pods are gone (housekeeping deleted its
//! PipelineRun) shows the last lines its diagnosis kept of its failed steps.
//!
//! Bounded: at most [`LogLimits::max_lines`] lines and [`LogLimits::max_bytes`] bytes per call,
//! [`LogLimits::max_duration`] of following, and the stream stops as soon as the client goes.

use std::{collections::HashSet, time::Duration};

use stagetime_common::{
    model::{Run, RunState},
    pod_logs::{self, StepState, TaskPod},
    store::Store,
};
use stagetime_proto::stagetime::v1 as pb;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::StreamExt as _;
use tonic::Status;

/// How much one Logs call may send and how long it may follow.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    /// Lines per call.
    pub max_lines: u64,
    /// Bytes of log text per call.
    pub max_bytes: u64,
    /// How long a following call stays open.
    pub max_duration: Duration,
    /// How often a following call looks again for new pods and started steps.
    pub poll: Duration,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_lines: 200_000,
            max_bytes: 64 * 1024 * 1024,
            max_duration: Duration::from_secs(3600),
            poll: Duration::from_millis(500),
        }
    }
}

/// Lines buffered between the reader and a slow client.
const BUFFER: usize = 256;

/// What one call reads.
pub(crate) struct Request {
    pub id: String,
    /// `(stage, run)` in the order to show them.
    pub runs: Vec<(u32, Run)>,
    pub follow: bool,
    pub tail_lines: Option<i64>,
}

/// The stream of `request`'s lines; the reading stops when the receiver is dropped.
pub(crate) fn stream(
    client: kube::Client,
    store: Store,
    limits: LogLimits,
    request: Request,
) -> impl tokio_stream::Stream<Item = Result<pb::LogLine, Status>> + Send {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let mut reader = Reader {
            client,
            store,
            limits,
            tx,
            lines: 0,
            bytes: 0,
            until: Instant::now() + limits.max_duration,
        };
        if let Err(end) = reader.all(&request).await
            && let Some(status) = end.status()
        {
            let _ = reader.tx.send(Err(status)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Why reading stopped early.
enum End {
    /// The client went away.
    Gone,
    /// A limit was reached or an API call failed.
    Failed(Status),
}

impl End {
    fn status(self) -> Option<Status> {
        match self {
            End::Gone => None,
            End::Failed(status) => Some(status),
        }
    }
}

struct Reader {
    client: kube::Client,
    store: Store,
    limits: LogLimits,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
    lines: u64,
    bytes: u64,
    until: Instant,
}

impl Reader {
    async fn all(&mut self, request: &Request) -> Result<(), End> {
        for (stage, run) in &request.runs {
            self.run(request, *stage, run).await?;
        }
        Ok(())
    }

    /// Waits (following) until `run` has left Pending; `None` when it never will.
    async fn started(&self, request: &Request, stage: u32, run: &Run) -> Result<Option<Run>, End> {
        let mut current = run.clone();
        loop {
            if current.state != RunState::Pending {
                return Ok(Some(current));
            }
            if !request.follow {
                return Ok(None);
            }
            self.pause().await?;
            let rr = self.store.get(&request.id).await.map_err(unavailable)?;
            if rr.phase.is_terminal() {
                // Re-read the run once more: it may have ended in the same write.
                return Ok(find(&rr, stage, &run.name).filter(|r| r.state != RunState::Pending));
            }
            match find(&rr, stage, &run.name) {
                Some(r) => current = r,
                None => return Ok(None),
            }
        }
    }

    async fn run(&mut self, request: &Request, stage: u32, run: &Run) -> Result<(), End> {
        let Some(mut current) = self.started(request, stage, run).await? else {
            return Ok(());
        };
        let mut done: HashSet<String> = HashSet::new();
        loop {
            let pods = pod_logs::task_pods(&self.client, &current.namespace, &current.pipeline_run)
                .await
                .map_err(kube_error)?;
            if pods.is_empty() && done.is_empty() && current.state.is_terminal() {
                return self.kept(stage, &current).await;
            }
            let new: Vec<TaskPod> = pods
                .into_iter()
                .filter(|p| !done.contains(&p.pod))
                .collect();
            let found_new = !new.is_empty();
            for pod in new {
                self.pod(request, stage, &current, pod.clone()).await?;
                done.insert(pod.pod);
            }
            if !request.follow || (current.state.is_terminal() && !found_new) {
                return Ok(());
            }
            self.pause().await?;
            let rr = self.store.get(&request.id).await.map_err(unavailable)?;
            match find(&rr, stage, &run.name) {
                Some(r) => current = r,
                None => return Ok(()),
            }
        }
    }

    /// A pod's steps in order, each once it has started (following) or as it is now.
    async fn pod(
        &mut self,
        request: &Request,
        stage: u32,
        run: &Run,
        mut pod: TaskPod,
    ) -> Result<(), End> {
        for index in 0..pod.steps.len() {
            let mut step = pod.steps[index].clone();
            while !step.state.started() && request.follow && !pod.finished {
                self.pause().await?;
                match pod_logs::task_pod(&self.client, &run.namespace, &pod.pod)
                    .await
                    .map_err(kube_error)?
                {
                    Some(fresh) => {
                        pod = fresh;
                        match pod.steps.get(index) {
                            Some(s) => step = s.clone(),
                            None => return Ok(()),
                        }
                    }
                    None => return Ok(()),
                }
            }
            if !step.state.started() {
                continue;
            }
            let follow = request.follow && step.state == StepState::Running;
            let left = self.limits.max_bytes.saturating_sub(self.bytes).max(1);
            let lines = pod_logs::lines(
                &self.client,
                &run.namespace,
                &pod.pod,
                &step.container,
                follow,
                request.tail_lines,
                i64::try_from(left).unwrap_or(i64::MAX),
            )
            .await;
            let mut lines = match lines {
                Ok(lines) => Box::pin(lines),
                // Gone between the list and the read, or not started after all: nothing to show.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 400 => continue,
                Err(error) => return Err(kube_error(error)),
            };
            // A followed log ends when its container does; not every kubelet closes the stream
            // then, so the pod is looked at every poll and, once the step has ended, what is
            // still buffered is read until the stream falls quiet.
            let mut ended_at: Option<Instant> = None;
            let mut check = tokio::time::interval(self.limits.poll);
            check.tick().await;
            loop {
                let quiet = ended_at.map(|at| at + self.limits.poll);
                let next = tokio::select! {
                    next = tokio::time::timeout_at(self.until, lines.next()) => next,
                    _ = check.tick(), if follow && ended_at.is_none() => {
                        if self.step_ended(run, &pod.pod, index).await? {
                            ended_at = Some(Instant::now());
                        }
                        continue;
                    }
                    () = sleep_until(quiet) => break,
                };
                let text = match next {
                    Err(_) => return Err(End::Failed(deadline())),
                    Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        tracing::debug!(%error, pod = %pod.pod, "log stream ended early");
                        break;
                    }
                    Ok(Some(Ok(text))) => text,
                };
                if ended_at.is_some() {
                    ended_at = Some(Instant::now());
                }
                self.send(stage, run, &pod.task, &step.name, &pod.pod, text)
                    .await?;
            }
        }
        Ok(())
    }

    /// Whether step `index` of `pod` has ended (or the pod is gone or finished).
    async fn step_ended(&self, run: &Run, pod: &str, index: usize) -> Result<bool, End> {
        let fresh = pod_logs::task_pod(&self.client, &run.namespace, pod)
            .await
            .map_err(kube_error)?;
        Ok(fresh.is_none_or(|p| {
            p.finished
                || p.steps
                    .get(index)
                    .is_none_or(|s| matches!(s.state, StepState::Terminated(_)))
        }))
    }

    /// The lines the diagnosis kept of a failed run's failed steps.
    async fn kept(&mut self, stage: u32, run: &Run) -> Result<(), End> {
        let Some(diagnosis) = &run.diagnosis else {
            return Ok(());
        };
        for task in &diagnosis.failed_task_runs {
            for step in &task.failed_steps {
                for line in &step.last_lines {
                    self.send(
                        stage,
                        run,
                        &task.pipeline_task,
                        &step.name,
                        "",
                        line.clone(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        stage: u32,
        run: &Run,
        task: &str,
        step: &str,
        pod: &str,
        line: String,
    ) -> Result<(), End> {
        self.lines += 1;
        self.bytes += line.len() as u64;
        if self.lines > self.limits.max_lines || self.bytes > self.limits.max_bytes {
            return Err(End::Failed(Status::resource_exhausted(format!(
                "the log is longer than one call may send ({} lines, {} bytes); ask for \
                 fewer runs or tail_lines",
                self.limits.max_lines, self.limits.max_bytes
            ))));
        }
        let line = pb::LogLine {
            stage,
            run: run.name.clone(),
            task: task.to_string(),
            step: step.to_string(),
            pod: pod.to_string(),
            line,
        };
        self.tx.send(Ok(line)).await.map_err(|_| End::Gone)
    }

    /// Waits one poll interval; ends when the client went or the call's time is up.
    async fn pause(&self) -> Result<(), End> {
        if Instant::now() >= self.until {
            return Err(End::Failed(deadline()));
        }
        tokio::select! {
            () = tokio::time::sleep(self.limits.poll) => Ok(()),
            () = self.tx.closed() => Err(End::Gone),
        }
    }
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn find(rr: &stagetime_common::model::RevisionRun, stage: u32, name: &str) -> Option<Run> {
    rr.stages
        .iter()
        .filter(|s| s.number == stage)
        .flat_map(|s| &s.runs)
        .find(|r| r.name == name)
        .cloned()
}

fn deadline() -> Status {
    Status::deadline_exceeded("followed the logs for as long as one call may; call again")
}

fn unavailable(error: stagetime_common::Error) -> End {
    tracing::warn!(%error, "cannot read the revision run while following its logs");
    End::Failed(Status::unavailable(
        "cannot read the revision run now; retry",
    ))
}

fn kube_error(error: kube::Error) -> End {
    tracing::warn!(%error, "cannot read pods or logs");
    End::Failed(match &error {
        kube::Error::Api(e) if e.code == 403 => Status::permission_denied(
            "stageTime itself may not read these pods' logs (its ServiceAccount needs get and \
             list on pods and get on pods/log)",
        ),
        _ => Status::unavailable("cannot read the pods' logs now; retry"),
    })
}
