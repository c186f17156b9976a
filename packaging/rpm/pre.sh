# kumo-nats-relay %pre ($1: 1 install, 2 upgrade): the system user exists before the
# files land, so %attr(...,kumo-nats-relay) on /etc/kumo-nats-relay resolves.
getent group kumo-nats-relay >/dev/null || groupadd -r kumo-nats-relay
getent passwd kumo-nats-relay >/dev/null ||
    useradd -r -g kumo-nats-relay -d /var/lib/kumo-nats-relay -M -s /sbin/nologin \
        -c "kumo-nats-relay" kumo-nats-relay
# kumod's log directory is kumod:kumod 2770: reading it takes kumod's group (the unit
# also asks for it with SupplementaryGroups=kumod).
if getent group kumod >/dev/null; then
    usermod -a -G kumod kumo-nats-relay
fi
exit 0
