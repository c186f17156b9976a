#include "nats_options.h"

natsStatus nats_options_create(natsOptions **opts, const struct nats_options_spec *spec, char **err)
{
    natsStatus st = natsOptions_Create(opts);
    if (st == NATS_OK)
        st = natsOptions_SetServers(*opts, (const char **)spec->servers, (int)spec->server_count);
    if (st == NATS_OK && spec->name)
        st = natsOptions_SetName(*opts, spec->name);
    if (st == NATS_OK && (st = nats_auth_apply(*opts, spec->auth, err)) != NATS_OK)
        return st;
    if (spec->once) {
        if (st == NATS_OK)
            st = natsOptions_SetTimeout(*opts, NATS_OPTIONS_ONCE_TIMEOUT_MS);
        if (st == NATS_OK)
            st = natsOptions_SetAllowReconnect(*opts, false);
        return st;
    }
    /* Reconnect forever: the spool is the buffer, and giving up would only stop the relay. */
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(*opts, -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(*opts, 1000);
    return st;
}
