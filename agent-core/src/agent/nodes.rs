//! The agent flow's nodes.

use std::sync::Arc;

use super::{ask_for_plan, plan, AgentState, Packaging, PlanFailed, Planned, StepRun};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::executor::SandboxError;
use crate::flow::{Action, Ctx, Flow, IntoNode, Node, PostNode};
use crate::job::{
    Artifact, EventKind, Plan, Step, StepResult, StepStatus, Termination, MAX_REPAIRS, MAX_STEPS,
};
use crate::llm::LlmProvider;

const EXECUTE: &str = "execute";
const NEXT: &str = "next";
const REPAIR: &str = "repair";
const DONE: &str = "done";

/// Builds the agent flow: plan → execute (one step per run, looping) → repair → compile.
pub fn agent_flow() -> Result<Flow<AgentState>> {
    planned_flow("agent", CompileNode)
}

/// The agent flow without packaging, for a live sandbox handed to the planner: plan → execute
/// → repair; its steps are the sandbox's, and the sandbox lives on after it.
pub fn sandbox_flow() -> Result<Flow<AgentState>> {
    planned_flow("sandbox-plan", DoneNode)
}

/// plan → execute (looping) → repair, ending in `end`.
fn planned_flow<M, N: IntoNode<AgentState, M>>(
    name: &'static str,
    end: N,
) -> Result<Flow<AgentState>> {
    // Each step is one node transition; a plan has at most MAX_STEPS steps and is replaced at most
    // MAX_REPAIRS times, plus a few runs of the other nodes per round.
    let limit = (MAX_STEPS + 4) * (MAX_REPAIRS as usize + 1);
    let mut flow = Flow::new().with_name(name).with_transition_limit(limit);
    let plan = flow.add(PlanNode);
    let execute = flow.add(ExecuteNode);
    let repair = flow.add(RepairNode);
    let end = flow.add(end);
    flow.connect(plan, EXECUTE, execute)?;
    flow.connect(execute, NEXT, execute)?;
    flow.connect(execute, REPAIR, repair)?;
    flow.connect(execute, DONE, end)?;
    flow.connect(repair, EXECUTE, execute)?;
    flow.connect(repair, DONE, end)?;
    flow.set_start(plan)?;
    Ok(flow)
}

/// The end of [`sandbox_flow`]: nothing to package.
struct DoneNode;

impl PostNode<AgentState> for DoneNode {
    async fn post(&self, _: &mut AgentState, _: &Ctx) -> Result<Action> {
        Ok(Action::DEFAULT)
    }

    fn name(&self) -> &str {
        "done"
    }
}

/// A planning call to make (a plan or a repair): the LLM, the job's events, the prompt.
struct PlanCall {
    llm: Arc<dyn LlmProvider>,
    events: EventSink,
    message: String,
}

impl PlanCall {
    async fn ask(&self) -> std::result::Result<Planned, PlanFailed> {
        ask_for_plan(&*self.llm, &self.events, self.message.clone()).await
    }
}

/// Turns the prompt into a plan (or takes the job's explicit steps).
struct PlanNode;

enum PlanPrep {
    Explicit(Vec<Step>),
    Ask(PlanCall),
}

impl Node<AgentState> for PlanNode {
    type Prep = PlanPrep;
    type Exec = std::result::Result<Planned, PlanFailed>;

    async fn prep(&self, state: &mut AgentState, _: &Ctx) -> Result<PlanPrep> {
        if let Some(steps) = &state.task.steps {
            return Ok(PlanPrep::Explicit(steps.clone()));
        }
        let llm = state.llm.clone().ok_or(Error::NoLlm)?;
        Ok(PlanPrep::Ask(PlanCall {
            llm,
            events: state.events.clone(),
            message: plan::planning_prompt(&state.task.prompt, state.task.context.as_deref()),
        }))
    }

    async fn exec(&self, prep: &PlanPrep, _ctx: &Ctx) -> Result<Self::Exec> {
        Ok(match prep {
            PlanPrep::Explicit(steps) => Ok(Planned {
                plan: Plan {
                    steps: steps.clone(),
                    summary: String::new(),
                },
                provider: String::new(),
                usage: Default::default(),
            }),
            PlanPrep::Ask(call) => call.ask().await,
        })
    }

    async fn post(
        &self,
        state: &mut AgentState,
        _: PlanPrep,
        planned: Self::Exec,
        _: &Ctx,
    ) -> Result<Action> {
        match planned {
            Ok(planned) => {
                accept_plan(state, planned, 0).await?;
                Ok(EXECUTE.into())
            }
            Err(failed) => Err(charge_failed_plan(state, failed)),
        }
    }

    fn name(&self) -> &str {
        "plan"
    }
}

/// Records what a failed planning call cost (usage, the provider that answered) on the job and
/// gives back its error.
fn charge_failed_plan(state: &mut AgentState, failed: PlanFailed) -> Error {
    let PlanFailed {
        error,
        provider,
        usage,
    } = failed;
    state.job.usage.add(usage);
    if provider.is_some() {
        state.job.provider = provider;
    }
    error
}

async fn accept_plan(state: &mut AgentState, planned: Planned, attempt: u32) -> Result<()> {
    let Planned {
        mut plan,
        provider,
        usage,
    } = planned;
    if let Some(max) = state.settings.max_step_timeout {
        clamp_timeouts(&mut plan.steps, max, &state.events);
    }
    let provider = (!provider.is_empty()).then_some(provider);
    state.events.emit(EventKind::Plan {
        steps: plan.steps.clone(),
        summary: plan.summary.clone(),
        provider: provider.clone(),
        attempt,
    });
    state.pending = plan.steps.iter().cloned().map(|s| (s, attempt)).collect();
    state.job.usage.add(usage);
    if provider.is_some() {
        state.job.provider = provider;
    }
    match (&mut state.job.plan, attempt) {
        (Some(existing), a) if a > 0 => {
            existing.steps.extend(plan.steps);
            if !plan.summary.is_empty() {
                existing.summary = plan.summary;
            }
        }
        (slot, _) => *slot = Some(plan),
    }
    // No save here: the execute node saves the record as the first step starts, right after.
    Ok(())
}

/// Lowers the timeouts of planned steps that ask for more than `max` (the operator's maximum)
/// to it, saying so in the log.
fn clamp_timeouts(steps: &mut [Step], max: std::time::Duration, events: &EventSink) {
    for (i, step) in steps.iter_mut().enumerate() {
        if let Some(t) = step.timeout.filter(|t| *t > max) {
            step.timeout = Some(max);
            events.emit(EventKind::Log {
                message: format!(
                    "planned step {i} asked for a {} s timeout; lowered to this server's maximum \
                     of {} s",
                    t.as_secs(),
                    max.as_secs()
                ),
            });
        }
    }
}

/// Runs the next pending step.
struct ExecuteNode;

impl Node<AgentState> for ExecuteNode {
    type Prep = Option<StepRun>;
    type Exec = Option<std::result::Result<StepResult, SandboxError>>;

    async fn prep(&self, state: &mut AgentState, _: &Ctx) -> Result<Option<StepRun>> {
        state.begin_next_step().await
    }

    async fn exec(&self, run: &Option<StepRun>, _: &Ctx) -> Result<Self::Exec> {
        match run {
            Some(run) => Ok(Some(run.run().await)),
            None => Ok(None),
        }
    }

    /// The step is not abandoned on cancellation: its own cancellation token (a child of the
    /// job's) kills it in the sandbox, and its result (`Cancelled`) is recorded before the flow
    /// stops.
    fn interruptible(&self) -> bool {
        false
    }

    fn name(&self) -> &str {
        "execute"
    }

    async fn post(
        &self,
        state: &mut AgentState,
        run: Option<StepRun>,
        result: Self::Exec,
        _: &Ctx,
    ) -> Result<Action> {
        let (Some(run), Some(result)) = (run, result) else {
            return Ok(DONE.into());
        };
        let index = run.index;
        state.finish_step(index, &result).await?;
        let result = result?;
        if result.termination == Termination::Cancelled {
            return Err(Error::Cancelled);
        }
        if result.success() {
            return Ok(if state.pending.is_empty() { DONE } else { NEXT }.into());
        }
        let can_repair = state.task.is_planned()
            && state.llm.is_some()
            && state.repairs_used < state.task.max_repairs;
        if can_repair {
            return Ok(REPAIR.into());
        }
        let why = match result.termination {
            Termination::Exited => format!("step {index} exited with code {}", result.exit_code),
            Termination::TimedOut => format!("step {index} timed out"),
            Termination::OutOfMemory => format!("step {index} ran out of memory"),
            Termination::OutputLimit => format!("step {index} exceeded the output limit"),
            Termination::Cancelled => format!("step {index} was cancelled"),
        };
        let why = if state.repairs_used > 0 {
            format!("{why} (after {} repair attempts)", state.repairs_used)
        } else {
            why
        };
        for (step, attempt) in state.pending.drain(..) {
            let index = state.job.steps.len();
            state.job.steps.push(crate::job::StepRecord {
                index,
                step,
                status: StepStatus::Skipped,
                result: None,
                attempt,
            });
        }
        state.fail(why);
        Ok(DONE.into())
    }
}

/// Sends the failed step back to the LLM and replaces the rest of the plan with its answer.
struct RepairNode;

impl Node<AgentState> for RepairNode {
    type Prep = PlanCall;
    type Exec = std::result::Result<Planned, PlanFailed>;

    async fn prep(&self, state: &mut AgentState, _: &Ctx) -> Result<PlanCall> {
        let llm = state.llm.clone().ok_or(Error::NoLlm)?;
        let failed = state
            .job
            .steps
            .last()
            .and_then(|r| r.result.as_ref().map(|res| (r.step.clone(), res.clone())))
            .ok_or_else(|| Error::other("repair requested without a failed step"))?;
        let completed: Vec<Step> = state
            .job
            .steps
            .iter()
            .filter(|r| r.status == StepStatus::Succeeded)
            .map(|r| r.step.clone())
            .collect();
        let remaining: Vec<Step> = state.pending.drain(..).map(|(s, _)| s).collect();
        let message = plan::repair_prompt(
            &state.task.prompt,
            &failed.0,
            &failed.1,
            &completed,
            &remaining,
        );
        state.repairs_used += 1;
        state.events.emit(EventKind::Log {
            message: format!(
                "step {} failed; asking for a repair ({} of {})",
                state.job.steps.len() - 1,
                state.repairs_used,
                state.task.max_repairs
            ),
        });
        Ok(PlanCall {
            llm,
            events: state.events.clone(),
            message,
        })
    }

    async fn exec(&self, call: &PlanCall, _: &Ctx) -> Result<Self::Exec> {
        Ok(call.ask().await)
    }

    async fn post(
        &self,
        state: &mut AgentState,
        _: PlanCall,
        planned: Self::Exec,
        _: &Ctx,
    ) -> Result<Action> {
        match planned {
            Ok(planned) => {
                let attempt = state.repairs_used;
                accept_plan(state, planned, attempt).await?;
                Ok(EXECUTE.into())
            }
            Err(failed) => {
                let why = charge_failed_plan(state, failed);
                state.fail(format!("the repair failed: {why}"));
                Ok(DONE.into())
            }
        }
    }

    fn name(&self) -> &str {
        "repair"
    }
}

/// Writes the ZIP with `result.json`. Raced against cancellation like any exec: when the job is
/// cancelled or times out, the job manager packages what there is with its own deadline.
struct CompileNode;

impl Node<AgentState> for CompileNode {
    type Prep = Packaging;
    type Exec = Artifact;

    async fn prep(&self, state: &mut AgentState, _: &Ctx) -> Result<Packaging> {
        let status = state.outcome();
        state.prepare_packaging(status)
    }

    async fn exec(&self, packaging: &Packaging, _: &Ctx) -> Result<Artifact> {
        packaging.run().await
    }

    async fn post(
        &self,
        state: &mut AgentState,
        _: Packaging,
        artifact: Artifact,
        _: &Ctx,
    ) -> Result<Action> {
        state.job.artifact = Some(artifact);
        Ok(Action::DEFAULT)
    }

    fn name(&self) -> &str {
        "compile"
    }
}
