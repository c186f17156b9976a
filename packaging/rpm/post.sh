# kumo-nats-relay %post ($1: 1 install, 2 upgrade). Enabled on first install, never
# started: relay.yaml must first point at the NATS servers. `enable --no-reload` only
# writes symlinks, so it works without a running systemd (image builds, containers);
# everything that talks to the manager is guarded.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable kumo-nats-relay.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
