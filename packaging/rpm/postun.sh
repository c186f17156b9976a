# kumo-nats-relay %postun ($1: 0 erase, 1 upgrade). On upgrade, restart the relay only if
# it was running. On erase the state in /var/lib/kumo-nats-relay (checkpoint, dead
# letters) is kept: RPM has no purge, delete it by hand. The user is kept too.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart kumo-nats-relay.service >/dev/null 2>&1 || :
    fi
fi
exit 0
