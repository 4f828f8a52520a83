//! Why a snapshot provider failed.

use std::process::ExitStatus;

/// A provider's failure: a tool it ran that failed or could not start (with the command
/// line, exit status and what the tool said on stderr), or a problem it found itself.
/// `provider` names the snapshot method (`lvm`, `libvirt`...); the runner fills it in
/// with [`ProviderError::in_provider`] for errors made by shared helpers.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        provider: &'static str,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}`: {source}")]
    NotRun {
        provider: &'static str,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Problem {
        provider: &'static str,
        message: String,
    },
}

impl ProviderError {
    /// This error, said to come from the provider `name`.
    pub fn in_provider(mut self, name: &'static str) -> Self {
        match &mut self {
            ProviderError::Failed { provider, .. }
            | ProviderError::NotRun { provider, .. }
            | ProviderError::Problem { provider, .. } => *provider = name,
        }
        self
    }
}

impl From<String> for ProviderError {
    fn from(message: String) -> Self {
        ProviderError::Problem {
            provider: "",
            message,
        }
    }
}

impl From<&str> for ProviderError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}
