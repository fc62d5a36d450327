//! Credentials for nodes: an STS session of the job role (bounded by what
//! STS allows), or the SDK chain's own (the instance profile, Lambda's role),
//! as typed S3 keys.

use super::*;

/// An STS role session name for a node: `[\w+=,.@-]`, 2 to 64 characters.
pub(crate) fn session_name(job: &str, node: &str) -> String {
    format!("mayfly-{job}-{node}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(*c))
        .take(64)
        .collect()
}

/// How long credentials that carry no expiry are taken to be good for before
/// the chain is read again.
pub(crate) const UNKNOWN_EXPIRY: Duration = Duration::from_secs(15 * 60);

impl Aws {
    /// A node's credentials: the job role's session, or the chain's own.
    pub(crate) async fn issue_credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let c = self.clients().await?;
        let now = now_ms();
        let (secret, expires_at) = match &self.role_arn {
            Some(role) => {
                let session = session_name(&request.job, &request.node);
                let out = c
                    .sts
                    .assume_role()
                    .role_arn(role)
                    .role_session_name(session)
                    .duration_seconds(self.credential_ttl.as_secs() as i32)
                    .send()
                    .await
                    .map_err(|e| api_err(&format!("AssumeRole({role})"), aws_sdk_sts::error::DisplayErrorContext(e)))?;
                let cred =
                    out.credentials().ok_or_else(|| fail(ErrorKind::Unavailable, "AssumeRole gave no credentials"))?;
                let expires = cred.expiration().secs().max(0) as u64 * 1000;
                let secret = Secret::S3 {
                    key_id: cred.access_key_id().to_owned(),
                    secret_key: cred.secret_access_key().to_owned(),
                    session_token: Some(cred.session_token().to_owned()),
                };
                (secret, expires)
            }
            None => {
                use aws_credential_types::provider::ProvideCredentials;
                let provider = c
                    .config
                    .credentials_provider()
                    .ok_or_else(|| fail(ErrorKind::Config, "no AWS credentials are configured"))?;
                let cred = provider.provide_credentials().await.map_err(|e| api_err("the credential chain", e))?;
                // Credentials that do not say when they expire (environment
                // variables, as Lambda gives its function's role; a profile's
                // keys) are read again from the chain every UNKNOWN_EXPIRY, so
                // that rotated ones are picked up by core's refresh rule.
                let expires = cred
                    .expiry()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(now + UNKNOWN_EXPIRY.as_millis() as u64);
                let secret = Secret::S3 {
                    key_id: cred.access_key_id().to_owned(),
                    secret_key: cred.secret_access_key().to_owned(),
                    session_token: cred.session_token().map(str::to_owned),
                };
                (secret, expires)
            }
        };
        Ok(Credential { node: request.node, secret, validity: Validity { issued_at: now, expires_at } })
    }
}
