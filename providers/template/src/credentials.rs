//! Short-lived credentials for a node. A cloud asks its token service (STS,
//! a managed identity) for a session that expires as `credential_ttl` says;
//! core renews them before they do. Here: a random token per request.

use mayfly_provider_api::{Credential, CredentialRequest, ErrorKind, ProviderError, Secret, Validity, now_ms};

use crate::{Template, fail};

impl Template {
    /// A cloud: ask its token service for short-lived credentials.
    pub(crate) fn issue(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let now = now_ms();
        let mut secret = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(|e| fail(ErrorKind::Unavailable, e.to_string()))?,
            &mut secret,
        )
        .map_err(|e| fail(ErrorKind::Unavailable, e.to_string()))?;
        Ok(Credential {
            node: request.node,
            secret: Secret::Token { value: secret.iter().map(|b| format!("{b:02x}")).collect() },
            validity: Validity { issued_at: now, expires_at: now + self.credential_ttl.as_millis() as u64 },
        })
    }
}
