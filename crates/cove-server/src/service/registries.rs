//! Private registries (`/api/docker-registry`): validation per provider, secrets sealed at
//! rest, and the choice of credentials for a pull.
//!
//! A pull uses the organization's registry whose normalised URL (plus `/project` when set) is
//! a prefix of the image's `host/repository` on a boundary (`/`, `:` or the end); the longest
//! prefix wins. An image on Docker Hub with no match uses the organization's `dockerhub`
//! registry if it has one. ECR registries get their password from STS and ECR
//! ([`super::ecr`]).

use std::sync::Arc;

use cove_image::{Credentials, ImageStore, Pulled};
use cove_types::dto::{CreateDockerRegistry, DockerRegistryDto, EcrBrokerDto, UpdateDockerRegistry};
use cove_types::{ErrorKind, ImageRef};

use super::ecr::{AwsEndpoints, EcrAuth, EcrError, EcrHost, is_role_arn, session_name};
use super::keys::Principal;
use super::secrets::{SecretBox, SecretError};
use super::{iso, now_millis};
use crate::store::{RegistryRecord, Store, StoreError};

/// Registries one organization may have.
pub const MAX_REGISTRIES_PER_ORG: usize = 100;
/// `registryType` of every registry created through the API.
pub const REGISTRY_TYPE: &str = "organization";
const DOCKER_HUB: &str = "docker.io";
const GHCR: &str = "ghcr.io";
/// The user name Google Artifact Registry expects with a service-account JSON key.
pub const GOOGLE_JSON_KEY_USER: &str = "_json_key";
/// The user name of ECR authorization tokens.
pub const ECR_USER: &str = "AWS";

/// Kinds of registry, each with its own rules for URL, user and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Docker Hub: URL fixed to `docker.io`, user name + personal access token.
    DockerHub,
    /// Google Artifact Registry: region URL, project, service-account JSON key.
    Google,
    /// GitHub Container Registry: `ghcr.io`, user name + personal access token.
    GitHub,
    /// Amazon ECR: registry URL + role ARN, the password comes from STS/ECR.
    Ecr,
    /// Any registry with a user name and password.
    Generic,
}

impl Provider {
    /// Every provider, in the order they are listed to users.
    pub const ALL: [Provider; 5] =
        [Provider::DockerHub, Provider::Google, Provider::GitHub, Provider::Ecr, Provider::Generic];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::DockerHub => "dockerhub",
            Provider::Google => "google",
            Provider::GitHub => "github",
            Provider::Ecr => "ecr",
            Provider::Generic => "generic",
        }
    }

    /// Parses a wire name (case-insensitive; `docker-hub`, `gcr`, `ghcr` and `aws` too).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dockerhub" | "docker-hub" | "docker_hub" => Some(Provider::DockerHub),
            "google" | "gar" | "gcr" | "artifact-registry" => Some(Provider::Google),
            "github" | "ghcr" => Some(Provider::GitHub),
            "ecr" | "aws" => Some(Provider::Ecr),
            "generic" | "" => Some(Provider::Generic),
            _ => None,
        }
    }

    fn fixed_url(self) -> Option<&'static str> {
        match self {
            Provider::DockerHub => Some(DOCKER_HUB),
            Provider::GitHub => Some(GHCR),
            _ => None,
        }
    }
}

/// A failed registry operation.
#[derive(Debug, thiserror::Error)]
pub enum DockerRegistryError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such registry in the caller's organization.
    #[error("docker registry {id} not found")]
    NotFound {
        /// What was asked for.
        id: String,
    },
    /// The organization has as many registries as allowed.
    #[error("an organization can have at most {MAX_REGISTRIES_PER_ORG} docker registries; delete one first")]
    TooMany,
    /// Sealing or opening a stored secret failed.
    #[error("{op}")]
    Secret {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: SecretError,
    },
    /// Getting ECR credentials failed.
    #[error("cannot get ECR credentials for {registry}")]
    Ecr {
        /// The registry record, described.
        registry: String,
        /// Cause.
        #[source]
        source: EcrError,
    },
    /// The server's own AWS identity could not be found.
    #[error("cannot tell which AWS identity the server assumes ECR roles with")]
    Broker {
        /// Cause.
        #[source]
        source: EcrError,
    },
    /// The store failed.
    #[error("{op}")]
    Store {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
}

impl DockerRegistryError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidArgument,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::TooMany => ErrorKind::FailedPrecondition,
            Self::Secret { source, .. } => source.kind(),
            Self::Ecr { source, .. } | Self::Broker { source } => source.kind(),
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> DockerRegistryError {
    move |source| DockerRegistryError::Store { op, source }
}

fn invalid(msg: impl Into<String>) -> DockerRegistryError {
    DockerRegistryError::Invalid(msg.into())
}

/// Credentials chosen for a pull, with the record they come from.
#[derive(Debug, Clone)]
pub struct PullAuth {
    /// `registry "NAME" (id ID, URL)`, for error messages.
    pub registry: String,
    /// What is sent to the registry (and its mirrors).
    pub credentials: Credentials,
}

/// Registry CRUD and pull credentials.
#[derive(Debug, Clone)]
pub struct DockerRegistryService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    ecr: EcrAuth,
}

impl DockerRegistryService {
    /// A service over `store`, sealing secrets with `secrets`.
    pub fn new(store: Arc<dyn Store>, secrets: SecretBox, aws: AwsEndpoints) -> Self {
        DockerRegistryService { inner: Arc::new(Inner { store, secrets, ecr: EcrAuth::new(aws) }) }
    }

    /// `POST /docker-registry`.
    pub async fn create(
        &self,
        who: &Principal,
        req: CreateDockerRegistry,
    ) -> Result<DockerRegistryDto, DockerRegistryError> {
        let provider = match req.provider.as_deref() {
            None => Provider::Generic,
            Some(p) => Provider::parse(p).ok_or_else(|| invalid(unknown_provider(p)))?,
        };
        let existing = self.inner.store.list_registries(&who.org_id).await.map_err(store("list registries"))?;
        if existing.len() >= MAX_REGISTRIES_PER_ORG {
            return Err(DockerRegistryError::TooMany);
        }
        let now = now_millis();
        let fields = Fields {
            name: req.name,
            url: req.url.unwrap_or_default(),
            username: req.username.unwrap_or_default(),
            project: req.project.unwrap_or_default(),
            role_arn: req.role_arn,
        };
        let fields = validate(provider, fields)?;
        let password = req.password.filter(|p| !p.is_empty());
        check_password(provider, password.as_deref())?;
        let mut rec = RegistryRecord {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: who.org_id.clone(),
            name: fields.name,
            url: fields.url,
            username: fields.username,
            sealed_secret: None,
            project: fields.project,
            provider: provider.as_str().to_string(),
            role_arn: fields.role_arn,
            created_at: now,
            updated_at: now,
        };
        if let Some(p) = password {
            rec.sealed_secret = Some(self.seal(&rec, &p)?);
        }
        self.inner.store.insert_registry(&rec).await.map_err(store("create registry"))?;
        tracing::info!(registry_id = %rec.id, org_id = %rec.org_id, name = %rec.name, url = %rec.url, provider = %rec.provider, "docker registry created");
        Ok(to_dto(&rec))
    }

    /// `GET /docker-registry`: the organization's registries, newest first.
    pub async fn list(&self, who: &Principal) -> Result<Vec<DockerRegistryDto>, DockerRegistryError> {
        let rows = self.inner.store.list_registries(&who.org_id).await.map_err(store("list registries"))?;
        Ok(rows.iter().map(to_dto).collect())
    }

    /// `GET /docker-registry/{id}`.
    pub async fn get(&self, who: &Principal, id: &str) -> Result<DockerRegistryDto, DockerRegistryError> {
        Ok(to_dto(&self.find(who, id).await?))
    }

    /// `PATCH /docker-registry/{id}`: absent fields and an empty password keep their values.
    pub async fn update(
        &self,
        who: &Principal,
        id: &str,
        req: UpdateDockerRegistry,
    ) -> Result<DockerRegistryDto, DockerRegistryError> {
        let mut rec = self.find(who, id).await?;
        let provider = Provider::parse(&rec.provider).unwrap_or(Provider::Generic);
        if let Some(p) = req.provider.as_deref() {
            let asked = Provider::parse(p).ok_or_else(|| invalid(unknown_provider(p)))?;
            if asked != provider {
                return Err(invalid(format!(
                    "the type of registry {:?} is {} and cannot be changed; delete it and add a {} registry",
                    rec.name,
                    provider.as_str(),
                    asked.as_str()
                )));
            }
        }
        let fields = validate(
            provider,
            Fields {
                name: req.name.unwrap_or_else(|| rec.name.clone()),
                url: req.url.unwrap_or_else(|| rec.url.clone()),
                username: req.username.unwrap_or_else(|| rec.username.clone()),
                project: req.project.unwrap_or_else(|| rec.project.clone()),
                role_arn: req.role_arn.or_else(|| rec.role_arn.clone()),
            },
        )?;
        let password = req.password.filter(|p| !p.is_empty());
        if password.is_some() {
            check_password(provider, password.as_deref())?;
        }
        rec.name = fields.name;
        rec.url = fields.url;
        rec.username = fields.username;
        rec.project = fields.project;
        rec.role_arn = fields.role_arn;
        rec.updated_at = now_millis().max(rec.updated_at);
        if let Some(p) = password {
            rec.sealed_secret = Some(self.seal(&rec, &p)?);
        }
        if !self.inner.store.update_registry(&rec).await.map_err(store("update registry"))? {
            return Err(DockerRegistryError::NotFound { id: id.to_string() });
        }
        tracing::info!(registry_id = %rec.id, org_id = %rec.org_id, name = %rec.name, url = %rec.url, "docker registry updated");
        Ok(to_dto(&rec))
    }

    /// `DELETE /docker-registry/{id}`.
    pub async fn delete(&self, who: &Principal, id: &str) -> Result<(), DockerRegistryError> {
        if !self.inner.store.delete_registry(&who.org_id, id).await.map_err(store("delete registry"))? {
            return Err(DockerRegistryError::NotFound { id: id.to_string() });
        }
        tracing::info!(registry_id = %id, org_id = %who.org_id, "docker registry deleted");
        Ok(())
    }

    /// `GET /docker-registry/ecr-broker`: the identity, external id and session name the
    /// caller's organization's ECR roles must trust.
    pub async fn ecr_broker(&self, who: &Principal) -> Result<EcrBrokerDto, DockerRegistryError> {
        let id = self.inner.ecr.broker_identity().await.map_err(|source| DockerRegistryError::Broker { source })?;
        Ok(EcrBrokerDto {
            principal_arn: id.arn,
            account: id.account,
            external_id: who.org_id.clone(),
            session_name: session_name(&who.org_id),
        })
    }

    /// The credentials `org_id` has for `image`, if any of its registries matches.
    pub async fn pull_auth(&self, org_id: &str, image: &ImageRef) -> Result<Option<PullAuth>, DockerRegistryError> {
        let rows = self.inner.store.list_registries(org_id).await.map_err(store("list registries"))?;
        let Some(rec) = pick(&rows, image) else {
            return Ok(None);
        };
        let registry = describe(rec);
        let credentials = if rec.provider == Provider::Ecr.as_str() {
            let role = rec.role_arn.as_deref().unwrap_or_default();
            let host = rec.url.split('/').next().unwrap_or_default();
            self.inner
                .ecr
                .credentials(org_id, role, host)
                .await
                .map_err(|source| DockerRegistryError::Ecr { registry: registry.clone(), source })?
        } else {
            let sealed = rec.sealed_secret.as_deref().unwrap_or_default();
            let password =
                self.inner.secrets.unseal(sealed, &secret_context(rec)).map_err(|source| {
                    DockerRegistryError::Secret { op: "open the registry's stored password", source }
                })?;
            Credentials { username: rec.username.clone(), password }
        };
        tracing::debug!(registry_id = %rec.id, image = %image, "using registry credentials for pull");
        Ok(Some(PullAuth { registry, credentials }))
    }

    /// Pulls `image` for `org_id` with the credentials of its matching registry. The error is
    /// a snapshot's `errorReason`: an authorization failure names the registry record used,
    /// or says that none matched. The image may unpack to at most `max_unpacked_bytes`.
    pub async fn pull(
        &self,
        images: &ImageStore,
        org_id: &str,
        image: &ImageRef,
        max_unpacked_bytes: u64,
    ) -> Result<Pulled, String> {
        let auth = self.pull_auth(org_id, image).await.map_err(|e| {
            let headline = match e.kind() {
                ErrorKind::Unauthenticated | ErrorKind::FailedPrecondition => "unauthorized to pull image",
                _ => "cannot get the credentials to pull image",
            };
            format!("{headline} {image}: {}", cove_types::error::chain(&e))
        })?;
        images.pull(image, auth.as_ref().map(|a| &a.credentials), max_unpacked_bytes).await.map_err(|e| {
            let kind = e.kind();
            let e = cove_types::error::chain(&e);
            if kind != ErrorKind::Unauthenticated {
                return e;
            }
            match &auth {
                Some(a) => format!("{e}; the credentials of {} were used", a.registry),
                None => format!(
                    "{e}; no docker registry of this organization matches {}/{} (add one with POST /api/docker-registry or `cove registry add`)",
                    image.registry, image.repository
                ),
            }
        })
    }

    async fn find(&self, who: &Principal, id: &str) -> Result<RegistryRecord, DockerRegistryError> {
        self.inner
            .store
            .get_registry(&who.org_id, id)
            .await
            .map_err(store("get registry"))?
            .ok_or_else(|| DockerRegistryError::NotFound { id: id.to_string() })
    }

    fn seal(&self, rec: &RegistryRecord, password: &str) -> Result<String, DockerRegistryError> {
        self.inner
            .secrets
            .seal(password, &secret_context(rec))
            .map_err(|source| DockerRegistryError::Secret { op: "encrypt the registry password", source })
    }
}

/// The associated data a row's secret is sealed with: it only opens in that row.
fn secret_context(rec: &RegistryRecord) -> String {
    format!("cove/docker-registry/{}/{}", rec.org_id, rec.id)
}

fn describe(rec: &RegistryRecord) -> String {
    let prefix = registry_prefix(&rec.url, &rec.project);
    format!("registry {:?} (id {}, {prefix})", rec.name, rec.id)
}

fn unknown_provider(p: &str) -> String {
    let all: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
    format!("unknown registry type {p:?}; expected one of {}", all.join(", "))
}

struct Fields {
    name: String,
    url: String,
    username: String,
    project: String,
    role_arn: Option<String>,
}

/// Applies `provider`'s rules: normalised URL, implied user names, project and role checks.
fn validate(provider: Provider, f: Fields) -> Result<Fields, DockerRegistryError> {
    let name = f.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name is required (1 to 100 characters)"));
    }
    let given = f.url.trim();
    let url = match provider.fixed_url() {
        Some(fixed) if given.is_empty() => fixed.to_string(),
        Some(fixed) => {
            let u = normalize_url(given).map_err(invalid)?;
            if u != fixed {
                return Err(invalid(format!(
                    "a {} registry's URL is always {fixed} (got {given:?}); use type generic for another host",
                    provider.as_str()
                )));
            }
            u
        }
        None if given.is_empty() => {
            return Err(invalid(format!("url is required for a {} registry", provider.as_str())));
        }
        None => normalize_url(given).map_err(invalid)?,
    };
    let project = f.project.trim().trim_matches('/').to_ascii_lowercase();
    if !project.is_empty() && !project.split('/').all(valid_path_segment) {
        return Err(invalid(format!(
            "invalid project {:?}: use lowercase letters, digits, '.', '_', '-' and '/'",
            f.project
        )));
    }
    let username = match provider {
        Provider::Google => {
            let u = f.username.trim();
            if u.is_empty() || u == GOOGLE_JSON_KEY_USER { GOOGLE_JSON_KEY_USER.to_string() } else { u.to_string() }
        }
        Provider::Ecr => ECR_USER.to_string(),
        _ => {
            let u = f.username.trim();
            if u.is_empty() {
                return Err(invalid(format!("username is required for a {} registry", provider.as_str())));
            }
            u.to_string()
        }
    };
    let role_arn = f.role_arn.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    match provider {
        Provider::Google if project.is_empty() => {
            return Err(invalid("project (the Google Cloud project id) is required for a google registry"));
        }
        Provider::Ecr => {
            let host = url.split('/').next().unwrap_or_default();
            if host != url || EcrHost::parse(host).is_none() {
                return Err(invalid(format!(
                    "an ecr registry's URL is <account>.dkr.ecr.<region>.amazonaws.com (got {given:?})"
                )));
            }
            match &role_arn {
                None => return Err(invalid("roleArn is required for an ecr registry: the server assumes that role")),
                Some(r) if !is_role_arn(r) => {
                    return Err(invalid(format!("invalid roleArn {r:?}: expected arn:aws:iam::<account>:role/<name>")));
                }
                Some(_) => {}
            }
        }
        _ if role_arn.is_some() => return Err(invalid("roleArn applies only to ecr registries")),
        _ => {}
    }
    Ok(Fields { name, url, username, project, role_arn })
}

fn check_password(provider: Provider, password: Option<&str>) -> Result<(), DockerRegistryError> {
    match (provider, password) {
        (Provider::Ecr, Some(_)) => {
            Err(invalid("an ecr registry takes no password: the server gets one by assuming roleArn"))
        }
        (Provider::Ecr, None) => Ok(()),
        (p, None) => Err(invalid(format!(
            "password is required for a {} registry{}",
            p.as_str(),
            match p {
                Provider::DockerHub | Provider::GitHub => " (a personal access token)",
                Provider::Google => " (the service account's JSON key)",
                _ => "",
            }
        ))),
        (Provider::Google, Some(k)) => match serde_json::from_str::<serde_json::Value>(k) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            _ => Err(invalid("the password of a google registry is the service account's JSON key, as downloaded")),
        },
        (_, Some(_)) => Ok(()),
    }
}

/// Normalises a registry URL: scheme, trailing slashes and Docker Hub's aliases removed,
/// host lowercased. Refuses anything that is not `host[:port][/path]`.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid registry URL {url:?}: {why}");
    let s = url.trim();
    let lower = s.to_ascii_lowercase();
    let s = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else if lower.contains("://") {
        return Err(bad("only http:// and https:// URLs (or a bare host) are allowed"));
    } else {
        s
    };
    let s = s.trim_end_matches('/').to_ascii_lowercase();
    if s.is_empty() {
        return Err(bad("no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || "@?#\\".contains(c)) {
        return Err(bad("expected host[:port][/path] without credentials, query or fragment"));
    }
    let (host, path) = s.split_once('/').unwrap_or((s.as_str(), ""));
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !name_ok {
        return Err(bad("the host name is not valid"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |n| n == 0)
    {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    if !path.is_empty() && !path.split('/').all(valid_path_segment) {
        return Err(bad("the path may only hold lowercase letters, digits, '.', '_' and '-' between slashes"));
    }
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    };
    // Docker's own config spells Docker Hub `https://index.docker.io/v1/`.
    if host == DOCKER_HUB && (path == "v1" || path == "v2") {
        return Ok(DOCKER_HUB.to_string());
    }
    Ok(if path.is_empty() { host.to_string() } else { format!("{host}/{path}") })
}

fn valid_path_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// `url` or `url/project`.
pub fn registry_prefix(url: &str, project: &str) -> String {
    if project.is_empty() { url.to_string() } else { format!("{url}/{project}") }
}

/// Whether `prefix` covers `image_path` (`host/repository`): equal, or followed by `/` or `:`.
pub fn prefix_matches(prefix: &str, image_path: &str) -> bool {
    image_path
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with(':'))
}

/// The record whose prefix covers `image` (longest first; among equals the first listed, i.e.
/// the newest); for a Docker Hub image without a match, the first `dockerhub` record.
pub fn pick<'a>(records: &'a [RegistryRecord], image: &ImageRef) -> Option<&'a RegistryRecord> {
    let path = format!("{}/{}", image.registry.to_ascii_lowercase(), image.repository);
    let mut best: Option<(&RegistryRecord, usize)> = None;
    for r in records {
        let prefix = registry_prefix(&r.url, &r.project);
        if prefix_matches(&prefix, &path) && best.is_none_or(|(_, len)| prefix.len() > len) {
            best = Some((r, prefix.len()));
        }
    }
    best.map(|(r, _)| r).or_else(|| {
        (image.registry == DOCKER_HUB).then(|| records.iter().find(|r| r.provider == Provider::DockerHub.as_str()))?
    })
}

fn to_dto(r: &RegistryRecord) -> DockerRegistryDto {
    DockerRegistryDto {
        id: r.id.clone(),
        name: r.name.clone(),
        url: r.url.clone(),
        username: r.username.clone(),
        project: r.project.clone(),
        registry_type: REGISTRY_TYPE.to_string(),
        created_at: iso(r.created_at),
        updated_at: iso(r.updated_at),
        provider: r.provider.clone(),
        role_arn: r.role_arn.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, url: &str, project: &str, provider: Provider) -> RegistryRecord {
        RegistryRecord {
            id: id.into(),
            org_id: "org".into(),
            name: id.into(),
            url: url.into(),
            username: "u".into(),
            sealed_secret: None,
            project: project.into(),
            provider: provider.as_str().into(),
            role_arn: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn fields(url: &str, username: &str, project: &str, role_arn: Option<&str>) -> Fields {
        Fields {
            name: "n".into(),
            url: url.into(),
            username: username.into(),
            project: project.into(),
            role_arn: role_arn.map(Into::into),
        }
    }

    #[test]
    fn urls_lose_their_scheme_trailing_slash_and_docker_hub_aliases() {
        assert_eq!(normalize_url("https://Registry.Example.com/").unwrap(), "registry.example.com");
        assert_eq!(normalize_url("http://127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(normalize_url(" us-docker.pkg.dev/proj/repo/ ").unwrap(), "us-docker.pkg.dev/proj/repo");
        assert_eq!(normalize_url("https://index.docker.io/v1/").unwrap(), "docker.io");
        assert_eq!(normalize_url("registry-1.docker.io").unwrap(), "docker.io");
        for bad in [
            "",
            "ftp://x.io",
            "https://",
            "user:pw@x.io",
            "x.io?q=1",
            "x .io",
            "-x.io",
            "x.io:99999",
            "x.io:0",
            "x.io/Upper Case",
            "x.io//a",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_prefix_matches_only_on_a_boundary() {
        assert!(prefix_matches("ghcr.io/acme", "ghcr.io/acme/app"));
        assert!(prefix_matches("ghcr.io/acme", "ghcr.io/acme"));
        assert!(prefix_matches("127.0.0.1", "127.0.0.1:5000/app"));
        assert!(!prefix_matches("ghcr.io/acme", "ghcr.io/acme-evil/app"));
        assert!(!prefix_matches("ghcr.io/acme/app", "ghcr.io/acme"));
    }

    #[test]
    fn the_longest_matching_registry_wins_and_ties_go_to_the_newest() {
        let rows = vec![
            rec("newest-host", "ghcr.io", "", Provider::GitHub),
            rec("project", "ghcr.io", "acme", Provider::GitHub),
            rec("older-host", "ghcr.io", "", Provider::Generic),
            rec("other", "quay.io", "", Provider::Generic),
        ];
        assert_eq!(pick(&rows, &image("ghcr.io/acme/app:1")).unwrap().id, "project");
        assert_eq!(pick(&rows, &image("ghcr.io/other/app:1")).unwrap().id, "newest-host");
        assert!(pick(&rows, &image("gcr.io/x/app:1")).is_none());
    }

    #[test]
    fn docker_hub_images_use_the_dockerhub_registry_even_without_a_matching_project() {
        let rows = vec![
            rec("gen", "127.0.0.1:5000", "", Provider::Generic),
            rec("hub", "docker.io", "team", Provider::DockerHub),
        ];
        assert_eq!(pick(&rows, &image("private/app:1.0")).unwrap().id, "hub");
        assert_eq!(pick(&rows, &image("python:3.12")).unwrap().id, "hub");
        assert!(pick(&rows[..1], &image("python:3.12")).is_none());
        let rows = vec![
            rec("hub-team", "docker.io", "team", Provider::DockerHub),
            rec("hub", "docker.io", "", Provider::DockerHub),
        ];
        assert_eq!(pick(&rows, &image("team/app:1.0")).unwrap().id, "hub-team");
    }

    #[test]
    fn each_provider_gets_its_fixed_url_and_implied_user() {
        let f = validate(Provider::DockerHub, fields("", "me", "", None)).unwrap();
        assert_eq!(f.url, "docker.io");
        let f = validate(Provider::DockerHub, fields("https://index.docker.io/v1/", "me", "", None)).unwrap();
        assert_eq!(f.url, "docker.io");
        assert!(validate(Provider::DockerHub, fields("quay.io", "me", "", None)).is_err());
        assert_eq!(validate(Provider::GitHub, fields("", "me", "", None)).unwrap().url, "ghcr.io");
        let g = validate(Provider::Google, fields("https://us-docker.pkg.dev", "", "My-Proj", None)).unwrap();
        assert_eq!(
            (g.url.as_str(), g.username.as_str(), g.project.as_str()),
            ("us-docker.pkg.dev", "_json_key", "my-proj")
        );
        assert!(validate(Provider::Google, fields("us-docker.pkg.dev", "", "", None)).is_err(), "project required");
        let arn = "arn:aws:iam::123456789012:role/pull";
        let e =
            validate(Provider::Ecr, fields("123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", Some(arn))).unwrap();
        assert_eq!(e.username, "AWS");
        assert!(validate(Provider::Ecr, fields("123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", None)).is_err());
        assert!(validate(Provider::Ecr, fields("ghcr.io", "", "", Some(arn))).is_err());
        assert!(
            validate(Provider::Ecr, fields("123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", Some("x"))).is_err()
        );
        assert!(validate(Provider::Generic, fields("x.io", "u", "", Some(arn))).is_err(), "roleArn only for ecr");
        assert!(validate(Provider::Generic, fields("", "u", "", None)).is_err(), "url required");
        assert!(validate(Provider::Generic, fields("x.io", "", "", None)).is_err(), "username required");
    }

    #[test]
    fn passwords_are_required_except_for_ecr_and_google_wants_a_json_key() {
        assert!(check_password(Provider::Generic, None).is_err());
        assert!(check_password(Provider::Generic, Some("pw")).is_ok());
        assert!(check_password(Provider::Ecr, None).is_ok());
        assert!(check_password(Provider::Ecr, Some("pw")).is_err());
        assert!(check_password(Provider::Google, Some("not json")).is_err());
        assert!(check_password(Provider::Google, Some(r#"{"type":"service_account"}"#)).is_ok());
    }

    #[test]
    fn provider_names_parse_with_their_aliases() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
        }
        assert_eq!(Provider::parse("Docker-Hub"), Some(Provider::DockerHub));
        assert_eq!(Provider::parse("quay"), None);
    }
}
