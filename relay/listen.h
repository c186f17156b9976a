/* metrics.listen: where /metrics and /healthz are served. The forms Prometheus exporters
 * take: "127.0.0.1:9477", "[::1]:9477", "localhost:9477", and ":9477" (or a bare
 * "9477", or "*:9477") for every interface, IPv6 and IPv4. */
#ifndef RELAY_LISTEN_H
#define RELAY_LISTEN_H

#include <stdbool.h>
#include <sys/socket.h>

struct listen_addr {
    struct sockaddr_storage addr;
    socklen_t len;
    bool every_interface; /* [::] with IPv4 too, or 0.0.0.0 where IPv6 is off */
};

/* NULL, or a malloc'd message saying what is wrong with text (for "metrics.listen: "). */
char *listen_parse(const char *text, struct listen_addr *out);

#endif
