//! The `service` resource: a systemd unit, through `systemctl`.
//!
//! Sub-checks: state (`systemctl is-active`) → enabled (`systemctl
//! is-enabled`) → restart. Repairs are `systemctl start|stop|enable|disable
//! UNIT`; a restart (`systemctl restart UNIT`) happens when a resource named
//! in `restart_on` changed earlier in the run and the unit is running (or
//! should be and was already), so a unit that was just started is not
//! restarted again, and a stopped one is not started by a restart. In a
//! sandbox, services are skipped.

use muster_schemas::model::{ServiceSpec, ServiceState};

use super::{CheckApply, Context, Differences, Failure, Outcome, SANDBOXED, outcome_of};

/// A service with the ids of resources that changed in this run and are
/// named in its `restart_on`.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    /// The desired state.
    pub spec: &'a ServiceSpec,
    /// Changed resources that call for a restart; empty for none.
    pub restart_because: Vec<String>,
}

impl CheckApply for ServiceSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        Service {
            spec: self,
            restart_because: Vec::new(),
        }
        .check_apply(ctx, apply)
    }
}

impl CheckApply for Service<'_> {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        if ctx.is_sandboxed() {
            return Outcome::skipped(SANDBOXED);
        }
        outcome_of(check_apply(self.spec, &self.restart_because, ctx, apply))
    }
}

/// What `systemctl is-enabled` said, in the terms that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enablement {
    Enabled,
    Disabled,
    /// Masked: cannot be started or enabled until unmasked.
    Masked,
    /// static, indirect, generated, transient: started by something else;
    /// `enable` and `disable` do not apply.
    NotSwitchable,
}

fn check_apply(
    spec: &ServiceSpec,
    restart_because: &[String],
    ctx: &Context,
    apply: bool,
) -> Result<Outcome, Failure> {
    let unit = spec.name.as_str();
    let valid = !unit.is_empty()
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    if !valid {
        return Err(Failure::new(format!(
            "invalid unit name `{unit}`: use a systemd unit name such as `nginx` or `nginx.service`"
        )));
    }
    let mut differences = Differences::default();
    let mut actions: Vec<&str> = Vec::new();

    let needs_activity = spec.state.is_some() || !restart_because.is_empty();
    let active = if needs_activity {
        Some(is_active(ctx, unit)?)
    } else {
        None
    };
    match (spec.state, active) {
        (Some(ServiceState::Running), Some(false)) => {
            differences.push("not running");
            actions.push("start");
        }
        (Some(ServiceState::Stopped), Some(true)) => {
            differences.push("running and should be stopped");
            actions.push("stop");
        }
        _ => {}
    }
    if let Some(want_enabled) = spec.enabled {
        match (is_enabled(ctx, unit)?, want_enabled) {
            (Enablement::Disabled, true) => {
                differences.push("not enabled");
                actions.push("enable");
            }
            (Enablement::Enabled, false) => {
                differences.push("enabled and should be disabled");
                actions.push("disable");
            }
            (Enablement::Masked, true) => {
                return Err(Failure::new(format!(
                    "unit `{unit}` is masked: unmask it (`systemctl unmask {unit}`) before it can be enabled"
                )));
            }
            (Enablement::NotSwitchable, false) => {
                return Err(Failure::new(format!(
                    "unit `{unit}` cannot be disabled (it is static, indirect or generated): mask it with an `exec` resource, or leave `enabled` unset"
                )));
            }
            _ => {}
        }
    }
    let was_running = active == Some(true);
    let stopping = spec.state == Some(ServiceState::Stopped);
    if !restart_because.is_empty() && was_running && !stopping {
        differences.push(format!(
            "restart because {} changed",
            restart_because.join(", ")
        ));
        actions.push("restart");
    }

    if differences.is_empty() {
        return Ok(Outcome::in_sync());
    }
    if apply {
        for action in actions {
            systemctl(ctx, action, unit)?;
        }
    }
    Ok(Outcome::differs(apply, differences.message()))
}

fn is_active(ctx: &Context, unit: &str) -> Result<bool, Failure> {
    let output = ctx.command(["systemctl", "is-active", unit]).run()?;
    let state = output.stdout.trim();
    match state {
        "active" | "reloading" | "activating" => Ok(true),
        "inactive" | "failed" | "deactivating" | "unknown" | "dead" => Ok(false),
        _ => Err(Failure::tool(
            &format!("systemctl is-active {unit}"),
            &output,
            &format!(" with unexpected output `{state}`"),
        )),
    }
}

fn is_enabled(ctx: &Context, unit: &str) -> Result<Enablement, Failure> {
    let output = ctx.command(["systemctl", "is-enabled", unit]).run()?;
    let state = output.stdout.trim();
    match state {
        "enabled" | "enabled-runtime" | "alias" => Ok(Enablement::Enabled),
        "disabled" => Ok(Enablement::Disabled),
        "masked" | "masked-runtime" => Ok(Enablement::Masked),
        "static" | "indirect" | "generated" | "transient" => Ok(Enablement::NotSwitchable),
        _ => Err(Failure::tool(
            &format!("systemctl is-enabled {unit}"),
            &output,
            ": is the unit installed?",
        )),
    }
}

fn systemctl(ctx: &Context, action: &str, unit: &str) -> Result<(), Failure> {
    let output = ctx.command(["systemctl", action, unit]).run()?;
    if output.success() {
        Ok(())
    } else {
        Err(Failure::tool(
            &format!("systemctl {action} {unit}"),
            &output,
            "",
        ))
    }
}
