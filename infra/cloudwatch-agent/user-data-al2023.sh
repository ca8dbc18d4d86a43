#!/bin/bash
# EC2 user data for Amazon Linux 2023 (journald only, no /var/log/secure):
# ships sshd's log lines to the CloudWatch Logs group /sshwarden/sshd, one
# log stream per instance id, for sshwarden. The instance role needs the
# template's InstanceLogPolicy (logs:CreateLogStream, logs:PutLogEvents,
# logs:DescribeLogStreams on that group).
#
# Two ways, pick one (SSHWARDEN_VIA):
#   journal  (default) a small systemd service copies sshd's journal entries, chosen by
#            fields journald sets itself (_SYSTEMD_UNIT, _EXE with _UID=0; never the
#            syslog identifier a local user can set), as `-o short-iso` to
#            /var/log/sshwarden/sshd-journal.log, which the agent tails
#   rsyslog  install rsyslog, which writes /var/log/secure as on older releases
set -euo pipefail
SSHWARDEN_VIA=${SSHWARDEN_VIA:-journal}
REPO_RAW=${SSHWARDEN_FILES:-/opt/sshwarden}   # where this directory's files were copied

dnf install -y amazon-cloudwatch-agent
case $SSHWARDEN_VIA in
  rsyslog)
    dnf install -y rsyslog
    systemctl enable --now rsyslog
    ;;
  journal)
    install -m 0644 "$REPO_RAW/sshwarden-journal.service" /etc/systemd/system/sshwarden-journal.service
    install -m 0644 "$REPO_RAW/sshwarden-journal.logrotate" /etc/logrotate.d/sshwarden-journal
    systemctl daemon-reload
    systemctl enable --now sshwarden-journal.service
    ;;
  *) echo "SSHWARDEN_VIA must be journal or rsyslog" >&2; exit 1 ;;
esac
install -m 0644 "$REPO_RAW/amazon-cloudwatch-agent.json" /opt/aws/amazon-cloudwatch-agent/etc/sshwarden.json
/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s \
  -c file:/opt/aws/amazon-cloudwatch-agent/etc/sshwarden.json
