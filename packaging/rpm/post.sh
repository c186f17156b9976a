# kumo-nats-relay %post ($1: 1 install, 2 upgrade), as %systemd_post does: on first
# install the distribution's presets decide whether the unit is enabled (`systemctl
# preset`; Fedora and RHEL disable services unless a preset names them). Never
# started: relay.yaml must first point at the NATS servers. `--no-reload` only writes
# symlinks, so it works without a running systemd (image builds, containers);
# everything that talks to the manager is guarded.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset kumo-nats-relay.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
