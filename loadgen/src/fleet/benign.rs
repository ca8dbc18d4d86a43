//! Benign traffic: administrators' logins with their sessions, cron jobs,
//! systemd units and sudo, at the configured rate per instance.

use std::net::{IpAddr, Ipv4Addr};

use rand::rngs::StdRng;
use rand::Rng;

use super::generator::Gen;
use super::random::{key, pick, stream, Purpose};
use crate::sshd::{self, Account};

const BENIGN_USERS: &[(&str, u32)] = &[
    ("ec2-user", 1000),
    ("ec2-user", 1000),
    ("ssm-user", 1001),
    ("deploy", 1002),
    ("ubuntu", 1000),
];

/// The addresses administrators log in from: four in the VPC, four outside.
pub(super) fn admin_pool(seed: u64) -> Vec<IpAddr> {
    let mut rng = stream(seed, Purpose::AddressPools, 1);
    let mut v: Vec<IpAddr> = (0..4)
        .map(|_| IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.random_range(10..=20))))
        .collect();
    v.extend((0..4).map(|_| IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.random_range(1..=254)))));
    v
}

impl Gen<'_> {
    /// Benign traffic of one instance: a Poisson stream of logins, cron jobs,
    /// systemd units and sudo.
    pub(super) fn benign(&mut self, rng: &mut StdRng, host: usize, admins: &[IpAddr]) {
        // Average lines per unit (see the weights below): ~4.4.
        let per_ms = self.config.benign_events_per_instance_per_min / 4.4 / 60_000.0;
        self.poisson(rng, per_ms, |g, rng, t| g.benign_unit(rng, host, t, admins));
    }

    /// One unit of benign traffic at `t`, drawn by the weights above.
    fn benign_unit(&mut self, rng: &mut StdRng, host: usize, t: i64, admins: &[IpAddr]) {
        let r: f64 = rng.random();
        if r < 0.25 {
            self.login_session(rng, host, t, admins);
        } else if r < 0.6 {
            self.cron_job(rng, host, t);
        } else if r < 0.85 {
            self.systemd_unit(rng, host, t);
        } else {
            self.sudo(rng, host, t);
        }
    }

    fn login_session(&mut self, rng: &mut StdRng, host: usize, t: i64, admins: &[IpAddr]) {
        let peer = *pick(rng, admins);
        let (user, uid) = *pick(rng, BENIGN_USERS);
        let mut c = self.open(rng, host, peer, t, None);
        let p = c.port;
        if rng.random_bool(0.1) {
            let k = key(rng);
            self.after(
                rng,
                &mut c,
                5,
                80,
                sshd::failed_publickey(user, false, peer, p, &k),
            );
        }
        let m = if rng.random_bool(0.85) {
            let k = key(rng);
            sshd::accepted("publickey", user, peer, p, Some(&k))
        } else {
            sshd::accepted("password", user, peer, p, None)
        };
        self.after(rng, &mut c, 5, 200, m);
        self.after(rng, &mut c, 1, 20, sshd::session_opened(user, uid));
        let session = {
            let h = &mut self.hosts[host];
            h.next_session += 1;
            h.next_session
        };
        let logind = format!("systemd-logind[{}]", 400 + host % 300);
        self.system(
            host,
            c.t + 3,
            &logind,
            &format!("New session {session} of user {user}."),
        );
        self.system(
            host,
            c.t + 5,
            "systemd[1]",
            &format!("Started session-{session}.scope - Session {session} of User {user}."),
        );
        // Sessions last from seconds to most of an hour (log-uniform).
        let secs = 10f64.powf(rng.random_range(0.7..3.5)) as i64;
        c.t += secs * 1000 + rng.random_range(0..1000);
        self.say(
            &mut c,
            sshd::received_disconnect(peer, p, 11, "disconnected by user", false),
        );
        self.after(
            rng,
            &mut c,
            0,
            3,
            sshd::disconnected(Account::LoggedIn, user, peer, p, false),
        );
        self.after(rng, &mut c, 0, 3, sshd::session_closed(user));
        self.system(
            host,
            c.t + 2,
            &logind,
            &format!("Session {session} logged out. Waiting for processes to exit."),
        );
        self.system(
            host,
            c.t + 4,
            &logind,
            &format!("Removed session {session}."),
        );
    }

    fn cron_job(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let pid = self.pid(host, rng);
        let cron = format!("{}[{pid}]", self.hosts[host].cron);
        let cmd = *pick(
            rng,
            &[
                "run-parts /etc/cron.hourly",
                "/usr/lib64/sa/sa1 1 1",
                "/usr/local/bin/backup.sh >/dev/null 2>&1",
                "/usr/bin/flock -n /tmp/sync.lock /opt/app/bin/sync",
            ],
        );
        self.system(
            host,
            t,
            &cron,
            "pam_unix(crond:session): session opened for user root(uid=0) by (uid=0)",
        );
        self.system(host, t + 1, &cron, &format!("(root) CMD ({cmd})"));
        let dur = rng.random_range(20..5_000);
        self.system(
            host,
            t + dur,
            &cron,
            "pam_unix(crond:session): session closed for user root",
        );
    }

    fn systemd_unit(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let (unit, what) = *pick(
            rng,
            &[
                ("dnf-makecache.service", "dnf makecache"),
                ("sysstat-collect.service", "system activity accounting tool"),
                ("amazon-ssm-agent.service", "amazon-ssm-agent"),
                ("logrotate.service", "Rotate log files"),
                ("chronyd.service", "NTP client/server"),
            ],
        );
        self.system(
            host,
            t,
            "systemd[1]",
            &format!("Starting {unit} - {what}..."),
        );
        if rng.random_bool(0.8) {
            let dur = rng.random_range(10..3_000);
            self.system(
                host,
                t + dur,
                "systemd[1]",
                &format!("Finished {unit} - {what}."),
            );
        }
    }

    fn sudo(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let pid = self.pid(host, rng);
        let (user, _) = *pick(rng, BENIGN_USERS);
        let cmd = *pick(
            rng,
            &[
                "/bin/systemctl status sshd",
                "/usr/bin/dnf check-update",
                "/bin/journalctl -u app",
            ],
        );
        let p = format!("sudo[{pid}]");
        self.system(
            host,
            t,
            &p,
            &format!("{user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND={cmd}"),
        );
        self.system(
            host,
            t + 1,
            &p,
            &format!(
                "pam_unix(sudo:session): session opened for user root(uid=0) by {user}(uid=1000)"
            ),
        );
    }
}
