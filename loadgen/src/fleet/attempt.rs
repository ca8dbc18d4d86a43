//! Authentication attempts as scanners and attackers make them: one try on
//! an open connection and its close, in the style of the instance.

use rand::rngs::StdRng;
use rand::Rng;

use super::generator::{Conn, Gen};
use super::random::{key, pick, INVALID_USERS};
use crate::sshd::{self, Account};

impl Gen<'_> {
    /// A guessing attempt: `root` with probability `root_share`, else a
    /// made-up user name.
    pub(super) fn guess(&mut self, rng: &mut StdRng, c: &mut Conn, root_share: f64) {
        if rng.random_bool(root_share) {
            self.attempt(rng, c, "root", true, None);
        } else {
            let user = *pick(rng, INVALID_USERS);
            self.attempt(rng, c, user, false, None);
        }
    }

    /// One authentication attempt on an open connection and its close, in the
    /// style of the instance (password or key-only). `force_password`
    /// overrides the instance's setting.
    pub(super) fn attempt(
        &mut self,
        rng: &mut StdRng,
        c: &mut Conn,
        user: &str,
        valid: bool,
        force_password: Option<bool>,
    ) {
        let (peer, p) = (c.peer, c.port);
        let password = force_password.unwrap_or(self.instances[c.host].password_auth);
        let acct = if valid {
            Account::Authenticating
        } else {
            Account::Invalid
        };
        if !valid {
            self.after(rng, c, 20, 300, sshd::invalid_user(user, peer, p));
        }
        if password {
            if valid {
                self.after(rng, c, 100, 1_500, sshd::pam_auth_failure(peer, Some(user)));
            } else {
                self.after(rng, c, 100, 1_500, sshd::pam_check_pass_unknown());
                self.after(rng, c, 0, 2, sshd::pam_auth_failure(peer, None));
            }
            self.after(
                rng,
                c,
                1_000,
                2_500,
                sshd::failed_password(user, !valid, peer, p),
            );
            self.bye_preauth(rng, c, acct, user, 400);
            return;
        }
        if !valid && rng.random_bool(0.3) {
            let k = key(rng);
            self.after(
                rng,
                c,
                50,
                300,
                sshd::failed_publickey(user, true, peer, p, &k),
            );
        }
        self.leave_preauth(rng, c, acct, user, 600);
    }

    /// The client leaves before authenticating, one way or the other with
    /// even odds: `Connection closed by <acct> ...`, or [`Self::bye_preauth`];
    /// the first line 50 to `hi` ms later.
    pub(super) fn leave_preauth(
        &mut self,
        rng: &mut StdRng,
        c: &mut Conn,
        acct: Account,
        user: &str,
        hi: i64,
    ) {
        if rng.random_bool(0.5) {
            let (peer, p) = (c.peer, c.port);
            self.after(
                rng,
                c,
                50,
                hi,
                sshd::closed_by_user(acct, user, peer, p, true),
            );
        } else {
            self.bye_preauth(rng, c, acct, user, hi);
        }
    }

    /// The client says goodbye before authenticating: `Received disconnect
    /// ... Bye Bye [preauth]` 50 to `hi` ms later, then `Disconnected from
    /// <acct> ...`.
    fn bye_preauth(&mut self, rng: &mut StdRng, c: &mut Conn, acct: Account, user: &str, hi: i64) {
        let (peer, p) = (c.peer, c.port);
        self.after(
            rng,
            c,
            50,
            hi,
            sshd::received_disconnect(peer, p, 11, "Bye Bye", true),
        );
        self.after(rng, c, 0, 2, sshd::disconnected(acct, user, peer, p, true));
    }
}
