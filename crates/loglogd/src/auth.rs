//! Client authentication and authorization.
//!
//! With no token configured, authentication is off: every connection may
//! make every request (the local default). With tokens, a connection starts
//! with no role; an AUTH request (opcode 7) with a known token gives it
//! that token's roles, and every other request needs its role
//! ([`loglog_proto::auth::required_role`]) or is answered `Unauthorized`
//! before anything else looks at it. The check on the hot path is one bit
//! test of a byte the connection holds; the token is hashed once, at AUTH.
//!
//! Peer connections are not checked here (peers authenticate with TLS
//! certificates), nor is the metrics endpoint (it serves no log data).

use std::net::SocketAddr;

use loglog_proto::auth::{check_token_name, required_role, Roles, TokenHash};
use loglog_proto::wire::{opcode, ServerError};
use subtle::ConstantTimeEq;

/// Most tokens a node accepts in its configuration. Each AUTH compares
/// against all of them.
pub const MAX_TOKENS: usize = 1024;

/// One configured client token: who it is for, the SHA-256 of the secret,
/// and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    /// A label for logs (which token connected); unique in the config.
    pub name: String,
    pub hash: TokenHash,
    pub roles: Roles,
}

/// The node's client tokens (`[[auth.tokens]]` in the config file).
/// Empty: authentication is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
}

impl AuthConfig {
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks names, roles, duplicates and the bound on the number of tokens.
    pub fn validate(&self) -> Result<(), String> {
        if self.tokens.len() > MAX_TOKENS {
            return Err(format!(
                "{} auth tokens configured; at most {MAX_TOKENS}",
                self.tokens.len()
            ));
        }
        for (index, token) in self.tokens.iter().enumerate() {
            let name = &token.name;
            check_token_name(name).map_err(|error| format!("auth {error}"))?;
            if token.roles.is_empty() {
                return Err(format!("auth token {name:?} has no role"));
            }
            let earlier = &self.tokens[..index];
            if earlier.iter().any(|other| other.name == *name) {
                return Err(format!("auth token name {name:?} is used twice"));
            }
            if earlier.iter().any(|other| other.hash == token.hash) {
                return Err(format!(
                    "auth token {name:?} has the same hash as another token"
                ));
            }
        }
        Ok(())
    }

    /// The entry whose hash is the token's, if any. The token is hashed
    /// once and compared with every entry in constant time, without
    /// stopping at a match, so the time taken tells nothing about the
    /// stored hashes.
    pub fn find(&self, token: &[u8]) -> Option<&TokenEntry> {
        let hash = TokenHash::of(token);
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.hash.0.ct_eq(&hash.0)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// The `[auth]` table of a config file:
///
/// ```toml
/// [[auth.tokens]]
/// name = "ingest"
/// sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// roles = ["read", "append"]
/// ```
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    #[serde(default)]
    pub tokens: Vec<FileToken>,
}

/// One `[[auth.tokens]]` entry of a config file.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub name: String,
    /// The token's SHA-256, 64 hex digits (`loglog token new` prints it).
    pub sha256: String,
    /// Among `read`, `append`, `admin`.
    pub roles: Vec<String>,
}

impl FileAuth {
    /// The checked configuration (see [`AuthConfig::validate`]).
    pub fn to_config(&self) -> Result<AuthConfig, String> {
        let tokens = self
            .tokens
            .iter()
            .map(|token| {
                let context = |error: String| format!("auth token {:?}: {error}", token.name);
                let mut roles = Roles::NONE;
                for name in &token.roles {
                    roles = roles.union(Roles::from_name(name).map_err(context)?);
                }
                Ok(TokenEntry {
                    name: token.name.clone(),
                    hash: TokenHash::from_hex(&token.sha256).map_err(context)?,
                    roles,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let config = AuthConfig { tokens };
        config.validate()?;
        Ok(config)
    }

    /// The file form of a configuration; `None` when authentication is off.
    pub fn from_config(config: &AuthConfig) -> Option<FileAuth> {
        config.is_enabled().then(|| FileAuth {
            tokens: config
                .tokens
                .iter()
                .map(|token| FileToken {
                    name: token.name.clone(),
                    sha256: token.hash.to_hex(),
                    roles: token
                        .roles
                        .names()
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                })
                .collect(),
        })
    }
}

/// What one client connection may do.
pub(crate) struct ConnectionAccess {
    roles: Roles,
    /// The name of the token that gave the roles (for logs).
    token_name: Option<String>,
    /// Whether an unknown token was logged: once per connection, so that a
    /// client repeating bad AUTHs cannot flood the log.
    logged_unknown: bool,
}

impl ConnectionAccess {
    /// A new connection: every role with authentication off, none with it on.
    pub(crate) fn new(auth: &AuthConfig) -> ConnectionAccess {
        ConnectionAccess {
            roles: if auth.is_enabled() {
                Roles::NONE
            } else {
                Roles::ALL
            },
            token_name: None,
            logged_unknown: false,
        }
    }

    /// Whether the connection may make no request at all: with
    /// authentication on, until a known token was sent.
    pub(crate) fn holds_no_role(&self) -> bool {
        self.roles.is_empty()
    }

    /// Checks a request of `request_opcode` (not AUTH) against the
    /// connection's roles: `Err(Unauthorized)` is its whole answer.
    pub(crate) fn admit(&self, request_opcode: u8) -> Result<(), ServerError> {
        let needed = required_role(request_opcode);
        if self.roles.contains(needed) {
            return Ok(());
        }
        let what = match request_opcode {
            opcode::APPEND => "an append".to_string(),
            opcode::UPLOAD => "an upload".to_string(),
            opcode::READ => "a read".to_string(),
            opcode::STATUS | opcode::CLUSTER_STATUS => "a status request".to_string(),
            opcode::ADMIN => "an admin request".to_string(),
            other => format!("opcode {other}"),
        };
        let message = match &self.token_name {
            None => format!(
                "{what} needs the {needed} role; this connection sent no valid token \
                 (--token, LOGLOG_TOKEN)"
            ),
            Some(name) => format!(
                "{what} needs the {needed} role; token {name:?} has {}",
                self.roles
            ),
        };
        Err(ServerError::Unauthorized { message })
    }

    /// An AUTH request: with authentication on, a known token replaces the
    /// connection's roles by its own, and an unknown one leaves it none.
    /// With authentication off, any token is accepted with every role.
    pub(crate) fn authenticate(
        &mut self,
        auth: &AuthConfig,
        token: &[u8],
        peer: SocketAddr,
    ) -> Result<Roles, ServerError> {
        if !auth.is_enabled() {
            return Ok(Roles::ALL);
        }
        match auth.find(token) {
            Some(entry) => {
                tracing::debug!(%peer, token = %entry.name, roles = %entry.roles, "client authenticated");
                self.roles = entry.roles;
                self.token_name = Some(entry.name.clone());
                Ok(entry.roles)
            }
            None => {
                if !std::mem::replace(&mut self.logged_unknown, true) {
                    tracing::warn!(%peer, "client sent an unknown token");
                }
                self.roles = Roles::NONE;
                self.token_name = None;
                Err(ServerError::Unauthorized {
                    message: "unknown token".to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str, roles: Roles) -> TokenEntry {
        TokenEntry {
            name: name.to_string(),
            hash: TokenHash::of(token.as_bytes()),
            roles,
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn off_without_tokens_and_role_checked_with_them() {
        let off = AuthConfig::default();
        let access = ConnectionAccess::new(&off);
        for code in [opcode::APPEND, opcode::READ, opcode::ADMIN] {
            assert!(access.admit(code).is_ok());
        }
        let auth = AuthConfig {
            tokens: vec![
                entry("reader", "llt_r", Roles::READ),
                entry("ops", "llt_o", Roles::ADMIN.union(Roles::READ)),
            ],
        };
        auth.validate().unwrap();
        let mut access = ConnectionAccess::new(&auth);
        assert!(matches!(
            access.admit(opcode::STATUS),
            Err(ServerError::Unauthorized { .. })
        ));
        assert_eq!(
            access.authenticate(&auth, b"llt_r", peer()),
            Ok(Roles::READ)
        );
        assert!(access.admit(opcode::READ).is_ok());
        let Err(ServerError::Unauthorized { message }) = access.admit(opcode::APPEND) else {
            panic!("a read token appended");
        };
        assert!(message.contains("\"reader\""), "{message}");
        assert!(access.admit(opcode::ADMIN).is_err());
        assert!(access.authenticate(&auth, b"llt_o", peer()).is_ok());
        assert!(access.admit(opcode::ADMIN).is_ok());
        assert!(access.admit(opcode::APPEND).is_err());
        // A wrong token takes every role away.
        assert!(access.authenticate(&auth, b"llt_x", peer()).is_err());
        assert!(access.admit(opcode::READ).is_err());
    }

    #[test]
    fn bad_token_configs_are_rejected() {
        let two = |a: TokenEntry, b: TokenEntry| AuthConfig { tokens: vec![a, b] };
        assert!(
            two(entry("a", "1", Roles::READ), entry("a", "2", Roles::READ))
                .validate()
                .is_err()
        );
        assert!(
            two(entry("a", "1", Roles::READ), entry("b", "1", Roles::READ))
                .validate()
                .is_err()
        );
        assert!(
            two(entry("a", "1", Roles::READ), entry("b c", "2", Roles::READ))
                .validate()
                .is_err()
        );
        assert!(
            two(entry("a", "1", Roles::READ), entry("b", "2", Roles::NONE))
                .validate()
                .is_err()
        );
        let many = AuthConfig {
            tokens: (0..=MAX_TOKENS)
                .map(|i| entry(&format!("t{i}"), &format!("s{i}"), Roles::READ))
                .collect(),
        };
        assert!(many.validate().is_err());
    }
}
