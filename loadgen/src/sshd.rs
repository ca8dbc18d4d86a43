//! The sshd and system log messages the simulated fleet writes, each paired
//! with the signal sshwarden's classifier must derive from it.
//!
//! The shapes are OpenSSH's own (see the kinds documented in
//! `sshwarden_pipeline::classify`). The signal attached to each message
//! mirrors `Classified::signal()`: it is what the line counts for against its
//! instance, and it is the basis of the [`crate::rule_truth`] computation. A test
//! holds every generated line to the real classifier, so the two cannot drift
//! apart silently.

use std::net::IpAddr;

use sshwarden_pipeline::classify::Signal;

/// One message and the signal it is evidence of on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub text: String,
    pub signal: Option<Signal>,
}

fn msg(text: String, signal: Option<Signal>) -> Msg {
    Msg { text, signal }
}

/// How the account of a connection's user is described in close and
/// disconnect lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// A logged-in user: `user U`.
    LoggedIn,
    /// A valid account that has not finished authentication: `authenticating user U`.
    Authenticating,
    /// An account that does not exist: `invalid user U`.
    Invalid,
}

impl Account {
    fn words(self) -> &'static str {
        match self {
            Account::LoggedIn => "user",
            Account::Authenticating => "authenticating user",
            Account::Invalid => "invalid user",
        }
    }

    /// Mirrors `Classified::signal()` for `Disconnect`/`ConnectionClosed`
    /// lines that name a user.
    fn close_signal(self, preauth: bool) -> Option<Signal> {
        match (self, preauth) {
            (Account::Authenticating, true) => Some(Signal::InvalidKey),
            (_, true) | (Account::Invalid, false) => Some(Signal::Disconnect),
            (Account::LoggedIn | Account::Authenticating, false) => None,
        }
    }
}

fn preauth_suffix(preauth: bool) -> &'static str {
    if preauth {
        " [preauth]"
    } else {
        ""
    }
}

/// `Connection from A port P on L port 22 rdomain ""` (LogLevel VERBOSE): context only.
pub fn connection_from(peer: IpAddr, port: u16, local: IpAddr) -> Msg {
    msg(
        format!("Connection from {peer} port {port} on {local} port 22 rdomain \"\""),
        None,
    )
}

/// `Invalid user U from A port P`.
pub fn invalid_user(user: &str, peer: IpAddr, port: u16) -> Msg {
    msg(
        format!("Invalid user {user} from {peer} port {port}"),
        Some(Signal::InvalidUser),
    )
}

/// `Failed password for [invalid user ]U from A port P ssh2`.
pub fn failed_password(user: &str, invalid: bool, peer: IpAddr, port: u16) -> Msg {
    let inv = if invalid { "invalid user " } else { "" };
    msg(
        format!("Failed password for {inv}{user} from {peer} port {port} ssh2"),
        Some(Signal::AuthFailure),
    )
}

/// `Failed publickey for [invalid user ]U from A port P ssh2: TYPE FP`: evidence
/// only for an invalid user (clients offer several keys before the right one).
pub fn failed_publickey(user: &str, invalid: bool, peer: IpAddr, port: u16, key: &str) -> Msg {
    let inv = if invalid { "invalid user " } else { "" };
    msg(
        format!("Failed publickey for {inv}{user} from {peer} port {port} ssh2: {key}"),
        invalid.then_some(Signal::InvalidKey),
    )
}

/// `Accepted METHOD for U from A port P ssh2[: TYPE FP]`.
pub fn accepted(method: &str, user: &str, peer: IpAddr, port: u16, key: Option<&str>) -> Msg {
    let text = match key {
        Some(k) => format!("Accepted {method} for {user} from {peer} port {port} ssh2: {k}"),
        None => format!("Accepted {method} for {user} from {peer} port {port} ssh2"),
    };
    msg(text, None)
}

/// `Received disconnect from A port P:CODE: REASON[ [preauth]]`.
pub fn received_disconnect(peer: IpAddr, port: u16, code: u16, reason: &str, preauth: bool) -> Msg {
    let signal = (preauth || code == 3 || code == 14).then_some(Signal::Disconnect);
    msg(
        format!(
            "Received disconnect from {peer} port {port}:{code}: {reason}{}",
            preauth_suffix(preauth)
        ),
        signal,
    )
}

/// `Disconnected from (user|authenticating user|invalid user) U A port P[ [preauth]]`.
pub fn disconnected(account: Account, user: &str, peer: IpAddr, port: u16, preauth: bool) -> Msg {
    msg(
        format!(
            "Disconnected from {} {user} {peer} port {port}{}",
            account.words(),
            preauth_suffix(preauth)
        ),
        account.close_signal(preauth),
    )
}

/// `Connection closed by (authenticating|invalid) user U A port P[ [preauth]]`.
pub fn closed_by_user(account: Account, user: &str, peer: IpAddr, port: u16, preauth: bool) -> Msg {
    msg(
        format!(
            "Connection closed by {} {user} {peer} port {port}{}",
            account.words(),
            preauth_suffix(preauth)
        ),
        account.close_signal(preauth),
    )
}

/// `Connection closed by A port P[ [preauth]]` or `Connection reset by ...`.
pub fn closed_by_peer(reset: bool, peer: IpAddr, port: u16, preauth: bool) -> Msg {
    let verb = if reset { "reset" } else { "closed" };
    msg(
        format!(
            "Connection {verb} by {peer} port {port}{}",
            preauth_suffix(preauth)
        ),
        preauth.then_some(Signal::Disconnect),
    )
}

/// `Disconnecting invalid user U A port P: Too many authentication failures [preauth]`.
pub fn too_many_failures(user: &str, invalid: bool, peer: IpAddr, port: u16) -> Msg {
    let account = if invalid {
        "invalid user"
    } else {
        "authenticating user"
    };
    msg(
        format!(
            "Disconnecting {account} {user} {peer} port {port}: Too many authentication failures [preauth]"
        ),
        Some(Signal::AuthFailure),
    )
}

/// `pam_unix(sshd:auth): authentication failure; ... rhost=A[  user=U]`: PAM's
/// echo of a failure sshd logs itself, not counted.
pub fn pam_auth_failure(peer: IpAddr, user: Option<&str>) -> Msg {
    let text = match user {
        Some(u) => format!(
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={peer}  user={u}"
        ),
        None => format!(
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={peer}"
        ),
    };
    msg(text, None)
}

/// `pam_unix(sshd:auth): check pass; user unknown`: not a shape sshwarden classifies.
pub fn pam_check_pass_unknown() -> Msg {
    msg("pam_unix(sshd:auth): check pass; user unknown".into(), None)
}

/// `pam_unix(sshd:session): session opened for user U(uid=N) by (uid=0)`.
pub fn session_opened(user: &str, uid: u32) -> Msg {
    msg(
        format!("pam_unix(sshd:session): session opened for user {user}(uid={uid}) by (uid=0)"),
        None,
    )
}

/// `pam_unix(sshd:session): session closed for user U`.
pub fn session_closed(user: &str) -> Msg {
    msg(
        format!("pam_unix(sshd:session): session closed for user {user}"),
        None,
    )
}

/// `kex_exchange_identification: Connection closed by remote host`: protocol
/// noise with no address (the connection's next line names the peer).
pub fn kex_identification() -> Msg {
    msg(
        "kex_exchange_identification: Connection closed by remote host".into(),
        Some(Signal::Protocol),
    )
}

/// `Unable to negotiate with A port P: no matching key exchange method found. ... [preauth]`.
pub fn unable_to_negotiate(peer: IpAddr, port: u16) -> Msg {
    msg(
        format!(
            "Unable to negotiate with {peer} port {port}: no matching key exchange method found. Their offer: diffie-hellman-group14-sha1,diffie-hellman-group-exchange-sha1,diffie-hellman-group1-sha1 [preauth]"
        ),
        Some(Signal::Protocol),
    )
}

/// `Timeout before authentication for A port P`.
pub fn login_timeout(peer: IpAddr, port: u16) -> Msg {
    msg(
        format!("Timeout before authentication for {peer} port {port}"),
        Some(Signal::Protocol),
    )
}

/// `banner exchange: Connection from A port P: invalid format`.
pub fn banner_exchange(peer: IpAddr, port: u16) -> Msg {
    msg(
        format!("banner exchange: Connection from {peer} port {port}: invalid format"),
        Some(Signal::Protocol),
    )
}

/// `maximum authentication attempts exceeded for [invalid user ]U from A port P ssh2 [preauth]`.
pub fn max_auth_exceeded(user: &str, invalid: bool, peer: IpAddr, port: u16) -> Msg {
    let inv = if invalid { "invalid user " } else { "" };
    msg(
        format!(
            "maximum authentication attempts exceeded for {inv}{user} from {peer} port {port} ssh2 [preauth]"
        ),
        Some(Signal::AuthFailure),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sshwarden_pipeline::classify::classify;

    #[test]
    fn every_template_has_the_classifiers_signal() {
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let l: IpAddr = "10.0.1.2".parse().unwrap();
        let key = "ED25519 SHA256:Yw3Yq8x4Qh0gS4i8b8mK2dYQm3v0vN8dqk4yJH1bX2c";
        let mut all = vec![
            connection_from(a, 50_000, l),
            invalid_user("oracle", a, 1),
            failed_password("oracle", true, a, 1),
            failed_password("root", false, a, 1),
            failed_publickey("oracle", true, a, 1, key),
            failed_publickey("ec2-user", false, a, 1, key),
            accepted("publickey", "ec2-user", a, 1, Some(key)),
            accepted("password", "ec2-user", a, 1, None),
            too_many_failures("root", false, a, 1),
            too_many_failures("admin", true, a, 1),
            pam_auth_failure(a, None),
            pam_auth_failure(a, Some("root")),
            kex_identification(),
            unable_to_negotiate(a, 1),
            login_timeout(a, 1),
            banner_exchange(a, 1),
            max_auth_exceeded("root", false, a, 1),
        ];
        for preauth in [false, true] {
            for code in [3, 11, 14] {
                all.push(received_disconnect(a, 1, code, "Bye Bye", preauth));
            }
            for account in [Account::LoggedIn, Account::Authenticating, Account::Invalid] {
                all.push(disconnected(account, "u", a, 1, preauth));
                if account != Account::LoggedIn {
                    all.push(closed_by_user(account, "u", a, 1, preauth));
                }
            }
            all.push(closed_by_peer(false, a, 1, preauth));
            all.push(closed_by_peer(true, a, 1, preauth));
        }
        for m in all {
            let got = classify(&m.text).and_then(|c| c.signal());
            assert_eq!(got, m.signal, "{}", m.text);
        }
        for m in [
            pam_check_pass_unknown(),
            session_opened("u", 1000),
            session_closed("u"),
        ] {
            assert_eq!(classify(&m.text).and_then(|c| c.signal()), None);
        }
    }
}
