//! Client authorization: roles, which role each request needs, and the
//! stored form of client tokens (`docs/FORMAT.md`, "Authentication").
//!
//! A token is a secret string made by `loglog token new`: [`TOKEN_PREFIX`]
//! and 64 lowercase hex digits (256 random bits). A node stores only its
//! SHA-256 ([`TokenHash`]); a client sends the token once per connection in
//! an AUTH request (opcode 7), and the connection then holds the token's
//! [`Roles`].

use std::fmt;

use sha2::{Digest, Sha256};

use crate::wire::opcode;

/// The start of every token `loglog token new` makes (it lets secret
/// scanners and humans recognise one). Nodes accept any token bytes.
pub const TOKEN_PREFIX: &str = "llt_";
/// Random bytes in a token made by `loglog token new` (256 bits).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Longest token an AUTH request may carry, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;
/// Length of a [`TokenHash`] in bytes.
pub const TOKEN_HASH_LEN: usize = 32;
/// Longest token name (a label in the node's config and logs).
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// Checks a token's name: 1 to [`MAX_TOKEN_NAME_LEN`] of `A-Z a-z 0-9 - _ .`
/// (so it needs no quoting in logs or TOML).
pub fn check_token_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?}: 1 to {MAX_TOKEN_NAME_LEN} of A-Z a-z 0-9 - _ ."
        ))
    }
}

/// A set of roles, as one byte on the wire (the AUTH answer): bit 0
/// `read`, bit 1 `append`, bit 2 `admin`; the other bits are 0. The roles
/// are independent: `admin` grants neither `read` nor `append`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    /// Reads, status and cluster status.
    pub const READ: Roles = Roles(1);
    /// Appends.
    pub const APPEND: Roles = Roles(2);
    /// Admin requests: add and remove nodes, transfer leadership, trim.
    pub const ADMIN: Roles = Roles(4);
    pub const ALL: Roles = Roles(7);

    const NAMED: [(Roles, &'static str); 3] = [
        (Roles::READ, "read"),
        (Roles::APPEND, "append"),
        (Roles::ADMIN, "admin"),
    ];

    pub fn bits(self) -> u8 {
        self.0
    }

    /// The roles of a wire byte; `None` when an unknown bit is set.
    pub fn from_bits(bits: u8) -> Option<Roles> {
        (bits & !Roles::ALL.0 == 0).then_some(Roles(bits))
    }

    /// True when every role of `other` is in `self`.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// One role by its name (`read`, `append`, `admin`).
    pub fn from_name(name: &str) -> Result<Roles, String> {
        Roles::NAMED
            .iter()
            .find(|(_, known)| *known == name)
            .map(|(role, _)| *role)
            .ok_or_else(|| format!("unknown role {name:?}: expected read, append or admin"))
    }

    /// Roles from a comma-separated list of names (`read,append`); at
    /// least one.
    pub fn parse_list(text: &str) -> Result<Roles, String> {
        let mut roles = Roles::NONE;
        for name in text.split(',').map(str::trim) {
            roles = roles.union(Roles::from_name(name)?);
        }
        if roles.is_empty() {
            return Err("no role given: expected read, append or admin".to_string());
        }
        Ok(roles)
    }

    /// The names of the roles in the set, in the order read, append, admin.
    pub fn names(self) -> Vec<&'static str> {
        Roles::NAMED
            .iter()
            .filter(|(role, _)| self.contains(*role))
            .map(|(_, name)| *name)
            .collect()
    }
}

impl fmt::Display for Roles {
    /// The names joined by commas (`read,append`), or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.names().join(","))
    }
}

/// The role a request of this opcode needs when the node has tokens
/// configured. AUTH itself needs none. Any other opcode (one this version
/// does not know) needs `admin`, so that a request type added later is
/// closed to read and append tokens until it is given its role here.
pub fn required_role(request_opcode: u8) -> Roles {
    match request_opcode {
        opcode::AUTH => Roles::NONE,
        opcode::READ | opcode::STATUS | opcode::CLUSTER_STATUS => Roles::READ,
        // An upload is the first half of an append (client-side upload).
        opcode::APPEND | opcode::UPLOAD => Roles::APPEND,
        _ => Roles::ADMIN,
    }
}

/// The stored form of a token: its SHA-256.
///
/// Tokens are 256-bit random secrets, not passwords: nobody can guess one
/// or search a dictionary for it, so one fast hash is as strong as a slow
/// password hash, and checking a token costs a microsecond, not the
/// hundreds of milliseconds a password hash is designed to take. The hash
/// keeps the config file from holding usable secrets.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; TOKEN_HASH_LEN]);

impl TokenHash {
    /// The hash of a token (its bytes as sent, prefix included).
    pub fn of(token: &[u8]) -> TokenHash {
        TokenHash(Sha256::digest(token).into())
    }

    /// 64 lowercase hex digits, as written in the config file.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<TokenHash, String> {
        let bad = || format!("a token hash is {} hex digits", 2 * TOKEN_HASH_LEN);
        let text = text.as_bytes();
        if text.len() != 2 * TOKEN_HASH_LEN {
            return Err(bad());
        }
        let mut hash = [0u8; TOKEN_HASH_LEN];
        for (byte, pair) in hash.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(TokenHash(hash))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// A token from its random bytes: [`TOKEN_PREFIX`] and their lowercase hex.
pub fn format_token(random: &[u8; TOKEN_RANDOM_BYTES]) -> String {
    format!("{TOKEN_PREFIX}{}", hex(random))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_print_and_check() {
        let roles = Roles::parse_list("read, append").unwrap();
        assert_eq!(roles, Roles::READ.union(Roles::APPEND));
        assert_eq!(roles.to_string(), "read,append");
        assert!(roles.contains(Roles::READ) && !roles.contains(Roles::ADMIN));
        assert_eq!(Roles::parse_list("admin,admin").unwrap(), Roles::ADMIN);
        assert!(Roles::parse_list("").is_err());
        assert!(Roles::parse_list("read,write").is_err());
        assert_eq!(Roles::NONE.to_string(), "none");
        assert_eq!(Roles::from_bits(7), Some(Roles::ALL));
        assert_eq!(Roles::from_bits(8), None);
        // Admin implies nothing else.
        assert!(!Roles::ADMIN.contains(Roles::READ));
    }

    #[test]
    fn every_request_needs_its_role() {
        assert_eq!(required_role(opcode::AUTH), Roles::NONE);
        assert_eq!(required_role(opcode::READ), Roles::READ);
        assert_eq!(required_role(opcode::STATUS), Roles::READ);
        assert_eq!(required_role(opcode::CLUSTER_STATUS), Roles::READ);
        assert_eq!(required_role(opcode::APPEND), Roles::APPEND);
        assert_eq!(required_role(opcode::UPLOAD), Roles::APPEND);
        assert_eq!(required_role(opcode::ADMIN), Roles::ADMIN);
        assert_eq!(required_role(200), Roles::ADMIN, "unknown: closed");
    }

    #[test]
    fn a_token_hash_is_sha256_in_hex_and_never_the_token() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let hash = TokenHash::of(b"abc");
        assert_eq!(
            hash.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Ok(hash));
        assert_eq!(TokenHash::from_hex(&hash.to_hex().to_uppercase()), Ok(hash));
        assert!(TokenHash::from_hex("ba78").is_err());
        assert!(TokenHash::from_hex(&"g".repeat(64)).is_err());
        let token = format_token(&[0xab; TOKEN_RANDOM_BYTES]);
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 64);
        assert!(token.starts_with("llt_abab"));
        let stored = TokenHash::of(token.as_bytes()).to_hex();
        assert_ne!(stored, token);
        assert!(!stored.contains(&token[TOKEN_PREFIX.len()..]));
    }
}
