//! The local commands: `check` (a dry run of a bundle file) and `apply`
//! (verify a bundle file and converge it), for operators and tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use muster_schemas::bundle::{self, Bundle, SignedBundle};
use muster_schemas::protocol::{ResourceReport, ResourceStatus};

use crate::client::unix_now;
use crate::config::read_public_key;
use crate::error::AgentError;
use crate::report::render;
use crate::resources::{Context, converge};
use crate::state::{Applied, StateDir};

/// Exit code: the host matches the bundle.
pub const EXIT_IN_SYNC: u8 = 0;
/// Exit code: some resources differ (a dry run, or audit mode).
pub const EXIT_DRIFT: u8 = 1;
/// Exit code: a resource failed, or the bundle was refused.
pub const EXIT_ERROR: u8 = 2;

/// Reads a `SignedBundle` JSON file (what the bundle endpoint returns).
pub fn read_signed(path: &Path) -> Result<SignedBundle, AgentError> {
    let text = fs::read_to_string(path).map_err(AgentError::io(format!(
        "cannot read the bundle {}",
        path.display()
    )))?;
    serde_json::from_str(&text).map_err(|err| {
        AgentError::Usage(format!(
            "{} is not a signed bundle ({err}): pass the JSON that GET /v1/hosts/ID/bundle returns",
            path.display()
        ))
    })
}

/// The host id the bundle names, read without verifying anything; used
/// only as the expected host id where the host check is relaxed.
fn claimed_host(signed: &SignedBundle) -> String {
    serde_json::from_str::<serde_json::Value>(&signed.bundle)
        .ok()
        .and_then(|value| value.get("host_id")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn context(root: Option<&Path>) -> Context {
    match root {
        Some(root) => Context::new().with_root(root),
        None => Context::new(),
    }
}

/// The exit code of a run's resources.
pub fn exit_code(resources: &[ResourceReport]) -> u8 {
    if resources.iter().any(|r| r.status == ResourceStatus::Failed) {
        EXIT_ERROR
    } else if resources
        .iter()
        .any(|r| r.status == ResourceStatus::Drifted)
    {
        EXIT_DRIFT
    } else {
        EXIT_IN_SYNC
    }
}

/// `muster-agent check`: prints what converging the bundle would change.
/// With a public key the signature and its header are verified (not the
/// generation or the expiry, which only matter when applying).
pub fn check(
    bundle_file: &Path,
    root: Option<&Path>,
    public_key: Option<&str>,
) -> Result<ExitCode, AgentError> {
    let signed = read_signed(bundle_file)?;
    let bundle: Bundle = match public_key {
        Some(key) => {
            let key = read_public_key(key)?;
            // i64::MIN as "now": no bundle has expired then.
            bundle::verify(&key, &signed, &claimed_host(&signed), 0, i64::MIN)?
        }
        None => serde_json::from_str(&signed.bundle).map_err(|err| {
            AgentError::Usage(format!("the signed bundle holds no valid bundle: {err}"))
        })?,
    };
    let reports = converge(&bundle.desired, &context(root), true);
    print!("{}", render(&reports));
    Ok(ExitCode::from(exit_code(&reports)))
}

/// `muster-agent apply`: verifies the bundle with `public_key` (the host
/// check relaxed to the bundle's own host id), refuses a generation not
/// greater than the one last applied from `state_dir`, converges it and
/// records it.
pub fn apply(
    bundle_file: &Path,
    public_key: &str,
    root: Option<&Path>,
    state_dir: &Path,
) -> Result<ExitCode, AgentError> {
    let key = read_public_key(public_key)?;
    let state = open_state(state_dir, root)?;
    let signed = read_signed(bundle_file)?;
    let applied = state
        .applied()
        .map_err(AgentError::io("cannot read the state dir"))?;
    let bundle = bundle::verify(
        &key,
        &signed,
        &claimed_host(&signed),
        applied.generation,
        unix_now(),
    )?;
    let reports = converge(&bundle.desired, &context(root), false);
    // The run was attempted: record it (see `agent::Agent::accept` for why
    // the generation is stored after converging).
    state
        .store_bundle(&signed)
        .and_then(|()| {
            state.store_applied(&Applied {
                generation: bundle.generation,
                commit: bundle.commit.clone(),
            })
        })
        .map_err(AgentError::io("cannot record the applied generation"))?;
    print!("{}", render(&reports));
    Ok(ExitCode::from(exit_code(&reports)))
}

/// Opens the state dir and refuses a root that contains it: a bundle
/// applied beneath that root could rewrite the stored generation.
pub fn open_state(state_dir: &Path, root: Option<&Path>) -> Result<StateDir, AgentError> {
    let state = StateDir::open(state_dir).map_err(AgentError::io(format!(
        "cannot open the state dir {} (pass --state-dir)",
        state_dir.display()
    )))?;
    if let Some(root) = root
        && state.is_beneath(root)
    {
        return Err(AgentError::Usage(format!(
            "the state dir {} lies inside --root {}: a bundle could overwrite it; put the state dir outside the root",
            state.path().display(),
            root.display()
        )));
    }
    Ok(state)
}

/// Where a root must not be relative: managed paths are joined to it.
pub fn absolute_root(root: Option<PathBuf>) -> Result<Option<PathBuf>, AgentError> {
    root.map(|root| {
        fs::canonicalize(&root).map_err(AgentError::io(format!(
            "cannot use --root {} (create it first)",
            root.display()
        )))
    })
    .transpose()
}
