//! The client's token: sent once on every connection it opens, before any
//! other request (AUTH, opcode 7), when the client config has one.

use std::fmt;

use bytes::Bytes;
use loglog_proto::auth::{Roles, MAX_TOKEN_LEN};
use loglog_proto::wire::opcode;

use crate::connection::Connection;
use crate::error::Error;

/// A client token (`loglog token new` makes them). Its `Debug` does not
/// show the secret, so a logged [`crate::ClientConfig`] leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// A token as given (`llt_...`); surrounding whitespace (a trailing
    /// newline from a file) is dropped. Fails when empty or longer than
    /// the protocol allows.
    pub fn new(token: impl Into<String>) -> Result<AuthToken, Error> {
        let token = token.into();
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidArgument(format!(
                "a token is 1 to {MAX_TOKEN_LEN} bytes"
            )));
        }
        Ok(AuthToken(token.to_string()))
    }

    /// The secret itself.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl std::str::FromStr for AuthToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<AuthToken, Error> {
        AuthToken::new(text)
    }
}

/// Authenticates a fresh connection; returns the roles the node granted
/// (every role from a node with authentication off). An unknown token is
/// `Error::Server` with `ServerError::Unauthorized`.
pub(crate) async fn authenticate(
    connection: &Connection,
    token: &AuthToken,
) -> Result<Roles, Error> {
    let answer = connection
        .send(
            opcode::AUTH,
            0,
            Bytes::copy_from_slice(token.secret().as_bytes()),
        )
        .await?
        .await
        .unwrap_or_else(|_| {
            Err(Error::Protocol {
                addr: connection.addr().to_string(),
                message: "AUTH dropped without an answer".to_string(),
            })
        })?;
    match answer.as_ref() {
        [bits] => Roles::from_bits(*bits),
        _ => None,
    }
    .ok_or_else(|| Error::Protocol {
        addr: connection.addr().to_string(),
        message: format!("AUTH answer {answer:?} is not a roles byte"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_trimmed_bounded_and_never_debug_printed() {
        let token = AuthToken::new(" llt_secret\n").unwrap();
        assert_eq!(token.secret(), "llt_secret");
        let config = crate::ClientConfig {
            token: Some(token),
            ..crate::ClientConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("llt_secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(AuthToken::new("  ").is_err());
        assert!(AuthToken::new("x".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!("x".repeat(MAX_TOKEN_LEN).parse::<AuthToken>().is_ok());
    }
}
