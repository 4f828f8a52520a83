//! `dedisk run JOBFILE [--preview] [--only VM]...`: the nightly job.

use anyhow::{Context, Result};
use serde_json::json;

use crate::args::{Global, RunArgs};
use crate::context::{Outcome, CANCEL};
use crate::output;

/// Exit codes of `run`: 0 every VM backed up, 3 some failed (partial), 1 all failed.
pub fn run(g: &Global, a: &RunArgs) -> Result<Outcome> {
    let job = engine::job::Job::load(&a.jobfile, &a.only).context("loading the job file")?;
    let mut out = Outcome::default();
    if a.preview {
        let (plan, problems) = engine::job::run::preview(&job);
        if g.json {
            output::json(&json!({"type": "preview", "plan": plan, "problems": problems}));
        } else {
            for l in &plan {
                output::line(l);
            }
            for p in &problems {
                output::line(format!("problem: {p}"));
            }
            output::line(format!(
                "{} VM(s), {} problem(s)",
                job.vms.len(),
                problems.len()
            ));
        }
        if !problems.is_empty() {
            anyhow::bail!(
                "the job would not run cleanly: {} problem(s), listed above",
                problems.len()
            );
        }
        return Ok(out);
    }
    let report = engine::job::run::run(&job, &CANCEL, &crate::progress::Bar::new(g, "run"));
    if g.json {
        output::json(&json!({"type": "run", "report": report}));
    } else {
        output::line(engine::job::run::summary(&report).trim_end());
    }
    use engine::job::run::JobStatus;
    match report.status {
        JobStatus::Success => Ok(out),
        JobStatus::Partial => {
            out.warnings.push(format!(
                "some VMs failed or need attention; see {}",
                job.report.display()
            ));
            Ok(out)
        }
        _ => anyhow::bail!("the job failed; see {}", job.report.display()),
    }
}
