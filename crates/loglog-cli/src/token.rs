//! `loglog token new`: makes a client token and the config entry a node
//! needs to accept it. Talks to no node.

use clap::{Args, Subcommand};
use loglog_proto::auth::{check_token_name, format_token, Roles, TokenHash, TOKEN_RANDOM_BYTES};
use rand::RngCore;

/// Make client tokens for nodes with authentication on.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a new random token (256 bits from the OS's CSPRNG).
    ///
    /// Prints the token on the first line of stdout (give it to the client:
    /// --token or LOGLOG_TOKEN; it is shown only now), then the
    /// `[[auth.tokens]]` entry to add to every node's config file, which
    /// holds the token's SHA-256, never the token.
    New {
        /// A label for the token, unique in the config (shown in the
        /// node's logs): 1 to 64 of A-Z a-z 0-9 - _ .
        #[arg(long)]
        name: String,
        /// What the token may do, comma-separated: read (reads, status),
        /// append, admin (add/remove node, transfer leadership, trim).
        /// Roles are independent: admin does not include read.
        #[arg(long, value_parser = Roles::parse_list)]
        roles: Roles,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::New { name, roles } => {
            check_token_name(&name).map_err(|error| anyhow::anyhow!("--name: {error}"))?;
            let mut random = [0u8; TOKEN_RANDOM_BYTES];
            rand::rngs::OsRng
                .try_fill_bytes(&mut random)
                .map_err(|error| anyhow::anyhow!("the OS random source failed: {error}"))?;
            let token = format_token(&random);
            print!("{}", token_output(&token, &name, roles));
            Ok(())
        }
    }
}

/// The token line, then the config entry (TOML) holding its hash.
fn token_output(token: &str, name: &str, roles: Roles) -> String {
    let roles: Vec<String> = roles
        .names()
        .into_iter()
        .map(|role| format!("\"{role}\""))
        .collect();
    format!(
        "{token}\n\
         # loglogd config entry for token \"{name}\" (the token's SHA-256):\n\
         [[auth.tokens]]\n\
         name = \"{name}\"\n\
         sha256 = \"{}\"\n\
         roles = [{}]\n",
        TokenHash::of(token.as_bytes()).to_hex(),
        roles.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_holds_the_hash_and_never_the_token() {
        let token = format_token(&[7; TOKEN_RANDOM_BYTES]);
        let output = token_output(&token, "ci", Roles::READ.union(Roles::APPEND));
        let mut lines = output.lines();
        assert_eq!(lines.next(), Some(token.as_str()));
        let entry: String = lines.map(|line| format!("{line}\n")).collect();
        assert!(!entry.contains(&token[4..]), "{entry}");
        assert!(entry.contains(&TokenHash::of(token.as_bytes()).to_hex()));
        assert!(entry.contains("roles = [\"read\", \"append\"]"), "{entry}");
    }
}
