//! The agent config written at enrollment: the controller's URL, the host's
//! id and secret, and the pinned public key that every bundle must verify
//! with.
//!
//! The file holds the host secret, so it is written mode 0600 and
//! atomically (a crash leaves the old config or the new one); it is YAML,
//! and JSON, a subset of YAML, is read too.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::state::write_atomic;

/// The default config path.
pub const DEFAULT_CONFIG: &str = "/etc/muster/agent.yaml";

/// The agent config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The controller's base URL, e.g. `https://muster.example.com:8443`.
    pub server: String,
    /// The host id the controller assigned.
    pub host_id: String,
    /// The host's secret; requests are signed with a key derived from it.
    pub secret: String,
    /// The controller's minisign public key (base64), pinned at enrollment.
    pub public_key: String,
    /// The host's name in the fleet.
    pub name: String,
}

impl fmt::Debug for AgentConfig {
    /// Leaves out the secret, which must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("host_id", &self.host_id)
            .field("public_key", &self.public_key)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = fs::read_to_string(path).map_err(|source| AgentError::Io {
            what: format!(
                "cannot read the agent config {} (enroll the host first, or pass --config)",
                path.display()
            ),
            source,
        })?;
        let config: AgentConfig = serde_yaml::from_str(&text).map_err(|err| {
            AgentError::Config(format!(
                "{} is not a valid agent config: {err}",
                path.display()
            ))
        })?;
        let mode = fs::metadata(path)
            .map(|meta| meta.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "the agent config holds the host secret and can be read by others: run `chmod 600` on it"
            );
        }
        Ok(config)
    }

    /// Writes the config, mode 0600, atomically; creates its directory
    /// (mode 0700) when missing.
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
        let io_error = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| AgentError::Io { what, source }
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error("cannot create the directory of"))?;
        }
        let text = serde_yaml::to_string(self)
            .map_err(|err| AgentError::Config(format!("cannot write the agent config: {err}")))?;
        write_atomic(path, text.as_bytes(), 0o600).map_err(io_error("cannot write"))
    }
}

/// Reads a public key given on the command line: the base64 key itself, or
/// the path of a minisign `.pub` file (or of a file holding the base64
/// line). Returns the base64 key after checking its shape, so that a typo
/// is caught at enrollment rather than at the first bundle.
pub fn read_public_key(arg: &str) -> Result<String, AgentError> {
    let text = match fs::read_to_string(arg) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => arg.to_string(),
        // Anything that is not a file (a base64 key with `/` in it may look
        // like a path) is taken as the key itself.
        Err(_) => arg.to_string(),
    };
    // A `.pub` file is an untrusted comment line, then the key.
    let key = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with("untrusted comment:"))
        .unwrap_or("")
        .to_string();
    // A minisign Ed25519 public key is 2 bytes of algorithm, 8 of key id
    // and 32 of key.
    match BASE64.decode(&key) {
        Ok(bytes) if bytes.len() == 42 && bytes.starts_with(b"Ed") => Ok(key),
        _ => Err(AgentError::Usage(format!(
            "`{arg}` is not a minisign public key: pass the base64 key that `muster token create` prints, or the path of the controller's .pub file"
        ))),
    }
}
